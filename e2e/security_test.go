package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

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

// max_sessions caps one user's open sessions across connections; the
// next is refused with the reason, and other users are not affected.
func TestMaxSessionsCapsAUsersOpenSessions(t *testing.T) {
	t.Parallel()
	alice, bob := newUser(t, "alice"), newUser(t, "bob")
	g := startGateway(t, options{extra: "max_sessions: 2\n"}, alice, bob)
	g.runOK(alice, "true")
	for range 2 {
		background(t, g.ssh(alice, nil, "sleep 60"))
	}
	waitFor(t, "alice's two sessions", 20*time.Second, func() bool { return g.logs.count("process started", "user="+alice.name) >= 3 })
	if r := run(t, g.ssh(alice, nil, "true"), ""); r.code != 255 {
		t.Fatalf("a third session: exit %d %q", r.code, r.stderr)
	}
	// OpenSSH shows the reason at its default log level; x/crypto's
	// client returns it.
	if _, err := g.dial(alice).NewSession(); err == nil || !strings.Contains(err.Error(), "you have 2 sessions open, the most berth allows you (max_sessions)") {
		t.Fatalf("a third session: %v", err)
	}
	g.runOK(bob, "true")
}

// session_idle_timeout hangs up a session with no input or output, and
// only such a one; session_max_duration hangs up any session that runs
// too long. The user is told why.
func TestSessionTimeouts(t *testing.T) {
	t.Parallel()
	alice, bob := newUser(t, "alice"), newUser(t, "bob")
	idle := startGateway(t, options{extra: "session_idle_timeout: 1s\n"}, alice)
	idle.runOK(alice, "true")
	r := run(t, idle.ssh(alice, nil, "sleep 20"), "")
	if r.code == 0 || !strings.Contains(r.stderr, "berth: the session was idle for 1s (session_idle_timeout); hung up.") {
		t.Fatalf("an idle session: exit %d %q", r.code, r.stderr)
	}
	if out := idle.runOK(alice, "for i in 1 2 3 4 5 6; do echo $i; sleep 0.4; done"); out != "1\n2\n3\n4\n5\n6\n" {
		t.Fatalf("a busy session was cut: %q", out)
	}
	longest := startGateway(t, options{extra: "session_max_duration: 2s\n"}, bob)
	longest.runOK(bob, "true")
	r = run(t, longest.ssh(bob, nil, "while :; do echo tick; sleep 0.2; done"), "")
	if r.code == 0 || !strings.Contains(r.stderr, "longest allowed time, 2s (session_max_duration); hung up.") {
		t.Fatalf("a long session: exit %d %q", r.code, r.stderr)
	}
}

// auditEvents reads the gateway's audit log.
func auditEvents(t *testing.T, g *gw) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(g.cfg.AuditLog)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for line := range strings.Lines(string(data)) {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("audit log line %q: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}

// The audit log under state_dir says who connected, who logged in with
// which key (and which key was refused), what each session ran and how it
// ended, every forward and verb, and what happened to containers.
func TestAuditLogRecordsWhoDidWhat(t *testing.T) {
	t.Parallel()
	alice, stranger := newUser(t, "alice"), newUser(t, "eve")
	g := startGateway(t, options{}, alice)
	if r := run(t, g.ssh(alice, nil, "exit 3"), ""); r.code != 3 {
		t.Fatalf("exit %d", r.code)
	}
	g.runOK(alice, "status")
	want := g.serveHTTPInside(alice, 8128)
	port := g.localForward(alice, "-L", ":127.0.0.1:8128")
	if got := httpGet(t, "http://127.0.0.1:"+port+"/index.txt", ""); got != want {
		t.Fatalf("ssh -L: %q", got)
	}
	run(t, exec.Command("ssh", append(g.sshArgs(stranger), alice.name+"@127.0.0.1", "true")...), "")

	aliceKey := ssh.FingerprintSHA256(alice.signer.PublicKey())
	find := func(what string, match func(e map[string]any) bool) {
		t.Helper()
		waitFor(t, what+" in the audit log", 10*time.Second, func() bool {
			for _, e := range auditEvents(t, g) {
				if match(e) {
					return true
				}
			}
			return false
		})
	}
	is := func(e map[string]any, kv ...string) bool {
		for i := 0; i < len(kv); i += 2 {
			if fmt.Sprint(e[kv[i]]) != kv[i+1] {
				return false
			}
		}
		return true
	}
	find("a connection", func(e map[string]any) bool { return is(e, "event", "connect") && e["source"] != nil })
	find("alice's login", func(e map[string]any) bool {
		return is(e, "event", "auth", "result", "ok", "user", alice.name, "key", aliceKey)
	})
	find("the stranger's refused key", func(e map[string]any) bool {
		return is(e, "event", "auth", "result", "failed", "key", ssh.FingerprintSHA256(stranger.signer.PublicKey()))
	})
	find("the session's start", func(e map[string]any) bool { return is(e, "event", "session-start", "command", "exit 3") })
	find("the session's end", func(e map[string]any) bool {
		return is(e, "event", "session-end", "command", "exit 3", "status", "exit 3") && e["took"] != nil
	})
	find("the verb", func(e map[string]any) bool { return is(e, "event", "verb", "command", "status", "key", aliceKey) })
	find("the forward", func(e map[string]any) bool { return is(e, "event", "forward", "to", "127.0.0.1:8128") })
	find("the container", func(e map[string]any) bool {
		return is(e, "event", "container", "msg", "container created", "container", containers.Name(alice.name))
	})
	if st, err := os.Stat(g.cfg.AuditLog); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("audit log: %v %v", st, err)
	}
}

// With record_sessions, a terminal session's output is kept as an
// asciicast v2 file under state_dir, which asciinema plays and `berth
// recordings` lists; sessions without a terminal, and users it is off
// for, are not recorded.
func TestTerminalSessionsAreRecorded(t *testing.T) {
	t.Parallel()
	alice, bob := newUser(t, "alice"), newUser(t, "bob")
	// Everyone is recorded but bob, whose own setting says no.
	g := startGateway(t, options{extra: "record_sessions: true\nusers:\n" +
		"  - name: " + alice.name + "\n    uid: 3000\n    authorized_keys: [\"" + alice.pub + "\"]\n" +
		"  - name: " + bob.name + "\n    uid: 3001\n    authorized_keys: [\"" + bob.pub + "\"]\n    record_sessions: false\n"})

	g.runOK(alice, "echo not on a terminal")
	if r := run(t, g.ssh(alice, []string{"-tt"}, `printf 'héllo, recorded\n'; stty size`), ""); r.code != 0 {
		t.Fatalf("exit %d %q", r.code, r.stderr)
	}
	run(t, g.ssh(bob, []string{"-tt"}, "echo bob is not recorded"), "")

	dir := filepath.Join(g.cfg.StateDir, "recordings")
	casts, _ := filepath.Glob(filepath.Join(dir, "*", "*.cast"))
	if len(casts) != 1 || filepath.Base(filepath.Dir(casts[0])) != alice.name {
		t.Fatalf("recordings: %v", casts)
	}
	lines := strings.Split(mustRead(t, casts[0]), "\n")
	var header struct {
		Version, Width, Height int
		Env                    map[string]string
	}
	if err := json.Unmarshal([]byte(lines[0]), &header); err != nil || header.Version != 2 || header.Width == 0 || header.Env["TERM"] == "" {
		t.Fatalf("header %q: %+v %v", lines[0], header, err)
	}
	// asciinema wants a terminal; script(1) gives it one.
	played := mustOutput(t, "script", "-qec", "asciinema cat "+casts[0], "/dev/null")
	if !strings.Contains(string(played), "héllo, recorded") || strings.Contains(string(played), "not on a terminal") {
		t.Fatalf("asciinema cat: %q", played)
	}
	if st, _ := os.Stat(casts[0]); st.Mode().Perm() != 0o600 {
		t.Fatalf("recording mode %v", st.Mode().Perm())
	}
	out := mustOutput(t, berthBin(t), "recordings", "--config", g.cfgPath)
	if !strings.Contains(string(out), alice.name) || !strings.Contains(string(out), casts[0]) || strings.Contains(string(out), bob.name) {
		t.Fatalf("berth recordings:\n%s", out)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Root inside a container (sudo) can write its run directory, where its
// agent's socket is. Symlinks planted there must not take berth, root on
// the host, anywhere: not to another user's agent (a shell as bob), not
// to a host file through logs, not into /dev/zero through status.
func TestPlantedSymlinksInTheRunDirectoryLeadNowhere(t *testing.T) {
	t.Parallel()
	alice, bob := newUser(t, "alice"), newUser(t, "bob")
	g := startGateway(t, options{}, alice, bob)
	g.runOK(bob, "true")
	g.runOK(alice, "true")
	bobs := filepath.Join(g.cfg.StateDir, "run", containers.Name(bob.name), "agent.sock")
	g.runOK(alice, "sudo ln -sf "+bobs+" /.berth/run/agent.sock; sudo ln -sf /etc/shadow /.berth/run/provision.log; sudo ln -sf /dev/zero /.berth/run/packages.json")

	r := run(t, g.ssh(alice, nil, "id -un"), "")
	if r.code != 255 || strings.Contains(r.stdout, bob.name) || !strings.Contains(r.stderr, "berth refused your container's agent socket, which leads out of your container") {
		t.Fatalf("through bob's socket: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if g.logs.count("agent socket answered from outside its container", containers.Name(alice.name)) == 0 {
		t.Fatalf("not logged:\n%s", g.logs)
	}
	shadow, _ := os.ReadFile("/etc/shadow")
	if out := g.runOK(alice, "logs"); strings.Contains(out, "root:") || (len(shadow) > 0 && strings.Contains(out, string(shadow[:20]))) {
		t.Fatalf("logs showed a host file:\n%s", out)
	}
	// restart makes a new socket, and alice is herself again.
	defer func() {
		g.runOK(alice, "restart")
		if out := g.runOK(alice, "id -un"); out != alice.name+"\n" {
			t.Fatalf("after restart: %q", out)
		}
	}()
	done := make(chan string, 1)
	go func() { done <- run(t, g.ssh(alice, nil, "status --json"), "").stdout }()
	select {
	case out := <-done:
		if !strings.Contains(out, `"state": "running"`) {
			t.Fatalf("status: %q", out)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("status hung on a planted /dev/zero")
	}
}
