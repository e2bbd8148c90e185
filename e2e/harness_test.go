// Package e2e drives berth end to end: a real gateway on 127.0.0.1:0, the
// real Docker engine, and the real OpenSSH client (plus x/crypto/ssh's
// client where OpenSSH has no way to say what a test needs, such as a
// signal or a window change on demand).
package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/moby/moby/client"
	"golang.org/x/crypto/ssh"

	"github.com/berth-ssh/berth/audit"
	"github.com/berth-ssh/berth/config"
	"github.com/berth-ssh/berth/containers"
	"github.com/berth-ssh/berth/environment"
	"github.com/berth-ssh/berth/gateway"
	"github.com/berth-ssh/berth/gpus"
	"github.com/berth-ssh/berth/keys"
	"github.com/berth-ssh/berth/metrics"
	"github.com/berth-ssh/berth/monitor"
)

var (
	// root is the module's root directory.
	root string
	// agentBin is the berth-agent binary built for this run.
	agentBin string
	// docker is the engine the tests inspect.
	docker *client.Client
)

// baseImage is the local Debian image every test environment builds on.
const baseImage = "berth-base:bookworm"

func TestMain(m *testing.M) {
	os.Exit(setup(m))
}

// setup fails the run loudly, never skips, when the engine or a tool the
// tests need is missing.
func setup(m *testing.M) int {
	wd, _ := os.Getwd()
	root = filepath.Dir(wd)
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "e2e: "+format+"\n", args...)
		return 1
	}
	var err error
	docker, err = client.New(client.FromEnv)
	if err != nil {
		return fail("docker client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := docker.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		return fail("the Docker engine is not reachable, and berth's tests need it: %v", err)
	}
	for _, tool := range []string{"ssh", "ssh-keygen"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fail("%s is not installed; run scripts/test-deps.sh", tool)
		}
	}
	if out, err := exec.Command(filepath.Join(root, "scripts/base-image.sh")).CombinedOutput(); err != nil {
		return fail("base image: %v\n%s", err, out)
	}
	dir, err := os.MkdirTemp("", "berth-e2e-")
	if err != nil {
		return fail("%v", err)
	}
	defer os.RemoveAll(dir)
	agentBin = filepath.Join(dir, "berth-agent")
	build := exec.Command("go", "build", "-o", agentBin, "./cmd/berth-agent")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fail("build berth-agent: %v\n%s", err, out)
	}
	code := m.Run()
	removeTestImages()
	return code
}

// testImages are the image tags made for one test's own environment
// (a Dockerfile or build arg of its own), removed when the run ends.
var testImages sync.Map

func removeTestImages() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	testImages.Range(func(tag, _ any) bool {
		docker.ImageRemove(ctx, tag.(string), client.ImageRemoveOptions{Force: true, PruneChildren: true})
		return true
	})
}

// user is a test user with a key pair on disk.
type user struct {
	name   string
	key    string // private key file, OpenSSH format
	pub    string // the authorized_keys line
	signer ssh.Signer
}

// newUser makes a user with a fresh ed25519 key. The name is unique to
// the run, because container names are global to the engine.
func newUser(t *testing.T, prefix string) user {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 3)
	rand.Read(b)
	name := prefix + hex.EncodeToString(b)
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	u := user{name: name, key: path, signer: signer,
		pub: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))}
	t.Cleanup(func() { removeContainer(containers.Name(name)) })
	return u
}

// removeContainer removes a test's container, whatever its state.
func removeContainer(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	docker.ContainerRemove(ctx, name, client.ContainerRemoveOptions{Force: true})
}

// gw is a running gateway.
type gw struct {
	t       *testing.T
	addr    string
	port    string
	cfg     *config.Config
	cfgPath string
	logs    *logBuffer
	srv     *gateway.Server
	// monitor is what http_listen would serve: /healthz, /readyz and
	// /metrics.
	monitor http.Handler
}

// options adjust a test gateway's config.
type options struct {
	// dockerfile replaces the slim test environment; "default" is berth's
	// embedded default environment.
	dockerfile string
	// buildArgs are added to the environment's.
	buildArgs map[string]string
	// extra is YAML appended to the config, top-level keys.
	extra string
	// userYAML is appended to every user's entry, e.g. "sudo: false".
	userYAML string
	// stateDir and dataRoot reuse directories across gateways.
	stateDir, dataRoot string
	// listen is the config's listen address; startGateway ignores it.
	listen string
	// nvml replaces the real NVML (which finds no GPU here) with a mock.
	nvml nvml.Interface
	// penalties leaves loopback subject to failed-login penalties, which
	// other tests exempt so that one test's wrong key cannot lock out the
	// next connection.
	penalties bool
}

// startGateway runs a gateway for users on 127.0.0.1:0, with the slim test
// environment, and stops it when the test ends.
func startGateway(t *testing.T, o options, users ...user) *gw {
	t.Helper()
	cfg, cfgPath := gatewayConfig(t, o, users...)
	recordTestImages(cfg, users)
	logs := &logBuffer{}
	trail, err := audit.Open(cfg.AuditLog, cfg.AuditLogBytes(), 5)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(audit.Tee(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}), trail))
	lib := o.nvml
	if lib == nil {
		lib = nvml.New()
	}
	inv := gpus.Open(lib, log)
	met := metrics.New()
	m, err := containers.New(cfg, inv, met, log)
	if err != nil {
		t.Fatal(err)
	}
	met.WatchGPUs(m.GPUReport)
	book := keys.New(cfg)
	srv, err := gateway.New(cfg, book, m, met, log)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		m.Close()
		inv.Close()
		trail.Close()
		if t.Failed() {
			t.Logf("gateway log:\n%s", logs)
		}
	})
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return &gw{t: t, addr: l.Addr().String(), port: port, cfg: cfg, cfgPath: cfgPath, logs: logs, srv: srv,
		monitor: monitor.Handler(m, book, met, log)}
}

// recordTestImages notes the images a test's own environments make, and
// the tags rollback keeps for its users' containers. The shared slim
// environment and the default one are kept for the next run.
func recordTestImages(cfg *config.Config, users []user) {
	shared := map[string]bool{}
	for _, dockerfile := range []string{filepath.Join(root, "testdata/env/Dockerfile"), ""} {
		if env, err := environment.Load(dockerfile, map[string]string{"BASE_IMAGE": baseImage}); err == nil {
			shared[env.Tag()] = true
		}
	}
	envs := []config.Environment{cfg.Environment}
	for _, e := range cfg.Environments {
		envs = append(envs, e)
	}
	for _, u := range cfg.Users {
		if u.Environment != nil {
			envs = append(envs, *u.Environment)
		}
	}
	for _, e := range envs {
		if env, err := environment.Load(e.Dockerfile, e.BuildArgs); err == nil && !shared[env.Tag()] {
			testImages.Store(env.Tag(), true)
		}
	}
	for _, u := range users {
		testImages.Store("berth-env:previous-"+containers.Name(u.name), true)
	}
}

// gatewayConfig writes and loads the config a test gateway runs with, and
// returns it with its path.
func gatewayConfig(t *testing.T, o options, users ...user) (*config.Config, string) {
	t.Helper()
	dir := t.TempDir()
	if o.stateDir == "" {
		o.stateDir = shortTempDir(t)
	}
	if o.dataRoot == "" {
		o.dataRoot = filepath.Join(dir, "users")
	}
	switch o.dockerfile {
	case "":
		o.dockerfile = filepath.Join(root, "testdata/env/Dockerfile")
	case "default":
		o.dockerfile = `""`
	}
	if o.listen == "" {
		o.listen = "127.0.0.1:0"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "listen: %s\nstate_dir: %s\ndata_root: %s\nagent_path: %s\n", o.listen, o.stateDir, o.dataRoot, agentBin)
	fmt.Fprintf(&b, "environment:\n  dockerfile: %s\n  build_args:\n    BASE_IMAGE: %s\n", o.dockerfile, baseImage)
	for k, v := range o.buildArgs {
		fmt.Fprintf(&b, "    %s: %q\n", k, v)
	}
	if !o.penalties {
		b.WriteString("penalty_exempt: [127.0.0.0/8]\n")
	}
	// Nothing to install from an index the tests cannot reach, unless a
	// test says otherwise.
	if !strings.Contains(o.extra, "python_packages:") {
		b.WriteString("python_packages: []\n")
	}
	if len(users) > 0 {
		b.WriteString("users:\n")
	}
	for i, u := range users {
		fmt.Fprintf(&b, "  - name: %s\n    uid: %d\n    authorized_keys: [%q]\n", u.name, 3000+i, u.pub)
		if o.userYAML != "" {
			fmt.Fprintf(&b, "    %s\n", o.userYAML)
		}
	}
	b.WriteString(o.extra)
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("test config: %v\n%s", err, b.String())
	}
	return cfg, path
}

// shortTempDir is a temporary directory with a short path: t.TempDir's,
// named after the test, is too long to hold unix sockets.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "berth")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// sshArgs are the OpenSSH client options every test uses: no user config,
// no known_hosts, only the given key.
func (g *gw) sshArgs(u user) []string {
	return []string{"-F", "none", "-p", g.port, "-i", u.key,
		"-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20"}
}

// ssh returns an OpenSSH client command: ssh [opts] u@gateway [remote].
func (g *gw) ssh(u user, opts []string, remote ...string) *exec.Cmd {
	args := append(g.sshArgs(u), opts...)
	args = append(args, u.name+"@127.0.0.1")
	return exec.Command("ssh", append(args, remote...)...)
}

// result is what a finished ssh command gave.
type result struct {
	stdout, stderr string
	code           int
}

// run runs an ssh command with stdin and returns its output and exit code.
func run(t *testing.T, cmd *exec.Cmd, stdin string) result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%v: %v", cmd.Args, err)
	}
	return result{out.String(), errb.String(), code}
}

// runOK runs remote as u and fails the test unless it exits 0.
func (g *gw) runOK(u user, remote string) string {
	g.t.Helper()
	r := run(g.t, g.ssh(u, nil, remote), "")
	if r.code != 0 {
		g.t.Fatalf("ssh %s %q: exit %d\nstdout: %s\nstderr: %s", u.name, remote, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// dial connects with x/crypto/ssh's client as u.
func (g *gw) dial(u user) *ssh.Client {
	g.t.Helper()
	c, err := ssh.Dial("tcp", g.addr, &ssh.ClientConfig{
		User:            u.name,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(u.signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
		Timeout:         20 * time.Second,
	})
	if err != nil {
		g.t.Fatalf("dial as %s: %v", u.name, err)
	}
	g.t.Cleanup(func() { c.Close() })
	return c
}

// inspect returns the container berth made for u.
func inspect(t *testing.T, u user) client.ContainerInspectResult {
	t.Helper()
	r, err := docker.ContainerInspect(context.Background(), containers.Name(u.name), client.ContainerInspectOptions{})
	if err != nil {
		t.Fatalf("inspect %s: %v", containers.Name(u.name), err)
	}
	return r
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fileOwner returns the uid that owns path on the host.
func fileOwner(t *testing.T, path string) int {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return int(st.Sys().(*syscall.Stat_t).Uid)
}

// logBuffer collects the gateway's log for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// count returns how many log lines contain all of parts.
func (l *logBuffer) count(parts ...string) int {
	n := 0
	for _, line := range strings.Split(l.String(), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all && line != "" {
			n++
		}
	}
	return n
}
