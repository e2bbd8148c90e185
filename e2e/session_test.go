package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func TestLoginLandsInOwnContainerAsOwnUser(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)

	// A command runs in the home directory, as under sshd; a shell starts
	// in projects (TestTerminalSessions).
	out := g.runOK(alice, "id -un; id -u; id -g; pwd; hostname; echo $HOME; echo $SHELL")
	want := []string{alice.name, "3000", "3000", "/home/" + alice.name,
		"berth-" + alice.name, "/home/" + alice.name, "/bin/bash"}
	if got := strings.Fields(out); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("got %q, want %q", got, want)
	}
	first := inspect(t, alice)
	if l := first.Container.Config.Labels; l["berth.user"] != alice.name || l["berth.image"] == "" || l["berth.config"] == "" {
		t.Fatalf("labels: %v", l)
	}
	if init := first.Container.HostConfig.Init; init == nil || !*init {
		t.Fatal("container runs without an init process")
	}

	// A file made in the container is the user's on the host.
	g.runOK(alice, "echo hello > projects/made-inside")
	path := filepath.Join(g.cfg.DataRoot, alice.name, "projects", "made-inside")
	if owner := fileOwner(t, path); owner != 3000 {
		t.Fatalf("file made inside is owned by %d on the host, want 3000", owner)
	}

	// The second connection reuses the container.
	g.runOK(alice, "true")
	if second := inspect(t, alice); second.Container.ID != first.Container.ID {
		t.Fatal("second connection made a new container")
	}

	// data_root is root's alone, so setuid files inside cannot help others.
	st, err := os.Stat(g.cfg.DataRoot)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 || fileOwner(t, g.cfg.DataRoot) != 0 {
		t.Fatalf("data_root is %v owned by %d, want 0700 root", st.Mode().Perm(), fileOwner(t, g.cfg.DataRoot))
	}
}

func TestExitStatusComesBack(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	for _, code := range []int{0, 7, 137} {
		r := run(t, g.ssh(alice, nil, "exit "+strconv.Itoa(code)), "")
		if r.code != code {
			t.Errorf("exit %d: ssh returned %d (stderr %q)", code, r.code, r.stderr)
		}
	}
}

func TestKilledProcessIsReportedAsSignal(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)

	// OpenSSH's client logs the exit-signal and exits 255, having no status.
	r := run(t, g.ssh(alice, []string{"-v"}, "kill -9 $$"), "")
	if r.code != 255 || !strings.Contains(r.stderr, "rtype exit-signal") {
		t.Fatalf("ssh exit %d, want 255 after an exit-signal; stderr:\n%s", r.code, r.stderr)
	}
	// And the signal it names is KILL.
	s, err := g.dial(alice).NewSession()
	if err != nil {
		t.Fatal(err)
	}
	err = s.Run("kill -9 $$")
	ee, ok := err.(*ssh.ExitError)
	if !ok || ee.Signal() != "KILL" {
		t.Fatalf("got %v, want an exit-signal KILL", err)
	}
	// `exit 137` is not a signal, though its status is the same number.
	s, _ = g.dial(alice).NewSession()
	err = s.Run("exit 137")
	if ee, ok := err.(*ssh.ExitError); !ok || ee.Signal() != "" || ee.ExitStatus() != 137 {
		t.Fatalf("exit 137: got %v", err)
	}
}

func TestStdoutAndStderrStaySeparateAndExact(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	g.runOK(alice, "true") // the first connection's progress goes to stderr

	r := run(t, g.ssh(alice, nil, "printf out; printf err >&2"), "")
	if r.stdout != "out" || r.stderr != "err" || r.code != 0 {
		t.Fatalf("stdout %q stderr %q exit %d", r.stdout, r.stderr, r.code)
	}

	// 16 MiB of random bytes, both ways, byte for byte.
	data := make([]byte, 16<<20)
	rand.Read(data)
	want := sha256.Sum256(data)
	up := g.ssh(alice, nil, "cat > blob && sha256sum blob")
	up.Stdin = bytes.NewReader(data)
	out, err := up.Output()
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	if got := strings.Fields(string(out)); len(got) == 0 || got[0] != hex.EncodeToString(want[:]) {
		t.Fatalf("uploaded hash %q, want %x", out, want)
	}
	down, err := g.ssh(alice, nil, "cat blob").Output()
	if err != nil {
		t.Fatalf("download: %v", err)
	}
	if sha256.Sum256(down) != want {
		t.Fatalf("downloaded %d bytes that differ from the %d sent", len(down), len(data))
	}
}

func TestStdinEOFReachesTheProcess(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	r := run(t, g.ssh(alice, nil, "cat"), "hi\n")
	if r.stdout != "hi\n" || r.code != 0 {
		t.Fatalf("echo hi | ssh cat: stdout %q exit %d", r.stdout, r.code)
	}
	r = run(t, g.ssh(alice, nil, "wc -c"), "12345")
	if strings.TrimSpace(r.stdout) != "5" {
		t.Fatalf("wc -c: %q", r.stdout)
	}
}

func TestTerminalSessions(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)

	t.Run("command on a pty", func(t *testing.T) {
		cmd := g.ssh(alice, []string{"-tt"}, "tty; echo $TERM")
		cmd.Env = append(os.Environ(), "TERM=xterm-256color")
		r := run(t, cmd, "")
		lines := strings.Split(strings.TrimSpace(r.stdout), "\r\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "/dev/pts/") || lines[1] != "xterm-256color" {
			t.Fatalf("got %q", r.stdout)
		}
	})
	t.Run("login shell", func(t *testing.T) {
		// No command: a login shell, which reads its commands from the terminal.
		r := run(t, g.ssh(alice, []string{"-tt"}), "echo shell=$0 dir=$PWD\nexit 3\n")
		if r.code != 3 || !strings.Contains(r.stdout, "shell=-bash dir=/home/"+alice.name+"/projects") {
			t.Fatalf("exit %d, stdout %q", r.code, r.stdout)
		}
	})
	t.Run("raw bytes pass unchanged", func(t *testing.T) {
		// Escape sequences as vim and top write them, and bytes that are not
		// UTF-8. printf writes no newline, so the terminal adds nothing.
		seq := `\033[?1049h\033[2J\033[H\033[1;31mred\033[0m\033[7;40H\342\224\200\377\001\033[?1049l`
		r := run(t, g.ssh(alice, []string{"-tt"}, "printf '"+seq+"'"), "")
		want := "\x1b[?1049h\x1b[2J\x1b[H\x1b[1;31mred\x1b[0m\x1b[7;40H\xe2\x94\x80\xff\x01\x1b[?1049l"
		if r.stdout != want {
			t.Fatalf("got  %q\nwant %q", r.stdout, want)
		}
	})
}

func TestWindowChangeBeforeAndAfterStart(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	c := g.dial(alice)

	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RequestPty("xterm", 24, 80, nil); err != nil {
		t.Fatal(err)
	}
	// Before the process exists.
	if err := s.WindowChange(33, 101); err != nil {
		t.Fatal(err)
	}
	stdin, _ := s.StdinPipe()
	var out syncBuf
	s.Stdout = &out
	if err := s.Start("stty size; read line; stty size"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first size", 20*time.Second, func() bool { return strings.Contains(out.String(), "33 101") })
	// And while it runs.
	if err := s.WindowChange(44, 120); err != nil {
		t.Fatal(err)
	}
	io.WriteString(stdin, "\n")
	if err := s.Wait(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "44 120") {
		t.Fatalf("after the change: %q", out.String())
	}
}

func TestClientLocaleAndTermApply(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	cmd := g.ssh(alice, []string{"-o", "SendEnv=LC_ALL"}, "echo $LC_ALL; locale charmap; locale 2>&1 >/dev/null | wc -l")
	cmd.Env = append(os.Environ(), "LC_ALL=zh_TW.UTF-8")
	r := run(t, cmd, "")
	if got := strings.Fields(r.stdout); strings.Join(got, " ") != "zh_TW.UTF-8 UTF-8 0" {
		t.Fatalf("got %q (stderr %q): want the client's locale, working", r.stdout, r.stderr)
	}
}

func TestSignalsFromTheClientReachTheProcess(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	s, err := g.dial(alice).NewSession()
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuf
	s.Stdout = &out
	if err := s.Start("trap 'echo got-INT; exit 5' INT; echo ready; while :; do sleep 0.1; done"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the trap", 20*time.Second, func() bool { return strings.Contains(out.String(), "ready") })
	if err := s.Signal(ssh.SIGINT); err != nil {
		t.Fatal(err)
	}
	err = s.Wait()
	if ee, ok := err.(*ssh.ExitError); !ok || ee.ExitStatus() != 5 || !strings.Contains(out.String(), "got-INT") {
		t.Fatalf("got %v, output %q", err, out.String())
	}
}

func TestHangupOnDisconnectButNohupSurvives(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)

	// A foreground job on a terminal, and a nohup job beside it.
	cmd := g.ssh(alice, []string{"-tt"}, "nohup sleep 1001 >/dev/null 2>&1 & sleep 1002")
	cmd.Stdin, _ = os.Open(os.DevNull)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	running := func(pattern string) bool {
		return exec.Command("docker", "exec", "berth-"+alice.name, "pgrep", "-f", pattern).Run() == nil
	}
	waitFor(t, "both jobs", 20*time.Second, func() bool { return running("sleep 1001") && running("sleep 1002") })
	cmd.Process.Kill() // the connection drops
	cmd.Wait()
	waitFor(t, "the foreground job to be hung up", 20*time.Second, func() bool { return !running("sleep 1002") })
	if !running("sleep 1001") {
		t.Fatal("the nohup job died with the connection")
	}
}

func TestOrphansAreReaped(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	// The orphaned sleep is reparented to the container's init when its
	// subshell exits; once it ends, only a reaping init keeps it from
	// staying a zombie.
	out := g.runOK(alice, "(sleep 0.1 &); sleep 1; ps -eo stat= | grep -c '^Z' || true")
	if strings.TrimSpace(out) != "0" {
		t.Fatalf("%s zombie processes in the container", strings.TrimSpace(out))
	}
}

func TestSudoIsAConfigSwitch(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	if out := g.runOK(alice, "sudo -n id -u"); strings.TrimSpace(out) != "0" {
		t.Fatalf("sudo -n id -u: %q", out)
	}
	bob := newUser(t, "bob")
	g = startGateway(t, options{userYAML: "sudo: false"}, bob)
	if r := run(t, g.ssh(bob, nil, "sudo -n id -u"), ""); r.code == 0 {
		t.Fatalf("sudo worked with sudo: false: %q", r.stdout)
	}
	// Without sudo nothing in the container may gain privileges.
	if opts := inspect(t, bob).Container.HostConfig.SecurityOpt; !slices.Contains(opts, "no-new-privileges:true") {
		t.Fatalf("security options without sudo: %v", opts)
	}
	if caps := inspect(t, alice).Container.HostConfig.CapDrop; !slices.Contains(caps, "CAP_NET_RAW") || !slices.Contains(caps, "CAP_MKNOD") {
		t.Fatalf("dropped capabilities: %v", caps)
	}
}

// syncBuf is a bytes.Buffer safe for a writer and a reader at once.
type syncBuf struct{ logBuffer }
