package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"
)

// Where berth's environment comes from: the slim test environment, built
// on the local base image (no registry here).
const (
	envDockerfile = "testdata/env/Dockerfile"
	baseImage     = "berth-base:bookworm"
)

// benchUID is the berth user's uid (and gid) inside the container.
const benchUID = 2600

// lab is everything a run sets up: the binaries, the key, berth and sshd
// serving on the loopback, and a counting sink behind each of them.
type lab struct {
	root      string // the module's root directory
	work      string // short temp dir: every file the run writes
	key       string // the client's private key, accepted by both targets
	user      string // berth's user, unique to the run
	container string // berth-<user>
	sinkPort  int    // the sink's port on each target's loopback

	berth, sshd target
	servers     []*server // daemons to stop, in start order
	sinks       []target  // targets whose sink is running
}

// server is a daemon the lab started.
type server struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
}

// logOf is where the daemon called name writes its stdout and stderr.
func (l *lab) logOf(name string) string { return filepath.Join(l.work, name+".log") }

// newLab builds berth, starts berth and sshd, makes the user's container
// and starts the sinks. On error the lab is half made; close takes down
// what there is.
func newLab(ctx context.Context) (*lab, error) {
	l := &lab{}
	if os.Geteuid() != 0 {
		return l, errors.New("the benchmarks need root: berth and sshd run as root, and the peer logs in as root")
	}
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(gomod)) == "" || strings.TrimSpace(string(gomod)) == os.DevNull {
		return l, fmt.Errorf("run the benchmarks from berth's checkout (go env GOMOD: %v)", err)
	}
	l.root = filepath.Dir(strings.TrimSpace(string(gomod)))
	// Short, because berth's agent sockets live under state_dir.
	if l.work, err = os.MkdirTemp("", "bb"); err != nil {
		return l, err
	}
	suffix := make([]byte, 3)
	rand.Read(suffix)
	l.user = "bench" + hex.EncodeToString(suffix)
	l.container = "berth-" + l.user

	if err := l.build(ctx); err != nil {
		return l, err
	}
	l.key = filepath.Join(l.work, "id_ed25519")
	if err := keygen(ctx, l.key); err != nil {
		return l, err
	}
	if l.sinkPort, err = freePort(); err != nil {
		return l, err
	}
	if err := l.startBerth(ctx); err != nil {
		return l, err
	}
	if err := l.startSSHD(ctx); err != nil {
		return l, err
	}
	for _, t := range l.targets() {
		if err := l.startSink(ctx, t); err != nil {
			return l, fmt.Errorf("%s: start the sink: %w", t.name, err)
		}
		l.sinks = append(l.sinks, t)
	}
	return l, nil
}

// targets are the two SSH servers, berth first.
func (l *lab) targets() []target { return []target{l.berth, l.sshd} }

// build compiles berth and berth-agent from the checkout into the lab, as
// `make build` does: the agent static, to run in any image.
func (l *lab) build(ctx context.Context) error {
	progress("building berth and berth-agent")
	for _, b := range []struct {
		pkg string
		env []string
	}{
		{"./cmd/berth", nil},
		{"./cmd/berth-agent", []string{"CGO_ENABLED=0"}},
	} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(l.work, "bin", filepath.Base(b.pkg)), b.pkg)
		cmd.Dir = l.root
		cmd.Env = append(os.Environ(), b.env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	return nil
}

// startBerth writes berth's config, serves it, and logs in once so that
// the container exists (the first login on a machine builds the image).
func (l *lab) startBerth(ctx context.Context) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	pub, err := os.ReadFile(l.key + ".pub")
	if err != nil {
		return err
	}
	doc, err := yaml.Marshal(map[string]any{
		"listen":     net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		"state_dir":  filepath.Join(l.work, "state"),
		"data_root":  filepath.Join(l.work, "users"),
		"agent_path": filepath.Join(l.work, "bin", "berth-agent"),
		"environment": map[string]any{
			"dockerfile": filepath.Join(l.root, envDockerfile),
			"build_args": map[string]string{"BASE_IMAGE": baseImage},
		},
		// An idle forward or sftp must not pay for berth's checks.
		"keepalive_interval": "0s",
		"users": []map[string]any{{
			"name":            l.user,
			"uid":             benchUID,
			"authorized_keys": []string{strings.TrimSpace(string(pub))},
		}},
	})
	if err != nil {
		return err
	}
	cfg := filepath.Join(l.work, "berth.yaml")
	if err := os.WriteFile(cfg, doc, 0o644); err != nil {
		return err
	}
	if err := l.startServer(ctx, "berth", port, filepath.Join(l.work, "bin", "berth"), "serve", "--config", cfg); err != nil {
		return err
	}
	// Relative remote paths land in the user's home in the container.
	l.berth = target{name: "berth", port: port, login: l.user, dir: "."}

	progress("first login as %s: creates %s (and builds the image if it is new)", l.user, l.container)
	begin := time.Now()
	first, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	if err := runQuiet(l.ssh(first, l.berth, nil, "true")); err != nil {
		return fmt.Errorf("first login to berth: %w\nberth's log:\n%s", err, tail(l.logOf("berth")))
	}
	progress("%s ready in %s", l.container, time.Since(begin).Round(time.Millisecond))
	return nil
}

// startSSHD runs OpenSSH's sshd on the loopback with a config of its own,
// letting root in with the same key as berth's user.
func (l *lab) startSSHD(ctx context.Context) error {
	// Debian's sshd refuses to start without its privilege separation dir.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return err
	}
	dir := filepath.Join(l.work, "sshd")
	files := filepath.Join(l.work, "sshd-files")
	for _, d := range []string{dir, files} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	hostKey := filepath.Join(dir, "ssh_host_ed25519_key")
	if err := keygen(ctx, hostKey); err != nil {
		return err
	}
	pub, err := os.ReadFile(l.key + ".pub")
	if err != nil {
		return err
	}
	authorized := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authorized, pub, 0o600); err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	cfg := filepath.Join(dir, "sshd_config")
	conf := strings.Join([]string{
		"Port " + strconv.Itoa(port),
		"ListenAddress 127.0.0.1",
		"HostKey " + hostKey,
		"AuthorizedKeysFile " + authorized,
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"UsePAM no",
		"PidFile none",
		"StrictModes no",
		"PermitRootLogin prohibit-password",
		"PrintMotd no",
		"Subsystem sftp internal-sftp",
	}, "\n") + "\n"
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return err
	}
	if err := l.startServer(ctx, "sshd", port, "/usr/sbin/sshd", "-D", "-e", "-f", cfg); err != nil {
		return err
	}
	l.sshd = target{name: "sshd", port: port, login: "root", dir: files}
	return nil
}

// startServer starts a daemon with its output in a log file, and waits
// until it accepts connections on port.
func (l *lab) startServer(ctx context.Context, name string, port int, argv ...string) error {
	logPath := l.logOf(name)
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close() // the child has its own copy
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group: a Ctrl-C at the terminal is the bench's to
	// handle, and close stops the daemon in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	progress("starting %s on 127.0.0.1:%d", name, port)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	s := &server{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(s.done)
	}()
	l.servers = append(l.servers, s)

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-s.done:
			return fmt.Errorf("%s exited at start: %s\n%s", name, cmd.ProcessState, tail(logPath))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not accept on %s\n%s", name, addr, tail(logPath))
		}
	}
}

// close takes down everything the lab started, in reverse: the sinks, the
// daemons, the container, the files. It runs on its own clock, so that a
// cancelled run still cleans up.
func (l *lab) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, t := range l.sinks {
		if err := l.stopSink(ctx, t); err != nil {
			progress("%s: stop the sink: %v", t.name, err)
		}
	}
	for i := len(l.servers) - 1; i >= 0; i-- {
		s := l.servers[i]
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			progress("%s ignored SIGTERM for 10s; killing it", s.name)
			s.cmd.Process.Kill()
			<-s.done
		}
	}
	if l.container != "" {
		// berth leaves containers running by design; this one is ours.
		if out, err := exec.CommandContext(ctx, "docker", "rm", "-f", l.container).CombinedOutput(); err != nil &&
			!strings.Contains(string(out), "No such container") {
			progress("docker rm -f %s: %v: %s", l.container, err, strings.TrimSpace(string(out)))
		}
	}
	if l.work != "" {
		os.RemoveAll(l.work)
	}
	progress("cleaned up")
}

// keygen makes an ed25519 key pair without a passphrase: path and
// path.pub.
func keygen(ctx context.Context, path string) error {
	return runQuiet(exec.CommandContext(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "berth-bench", "-f", path))
}

// freePort returns a TCP port that was free on the loopback a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// runQuiet runs cmd, keeping its stderr only to explain a failure.
func runQuiet(cmd *exec.Cmd) error {
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, lastLines(stderr.String(), 20))
	}
	return nil
}

// tail returns the end of a log file, for an error message.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	return lastLines(string(b), 20)
}

// lastLines returns at most n last lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
