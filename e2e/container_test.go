package e2e

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
)

// nonce is a value unique to this run, so that no cached image can make a
// build test pass.
func nonce() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// dockerfile writes a Dockerfile for one test and returns its path.
func dockerfile(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "Dockerfile")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSimultaneousFirstConnectionsMakeOneContainerAndOneBuild(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{buildArgs: map[string]string{"RACE": nonce()}}, alice)

	var wg sync.WaitGroup
	results := make([]result, 10)
	for i := range results {
		wg.Go(func() { results[i] = run(t, g.ssh(alice, nil, "id -un"), "") })
	}
	wg.Wait()
	for i, r := range results {
		if r.code != 0 || strings.TrimSpace(r.stdout) != alice.name {
			t.Fatalf("connection %d: exit %d, stdout %q, stderr %q", i, r.code, r.stdout, r.stderr)
		}
		// Every one of them watched the one build.
		if !strings.Contains(r.stderr, "berth: building") {
			t.Errorf("connection %d saw no build progress: %q", i, r.stderr)
		}
	}
	list, err := docker.ContainerList(t.Context(), client.ContainerListOptions{
		All: true, Filters: make(client.Filters).Add("label", "berth.user="+alice.name),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 {
		t.Fatalf("%d containers for one user", len(list.Items))
	}
	if n := g.logs.count("image build started"); n != 1 {
		t.Fatalf("%d image builds for one environment", n)
	}
	if n := g.logs.count("container created"); n != 1 {
		t.Fatalf("%d containers created", n)
	}
}

func TestBuildProgressIsLive(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	df := dockerfile(t, "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nARG NONCE\nRUN echo \"first step $NONCE\"\nRUN sleep 3 && echo \"last step $NONCE\"\n")
	g := startGateway(t, options{dockerfile: df, buildArgs: map[string]string{"NONCE": nonce()}}, alice)

	cmd := g.ssh(alice, nil, "true")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var firstLine, lastStep time.Time
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		line := sc.Text()
		if firstLine.IsZero() && strings.HasPrefix(line, "berth: building") {
			firstLine = time.Now()
		}
		if strings.HasPrefix(line, "last step") {
			lastStep = time.Now()
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if firstLine.IsZero() || lastStep.IsZero() {
		t.Fatal("no build progress on stderr")
	}
	if gap := lastStep.Sub(firstLine); gap < 2*time.Second {
		t.Fatalf("the first progress line came only %s before the build's last step: not live", gap)
	}
}

func TestFailingBuildGivesAClearMessage(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	df := dockerfile(t, "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo 'about to fail' && exit 3\n")
	g := startGateway(t, options{dockerfile: df}, alice)
	for range 2 { // and the gateway is still there to say so again
		r := run(t, g.ssh(alice, nil, "true"), "")
		if r.code != 255 {
			t.Fatalf("exit %d, want 255", r.code)
		}
		if !strings.Contains(r.stderr, "about to fail") ||
			!strings.Contains(r.stderr, "berth: the environment image failed to build") {
			t.Fatalf("stderr:\n%s", r.stderr)
		}
	}
	if g.logs.count("level=ERROR", "image build failed") == 0 {
		t.Fatalf("the failure was not logged:\n%s", g.logs)
	}
}

func TestContainerThatWontStartGivesAClearMessage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, breakage, told, logged string
	}{
		// Docker itself refuses to start it.
		{"docker refuses", "rm /etc/passwd && mkdir /etc/passwd",
			"berth: your container failed to start.", "unable to find user"},
		// It starts, but berth's agent cannot create the user and exits.
		{"agent exits", "rm -rf /etc/sudoers.d && touch /etc/sudoers.d",
			"berth: your container stopped while starting.", "provision"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			alice := newUser(t, "alice")
			df := dockerfile(t, "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN "+tc.breakage+"\n")
			g := startGateway(t, options{dockerfile: df}, alice)
			r := run(t, g.ssh(alice, nil, "true"), "")
			if r.code != 255 || !strings.Contains(r.stderr, tc.told) {
				t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
			}
			if g.logs.count("level=ERROR", "session failed", tc.logged) == 0 {
				t.Fatalf("the reason is not in the log:\n%s", g.logs)
			}
		})
	}
}

func TestStoppedContainerIsStartedAgainWithDataKept(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	g.runOK(alice, "echo kept > ~/dotfile; sudo touch /installed-by-user")
	before := inspect(t, alice).Container.ID
	if _, err := docker.ContainerStop(t.Context(), "berth-"+alice.name, client.ContainerStopOptions{}); err != nil {
		t.Fatal(err)
	}
	r := run(t, g.ssh(alice, nil, "cat ~/dotfile; ls /installed-by-user"), "")
	if r.code != 0 || !strings.Contains(r.stdout, "kept") || !strings.Contains(r.stderr, "starting your container") {
		t.Fatalf("exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if inspect(t, alice).Container.ID != before {
		t.Fatal("a stopped container was replaced instead of started")
	}
}

func TestConfigChangeKeepsTheRunningContainerAndWarns(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	state, data := shortTempDir(t), t.TempDir()
	g := startGateway(t, options{stateDir: state, dataRoot: data}, alice)
	g.runOK(alice, "true")
	before := inspect(t, alice).Container.ID

	g = startGateway(t, options{stateDir: state, dataRoot: data, userYAML: "sudo: false"}, alice)
	r := run(t, g.ssh(alice, nil, "sudo -n true && echo still-sudo"), "")
	if r.code != 0 || !strings.Contains(r.stderr, "older configuration") || !strings.Contains(r.stdout, "still-sudo") {
		t.Fatalf("exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if inspect(t, alice).Container.ID != before {
		t.Fatal("a config change recreated the container")
	}
}

// dockerProxy relays the Docker API socket, so a test can cut berth off
// from the engine and restore it, as a daemon restart would.
type dockerProxy struct {
	path string
	mu   sync.Mutex
	l    net.Listener
	conn map[net.Conn]bool
}

func startDockerProxy(t *testing.T) *dockerProxy {
	p := &dockerProxy{path: filepath.Join(shortTempDir(t), "docker.sock"), conn: map[net.Conn]bool{}}
	p.restore(t)
	t.Cleanup(p.cut)
	return p
}

func (p *dockerProxy) restore(t *testing.T) {
	l, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.l = l
	p.mu.Unlock()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go p.relay(c)
		}
	}()
}

func (p *dockerProxy) relay(c net.Conn) {
	up, err := net.Dial("unix", "/var/run/docker.sock")
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conn[c], p.conn[up] = true, true
	p.mu.Unlock()
	go func() { io.Copy(up, c); up.Close() }()
	io.Copy(c, up)
	c.Close()
}

// cut stops the proxy: the socket goes away and open connections drop.
func (p *dockerProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l != nil {
		p.l.Close()
		p.l = nil
	}
	for c := range p.conn {
		c.Close()
	}
	clear(p.conn)
}

func TestDockerDownGivesAClearMessageAndBerthRecovers(t *testing.T) {
	t.Parallel()
	alice, bob := newUser(t, "alice"), newUser(t, "bob")
	proxy := startDockerProxy(t)
	g := startGateway(t, options{extra: "docker_host: unix://" + proxy.path + "\n"}, alice, bob)
	g.runOK(bob, "true") // bob's container is up before the engine goes

	proxy.cut()
	r := run(t, g.ssh(alice, nil, "true"), "")
	if r.code != 255 || r.stderr != "berth: the Docker engine is not reachable right now; try again in a minute, and tell your admin if it lasts.\n" {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if g.logs.count("level=ERROR", "session failed", "user="+alice.name) == 0 {
		t.Fatalf("no log line with the detail:\n%s", g.logs)
	}
	// Everyone else keeps working: a running container needs no engine.
	if out := g.runOK(bob, "echo still-here"); strings.TrimSpace(out) != "still-here" {
		t.Fatalf("bob: %q", out)
	}

	proxy.restore(t)
	if out := g.runOK(alice, "id -un"); strings.TrimSpace(out) != alice.name {
		t.Fatalf("after the engine came back: %q", out)
	}
}

// The embedded default environment builds, from the local base, and gives
// users the seed's tools. It is the slowest test: the only one that builds
// the full environment.
func TestDefaultEnvironmentBuildsAndHasTheSeedsTools(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{dockerfile: "default"}, alice)
	r := run(t, g.ssh(alice, nil, `set -e
		for tool in python3 pip3 git vim nano wget curl ffmpeg cargo rsync ps tmux less ssh sudo; do
			command -v $tool >/dev/null || { echo "missing $tool"; exit 1; }
		done
		python3 -m venv /tmp/venv-check
		locale -a | grep -qi 'zh_TW.utf8'
		locale -a | grep -qi 'en_US.utf8'
		echo "tz=$(cat /etc/timezone)"
		echo "lang=$LANG"`), "")
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "tz=Asia/Taipei") || !strings.Contains(r.stdout, "lang=en_US.UTF-8") {
		t.Fatalf("stdout: %s", r.stdout)
	}
	// The start script ran, as root, into the provisioning log.
	log := filepath.Join(g.cfg.StateDir, "run", "berth-"+alice.name, "provision.log")
	waitFor(t, "the start script", time.Minute, func() bool {
		b, _ := os.ReadFile(log)
		return strings.Contains(string(b), "start script done") && strings.Contains(string(b), "CPU only")
	})
}

func TestAContainerAnotherBerthMadeIsNotUsed(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	startGateway(t, options{}, alice).runOK(alice, "true")
	other := startGateway(t, options{}, alice) // another state_dir
	r := run(t, other.ssh(alice, nil, "true"), "")
	if r.code != 255 || !strings.Contains(r.stderr, "exists that another berth installation made") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestBuildProgressOnATerminalIsOneStatusLine(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{buildArgs: map[string]string{"NONCE": nonce()}}, alice)
	r := run(t, g.ssh(alice, []string{"-tt"}, "echo ready"), "")
	if r.code != 0 || !strings.Contains(r.stdout, "ready") {
		t.Fatalf("exit %d, stdout %q", r.code, r.stdout)
	}
	// Build output rewrites one line in place; berth's steps stay, with
	// how long they took.
	if !strings.Contains(r.stderr, "\r\x1b[K  Step 1/") || strings.Contains(r.stderr, "\nStep 1/") {
		t.Fatalf("build output is not a status line:\n%q", r.stderr)
	}
	if !regexp.MustCompile(`\r\x1b\[Kberth: built berth-env:\w+ in [\d.]+m?s\r\n`).MatchString(r.stderr) {
		t.Fatalf("no step line with its duration:\n%q", r.stderr)
	}
}

func TestMountsAndLimitsReachTheContainer(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	shared, models := shortTempDir(t), shortTempDir(t)
	os.Chmod(shared, 0o755)
	os.Chmod(models, 0o755)
	os.WriteFile(filepath.Join(shared, "data.csv"), []byte("a,b\n"), 0o644)
	os.Mkdir(filepath.Join(models, alice.name), 0o755)
	os.Chown(filepath.Join(models, alice.name), 3000, 3000)
	g := startGateway(t, options{
		extra:    "mounts: [\"" + shared + ":/datasets:ro\", \"" + models + "/{user}:/models\"]\nshm_size: 1g\npids_limit: 300\nmemlock: 1m\ndisk_quota: 10g\n",
		userYAML: "memory: 512m\n    cpus: 0.5",
	}, alice)
	first := run(t, g.ssh(alice, nil, "true"), "")
	out := g.runOK(alice, `cat /datasets/data.csv
touch /datasets/x 2>/dev/null && echo writable || echo read-only
touch /models/mine && echo models-ok
df -k /dev/shm | awk 'NR==2 {print $2}'
cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null | head -1
cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null | head -1
ulimit -l`)
	want := "a,b\nread-only\nmodels-ok\n1048576\n300\n536870912\n1024\n"
	if out != want {
		t.Fatalf("inside the container:\n%s\nwant\n%s", out, want)
	}
	if _, err := os.Stat(filepath.Join(models, alice.name, "mine")); err != nil {
		t.Fatal("{user} was not replaced in the mount")
	}
	hc := inspect(t, alice).Container.HostConfig
	if hc.Memory != 512<<20 || hc.NanoCPUs != 5e8 || hc.ShmSize != 1<<30 || *hc.PidsLimit != 300 {
		t.Fatalf("docker inspect: memory %d cpus %d shm %d pids %d", hc.Memory, hc.NanoCPUs, hc.ShmSize, *hc.PidsLimit)
	}
	st := status(t, g, alice)
	if len(st.Mounts) != 5 {
		t.Fatalf("status mounts: %+v", st.Mounts)
	}
	out = g.runOK(alice, "status")
	if !strings.Contains(out, "memory 512.0 MiB, cpus 0.5, /dev/shm 1.0 GiB, processes 300") {
		t.Fatalf("status does not show the limits:\n%s", out)
	}
	// disk_quota: enforced where the storage driver can, and said to be
	// unenforced where it cannot (fuse-overlayfs, overlay2 on ext4).
	if size := hc.StorageOpt["size"]; size != "" {
		if size != "10737418240" || !regexp.MustCompile(`disk quota +10.0 GiB`).MatchString(out) {
			t.Fatalf("enforced disk quota: size %q, status:\n%s", size, out)
		}
	} else if !strings.Contains(first.stderr, "berth: note: your disk_quota is not enforced") ||
		!regexp.MustCompile(`disk quota +not enforced`).MatchString(out) {
		t.Fatalf("unenforced disk quota: first login %q, status:\n%s", first.stderr, out)
	}
}

// A user's image: is used as it is. An image with neither bash nor sudo
// still works: the user gets /bin/sh.
func TestAUsersOwnImageWithoutBashOrSudo(t *testing.T) {
	t.Parallel()
	alice, bob := newUser(t, "alice"), newUser(t, "bob")
	tag := "berth-test-minimal:" + nonce()
	build := exec.Command("docker", "build", "-q", "-t", tag, "-")
	build.Stdin = strings.NewReader("FROM " + baseImage + "\nRUN rm -f /bin/bash /usr/bin/bash\n")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
	testImages.Store(tag, true)
	own := dockerfile(t, "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo bobs > /etc/whose-env\n")
	g := startGateway(t, options{extra: "users:\n" +
		"  - name: " + alice.name + "\n    uid: 3000\n    authorized_keys: [\"" + alice.pub + "\"]\n    image: " + tag + "\n" +
		"  - name: " + bob.name + "\n    uid: 3001\n    authorized_keys: [\"" + bob.pub + "\"]\n" +
		"    environment: {dockerfile: " + own + ", build_args: {BASE_IMAGE: " + baseImage + "}}\n"})
	out := g.runOK(alice, "echo $SHELL; id -un; command -v bash sudo || echo neither")
	if out != "/bin/sh\n"+alice.name+"\nneither\n" {
		t.Fatalf("minimal image: %q", out)
	}
	if img := inspect(t, alice).Container.Config.Image; img != tag {
		t.Fatalf("alice's container runs %s, want %s", img, tag)
	}
	if out := g.runOK(bob, "cat /etc/whose-env"); out != "bobs\n" {
		t.Fatalf("bob's own environment: %q", out)
	}
}
