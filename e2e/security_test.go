package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/berth-ssh/berth/containers"
)

// Users' containers sit on berth's network with inter-container traffic
// off: bob cannot reach a server alice runs on all her interfaces, though
// alice can. berth's own files in the container are out of the user's
// reach: the agent binary is read-only and the agent's socket directory
// is root's.
func TestContainersCannotReachEachOther(t *testing.T) {
	t.Parallel()
	alice, bob := newUser(t, "alice"), newUser(t, "bob")
	g := startGateway(t, options{userYAML: "sudo: false"}, alice, bob)
	g.runOK(alice, "(nohup python3 -m http.server 8126 --bind 0.0.0.0 >/dev/null 2>&1 &)")
	g.runOK(bob, "true")
	ep := inspect(t, alice).Container.NetworkSettings.Networks[containers.NetworkName]
	if ep == nil {
		t.Fatalf("alice's container is not on the %s network", containers.NetworkName)
	}
	probe := fmt.Sprintf(`python3 -c 'import socket; socket.create_connection(("%s", 8126), timeout=3); print("reached")'`, ep.IPAddress)
	waitFor(t, "alice's own server", 20*time.Second, func() bool {
		return run(t, g.ssh(alice, nil, probe), "").stdout == "reached\n"
	})
	if r := run(t, g.ssh(bob, nil, probe), ""); r.code == 0 || strings.Contains(r.stdout, "reached") {
		t.Fatalf("bob reached alice's container: exit %d %q", r.code, r.stdout)
	}

	out := g.runOK(alice, "touch /.berth/bin/berth-agent 2>/dev/null && echo agent-writable; ls /.berth/run >/dev/null 2>&1 && echo run-readable; echo done")
	if out != "done\n" {
		t.Fatalf("berth's own files: %q", out)
	}
}
