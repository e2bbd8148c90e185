package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/berth-ssh/berth/containers"
)

func TestHelpListsEveryVerb(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	out := g.runOK(alice, "help")
	for _, v := range []string{"help", "config", "status", "start", "stop", "restart", "rebuild", "rollback", "prune", "gpus", "logs", "admin"} {
		if !strings.Contains(out, "\n  "+v) {
			t.Errorf("help does not list %s:\n%s", v, out)
		}
	}
	// help is answered by the gateway: no container was made for it.
	if _, err := docker.ContainerInspect(t.Context(), "berth-"+alice.name, client.ContainerInspectOptions{}); err == nil {
		t.Fatal("help made a container")
	}
}

func TestOnlyTheFirstWordNamesAVerb(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	// `env prune` runs a program called prune inside the container.
	r := run(t, g.ssh(alice, nil, "env prune"), "")
	if r.code != 127 || !strings.Contains(r.stderr, "prune") {
		t.Fatalf("env prune: exit %d, stderr %q", r.code, r.stderr)
	}
	if st := inspect(t, alice).Container.State; !st.Running {
		t.Fatal("env prune touched the container")
	}
	// Misuse of a verb is exit 2 with the usage.
	r = run(t, g.ssh(alice, nil, "stop --bogus"), "")
	if r.code != 2 || !strings.Contains(r.stderr, "usage: ssh HOST stop [--rm]") {
		t.Fatalf("stop --bogus: exit %d, stderr %q", r.code, r.stderr)
	}
}

// status --json's shape, as scripts read it.
type statusJSON struct {
	Name, Login, State, Image string
	ImageID                   string `json:"image_id"`
	Previous                  string `json:"previous_image"`
	Keep                      bool   `json:"keep_running"`
	Mounts                    []struct{ Source, Target string }
	DiskUsed                  int64 `json:"disk_used_bytes"`
}

func status(t *testing.T, g *gw, u user) statusJSON {
	t.Helper()
	var st statusJSON
	out := g.runOK(u, "status --json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st
}

func TestStartStatusStopRestart(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)

	if st := status(t, g, alice); st.State != "absent" {
		t.Fatalf("before start: %+v", st)
	}
	if out := g.runOK(alice, "start"); !strings.Contains(out, "berth-"+alice.name+" created and started") {
		t.Fatalf("start: %q", out)
	}
	if out := g.runOK(alice, "start"); !strings.Contains(out, "was already running") {
		t.Fatalf("second start: %q", out)
	}
	g.runOK(alice, "echo mine > projects/f && sudo touch /installed-inside")
	st := status(t, g, alice)
	if st.State != "running" || st.Login != alice.name || !strings.HasPrefix(st.Image, "berth-env:") || st.DiskUsed == 0 {
		t.Fatalf("status: %+v", st)
	}
	targets := map[string]bool{}
	for _, m := range st.Mounts {
		targets[m.Target] = true
	}
	home := "/home/" + alice.name
	if !targets[home] || !targets[home+"/projects"] || !targets[home+"/.vscode-server"] || len(targets) != 3 {
		t.Fatalf("mounts: %+v", st.Mounts)
	}
	if out := g.runOK(alice, "status"); !strings.Contains(out, "state") || !strings.Contains(out, "running") || !strings.Contains(out, "disk used") {
		t.Fatalf("status table:\n%s", out)
	}

	id := inspect(t, alice).Container.ID
	if out := g.runOK(alice, "stop"); !strings.Contains(out, "stopped") {
		t.Fatalf("stop: %q", out)
	}
	if inspect(t, alice).Container.State.Running {
		t.Fatal("still running after stop")
	}
	// The next login starts it again, with what was installed inside.
	if out := g.runOK(alice, "ls /installed-inside && cat projects/f"); out != "/installed-inside\nmine\n" {
		t.Fatalf("after stop: %q", out)
	}
	if inspect(t, alice).Container.ID != id {
		t.Fatal("stop lost the container")
	}
	before := inspect(t, alice).Container.State.StartedAt
	g.runOK(alice, "restart")
	if after := inspect(t, alice).Container.State.StartedAt; after == before {
		t.Fatal("restart did not restart")
	}
	// stop --rm removes the container and keeps the data.
	g.runOK(alice, "stop --rm")
	if _, err := docker.ContainerInspect(t.Context(), "berth-"+alice.name, client.ContainerInspectOptions{}); err == nil {
		t.Fatal("stop --rm left the container")
	}
	if out := g.runOK(alice, "cat projects/f"); out != "mine\n" {
		t.Fatalf("data after stop --rm: %q", out)
	}
}

func TestRebuildPicksUpTheDockerfileAndRollbackGoesBack(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	df := dockerfile(t, "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo v1 > /etc/env-version\n")
	g := startGateway(t, options{dockerfile: df, buildArgs: map[string]string{"NONCE": nonce()}}, alice)
	g.runOK(alice, "echo kept > ~/dotfile")
	if out := g.runOK(alice, "cat /etc/env-version"); out != "v1\n" {
		t.Fatalf("first image: %q", out)
	}
	os.WriteFile(df, []byte("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo v2 > /etc/env-version\n"), 0o644)
	r := run(t, g.ssh(alice, nil, "rebuild"), "")
	if r.code != 0 || !strings.Contains(r.stderr, "berth: building") || !strings.Contains(r.stdout, "rebuilt") {
		t.Fatalf("rebuild: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if out := g.runOK(alice, "cat /etc/env-version ~/dotfile"); out != "v2\nkept\n" {
		t.Fatalf("after rebuild: %q", out)
	}
	if st := status(t, g, alice); st.Previous == "" {
		t.Fatalf("status after rebuild names no previous image: %+v", st)
	}
	g.runOK(alice, "rollback")
	if out := g.runOK(alice, "cat /etc/env-version ~/dotfile"); out != "v1\nkept\n" {
		t.Fatalf("after rollback: %q", out)
	}
}

func TestRollbackWithNothingToGoBackToFails(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	g.runOK(alice, "true")
	r := run(t, g.ssh(alice, nil, "rollback"), "")
	if r.code != 1 || !strings.Contains(r.stderr, "nothing to roll back to") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestPruneNeverRemovesAnImageAnotherUserRuns(t *testing.T) {
	t.Parallel()
	alice, bob := newUser(t, "alice"), newUser(t, "bob")
	// An image of this test's own, so that removing it harms no other test.
	g := startGateway(t, options{buildArgs: map[string]string{"NONCE": nonce()}}, alice, bob)
	g.runOK(alice, "echo mine > projects/f")
	g.runOK(bob, "true")
	image := inspect(t, alice).Container.Image

	out := g.runOK(alice, "prune")
	if !strings.Contains(out, "removed container berth-"+alice.name) || strings.Contains(out, "image") {
		t.Fatalf("alice's prune: %q", out)
	}
	if _, err := docker.ImageInspect(t.Context(), image); err != nil {
		t.Fatal("prune removed an image bob's container runs")
	}
	// Data stays without --data; --data wants a confirmation.
	if _, err := os.Stat(filepath.Join(g.cfg.DataRoot, alice.name, "projects", "f")); err != nil {
		t.Fatal("prune without --data deleted data")
	}
	if r := run(t, g.ssh(alice, nil, "prune --data"), ""); r.code != 2 || !strings.Contains(r.stderr, "--yes") {
		t.Fatalf("prune --data without a terminal or --yes: exit %d %q", r.code, r.stderr)
	}
	if out := g.runOK(bob, "prune"); !strings.Contains(out, "removed image") {
		t.Fatalf("bob's prune, the image's last user: %q", out)
	}
	if _, err := docker.ImageInspect(t.Context(), image); err == nil {
		t.Fatal("an image nobody uses was kept")
	}
	g.runOK(alice, "prune --data --yes")
	if _, err := os.Stat(filepath.Join(g.cfg.DataRoot, alice.name)); !os.IsNotExist(err) {
		t.Fatal("prune --data --yes kept the data")
	}
}

func TestLogsShowTheContainersLog(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	g.runOK(alice, "true")
	if out := g.runOK(alice, "logs"); !strings.Contains(out, "berth-agent") || !strings.Contains(out, "ready: "+alice.name) {
		t.Fatalf("logs:\n%s", out)
	}
}

func TestSecondContainersWithPlusNames(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	exp := dockerfile(t, "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo exp > /etc/which-env\n")
	g := startGateway(t, options{extra: "max_containers: 2\nenvironments:\n  exp:\n    dockerfile: " + exp + "\n    build_args: {BASE_IMAGE: " + baseImage + "}\n"}, alice)
	plus := func(instance string) user {
		u := alice
		u.name = alice.name + "+" + instance
		return u
	}
	g.runOK(alice, "echo shared > ~/note")
	// Same keys, same home, another container, the named environment.
	if out := g.runOK(plus("exp"), "hostname; cat ~/note /etc/which-env"); out != "berth-"+alice.name+"-exp\nshared\nexp\n" {
		t.Fatalf("alice+exp: %q", out)
	}
	// Verbs act on the container you logged in to.
	g.runOK(plus("exp"), "stop")
	if !inspect(t, alice).Container.State.Running {
		t.Fatal("stop as alice+exp stopped alice's default container")
	}
	var all []statusJSON
	if err := json.Unmarshal([]byte(g.runOK(alice, "status --all --json")), &all); err != nil || len(all) != 2 ||
		all[0].Name != "berth-"+alice.name || all[1].Name != "berth-"+alice.name+"-exp" || all[1].State != "exited" {
		t.Fatalf("status --all: %v %+v", err, all)
	}
	// A third container is past max_containers.
	r := run(t, g.ssh(plus("third"), nil, "true"), "")
	if r.code != 255 || !strings.Contains(r.stderr, "you already have 2 containers, your limit") {
		t.Fatalf("past the limit: exit %d, %q", r.code, r.stderr)
	}
	t.Cleanup(func() { removeContainer("berth-" + alice.name + "-exp") })
}

func TestAdminVerbs(t *testing.T) {
	t.Parallel()
	alice, bob := newUser(t, "alice"), newUser(t, "bob")
	g := startGateway(t, options{extra: "admins: [" + alice.name + "]\n"}, alice, bob)

	r := run(t, g.ssh(bob, nil, "admin who"), "")
	if r.code != 1 || r.stderr != "berth: admin: permission denied.\n" {
		t.Fatalf("bob's admin who: exit %d %q", r.code, r.stderr)
	}
	// bob works in the background while alice looks.
	sess := g.ssh(bob, nil, "sleep 30")
	if err := sess.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sess.Process.Kill(); sess.Wait() }()
	waitFor(t, "bob's session", 30*time.Second, func() bool {
		return strings.Contains(g.runOK(alice, "admin who"), "sleep 30")
	})
	bobsRow := regexp.MustCompile(bob.name + ` +berth-` + bob.name + ` +running +- +1 +now`)
	waitFor(t, "bob's running container in admin users", 30*time.Second, func() bool {
		out := g.runOK(alice, "admin users")
		return bobsRow.MatchString(out) && strings.Contains(out, alice.name)
	})
	g.runOK(alice, "admin stop "+bob.name)
	if inspect(t, bob).Container.State.Running {
		t.Fatal("admin stop left bob's container running")
	}
	if out := g.runOK(alice, "admin prune --all-stopped"); !strings.Contains(out, "removed container berth-"+bob.name) {
		t.Fatalf("admin prune --all-stopped: %q", out)
	}
	// The error names bob's container, not the admin's own.
	if r := run(t, g.ssh(alice, nil, "admin stop "+bob.name), ""); r.code != 1 || r.stderr != "berth: there is no container berth-"+bob.name+".\n" {
		t.Fatalf("admin stop of a removed container: exit %d %q", r.code, r.stderr)
	}
	// Every verb is in the log with who ran it and with which key.
	if g.logs.count("msg=verb", "user="+bob.name, "admin who", "key=SHA256:") == 0 ||
		g.logs.count("admin verb refused", "user="+bob.name) == 0 {
		t.Fatalf("verbs not logged:\n%s", g.logs)
	}
}

func TestIdleContainersStopUnlessKept(t *testing.T) {
	t.Parallel()
	alice, bob := newUser(t, "alice"), newUser(t, "bob")
	g := startGateway(t, options{userYAML: "idle_stop_after: 2s"}, alice, bob)
	g.runOK(alice, "true")
	g.runOK(bob, "start --keep")
	waitFor(t, "alice's idle container to stop", 30*time.Second, func() bool {
		return !inspect(t, alice).Container.State.Running
	})
	if !inspect(t, bob).Container.State.Running {
		t.Fatal("a container started with --keep was stopped")
	}
	if st := status(t, g, bob); !st.Keep {
		t.Fatalf("status does not show keep: %+v", st)
	}
	// The next connection starts it again.
	if out := g.runOK(alice, "echo back"); out != "back\n" {
		t.Fatalf("after the idle stop: %q", out)
	}
	// --keep lasts until the container stops, even when it stops outside
	// berth (a reboot, docker stop).
	dockerCLI(t, "stop", "-t", "5", containers.Name(bob.name))
	g.runOK(bob, "true")
	if st := status(t, g, bob); st.Keep {
		t.Fatal("keep outlived a container stopped outside berth")
	}
}

func TestLogsFollowUntilTheContainerStops(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	g.runOK(alice, "true")
	cmd := g.ssh(alice, nil, "logs -f")
	var out logBuffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waitFor(t, "the log so far", 20*time.Second, func() bool { return strings.Contains(out.String(), "ready: "+alice.name) })
	// Still following: another session comes and goes meanwhile.
	g.runOK(alice, "true")
	select {
	case err := <-exited:
		t.Fatalf("logs -f ended while the container runs: %v", err)
	default:
	}
	g.runOK(alice, "stop")
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("logs -f: %v", err)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("logs -f did not end when the container stopped")
	}
}

func TestConfigPrintsAWorkingSSHConfigStanza(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	stanza := g.runOK(alice, "config gpu")
	path := filepath.Join(t.TempDir(), "ssh_config")
	os.WriteFile(path, []byte(stanza+"    IdentityFile "+alice.key+"\n    IdentitiesOnly yes\n    StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n    LogLevel ERROR\n"), 0o600)
	// The stanza alone gets the real client to the user's container.
	out, err := exec.Command("ssh", "-F", path, "gpu", "id -un").Output()
	if err != nil || strings.TrimSpace(string(out)) != alice.name {
		t.Fatalf("ssh with the printed config: %v %q\n%s", err, out, stanza)
	}
}

// Every edit of an environment's Dockerfile makes a new image. berth keeps
// the current build and the one before it and removes older ones that no
// container uses, so the disk does not fill with them.
func TestOldBuildsOfAnEnvironmentAreRemoved(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	df := dockerfile(t, "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo 1 > /etc/env-version\n")
	g := startGateway(t, options{dockerfile: df, buildArgs: map[string]string{"NONCE": nonce()}}, alice)
	g.runOK(alice, "true")
	tags := []string{status(t, g, alice).Image}
	for v := 2; v <= 4; v++ {
		os.WriteFile(df, []byte(fmt.Sprintf("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo %d > /etc/env-version\n", v)), 0o644)
		g.runOK(alice, "rebuild")
		tags = append(tags, status(t, g, alice).Image)
		testImages.Store(tags[len(tags)-1], true)
	}
	exists := func(tag string) bool {
		_, err := docker.ImageInspect(t.Context(), tag)
		return err == nil
	}
	for i, want := range []bool{false, false, true, true} {
		if exists(tags[i]) != want {
			t.Errorf("build %d (%s): exists %v, want %v", i+1, tags[i], !want, want)
		}
	}
	if !exists(baseImage) || g.logs.count("old image removed", tags[0]) != 1 {
		t.Fatalf("the base image is gone, or the removal is not logged:\n%s", g.logs)
	}
	// The build before is still there to roll back to.
	g.runOK(alice, "rollback")
	if out := g.runOK(alice, "cat /etc/env-version"); out != "3\n" {
		t.Fatalf("after rollback: %q", out)
	}
}
