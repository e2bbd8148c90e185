package e2e

import (
	"archive/zip"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/berth-ssh/berth/containers"
)

// worldReadable makes a test directory readable by the containers' users.
func worldReadable(t *testing.T, dir string) string {
	t.Helper()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// bareRepo makes a bare git repository named name.git under dir, holding
// files, owned by uid (git refuses to clone a local repository someone
// else owns).
func bareRepo(t *testing.T, dir, name string, files map[string]string, uid int) string {
	t.Helper()
	work := t.TempDir()
	for path, content := range files {
		if err := os.MkdirAll(filepath.Join(work, filepath.Dir(path)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(work, path), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	git := func(dir string, args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "init.defaultBranch=main"}, args...)...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	git(work, "init", "-q")
	git(work, "add", ".")
	git(work, "commit", "-q", "-m", "start")
	bare := filepath.Join(dir, name+".git")
	git(dir, "clone", "-q", "--bare", work, bare)
	if out, err := exec.Command("chown", "-R", fmt.Sprintf("%d:%d", uid, uid), bare).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v\n%s", err, out)
	}
	return bare
}

// wheel writes a pure-Python wheel of module name, whose VALUE is value,
// into a PEP 503 simple index under index.
func wheel(t *testing.T, index, name, value string) {
	t.Helper()
	dir := filepath.Join(index, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := name + "-1.0-py3-none-any.whl"
	f, err := os.Create(filepath.Join(dir, file))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zw := zip.NewWriter(f)
	info := name + "-1.0.dist-info/"
	var record strings.Builder
	add := func(path, content string) {
		w, err := zw.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(content))
		sum := sha256.Sum256([]byte(content))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", path, base64.RawURLEncoding.EncodeToString(sum[:]), len(content))
	}
	add(name+"/__init__.py", fmt.Sprintf("VALUE = %q\n", value))
	add(info+"METADATA", "Metadata-Version: 2.1\nName: "+name+"\nVersion: 1.0\n")
	add(info+"WHEEL", "Wheel-Version: 1.0\nGenerator: berth-e2e\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
	record.WriteString(info + "RECORD,,\n")
	w, err := zw.Create(info + "RECORD")
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(record.String()))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	page := fmt.Sprintf("<!DOCTYPE html><html><body><a href=%q>%s</a></body></html>\n", file, file)
	if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
}

// packagesState polls `status --json` until the Python packages are no
// longer installing, and returns their state and detail.
func packagesState(t *testing.T, g *gw, u user) (state, detail string) {
	t.Helper()
	waitFor(t, "the Python packages to settle", 3*time.Minute, func() bool {
		var st struct {
			Packages *struct{ State, Detail string } `json:"python_packages"`
		}
		if err := json.Unmarshal([]byte(g.runOK(u, "status --json")), &st); err != nil {
			t.Fatal(err)
		}
		if st.Packages == nil || st.Packages.State == "installing" {
			return false
		}
		state, detail = st.Packages.State, st.Packages.Detail
		return true
	})
	return state, detail
}

// The seed's first start, in berth: the repo is cloned into ~/projects as
// the user, with its progress shown; the configured packages and the
// repo's requirements.txt install into ~/.venv in the background from the
// configured index; commands find them on PATH; pip looks for PyTorch in
// the index for this host (cpu here), written at container start.
func TestFirstStartClonesTheRepoAndInstallsPackages(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	srv := worldReadable(t, t.TempDir())
	repos := filepath.Join(srv, "repos")
	os.Mkdir(repos, 0o755)
	bareRepo(t, repos, "demo", map[string]string{"README": "hello\n", "requirements.txt": "berthreq\n"}, 3000)
	wheels := filepath.Join(srv, "wheels")
	wheel(t, filepath.Join(wheels, "simple"), "berthdemo", "from the configured list")
	wheel(t, filepath.Join(wheels, "simple"), "berthreq", "from requirements.txt")
	os.MkdirAll(filepath.Join(wheels, "torch", "cpu"), 0o755)
	g := startGateway(t, options{extra: fmt.Sprintf(`mounts: ["%s:/srv:ro"]
repo: {url: /srv/repos/demo.git}
python_packages: [berthdemo]
python_index: file:///srv/wheels/simple
torch_index: file:///srv/wheels/torch
`, srv)}, alice)

	r := run(t, g.ssh(alice, nil, "cat projects/demo/README; stat -c %U projects/demo/README"), "")
	if r.code != 0 || r.stdout != "hello\n"+alice.name+"\n" {
		t.Fatalf("first start: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "berth: cloning /srv/repos/demo.git into ~/projects/demo") ||
		!strings.Contains(r.stderr, "Cloning into 'projects/demo'") || !strings.Contains(r.stderr, "berth: cloned /srv/repos/demo.git") {
		t.Fatalf("clone progress: %q", r.stderr)
	}
	if state, detail := packagesState(t, g, alice); state != "installed" {
		t.Fatalf("python packages: %s: %s\n%s", state, detail, g.runOK(alice, "logs"))
	}
	out := g.runOK(alice, `python -c 'import berthdemo, berthreq; print(berthdemo.VALUE); print(berthreq.VALUE)'; command -v python; cat /etc/pip.conf`)
	for _, want := range []string{"from the configured list\nfrom requirements.txt\n/home/" + alice.name + "/.venv/bin/python\n",
		"index-url = file:///srv/wheels/simple\n", "extra-index-url = file:///srv/wheels/torch/cpu\n"} {
		if !strings.Contains(out, want) {
			t.Fatalf("inside: %q, want %q", out, want)
		}
	}
	// A login shell has the virtualenv too, and the log has pip's output.
	if out := run(t, g.ssh(alice, []string{"-tt"}, "bash -lc 'command -v pip'"), "").stdout; !strings.Contains(out, "/.venv/bin/pip") {
		t.Fatalf("login shell's pip: %q", out)
	}
	if out := g.runOK(alice, "logs"); !strings.Contains(out, "Successfully installed berthdemo-1.0 berthreq-1.0") {
		t.Fatalf("logs: %q", out)
	}
	// The next start finds everything in place and does it again for
	// nothing: no clone, no install.
	g.runOK(alice, "restart")
	if r := run(t, g.ssh(alice, nil, "true"), ""); strings.Contains(r.stderr, "cloning") {
		t.Fatalf("cloned again: %q", r.stderr)
	}
	packagesState(t, g, alice)
	if n := strings.Count(g.runOK(alice, "logs"), "python packages into"); n != 1 {
		t.Fatalf("installed %d times", n)
	}
	// The agent is root, the home is the user's: a symlink there must not
	// let the install's bookkeeping write one of root's files.
	issue := g.runOK(alice, "cat /etc/issue")
	g.runOK(alice, "ln -sf /etc/issue ~/.venv/.berth-packages; echo '# changed' >> projects/demo/requirements.txt")
	g.runOK(alice, "restart")
	g.runOK(alice, "true")
	if state, detail := packagesState(t, g, alice); state != "installed" {
		t.Fatalf("reinstall: %s %s", state, detail)
	}
	if got := g.runOK(alice, "cat /etc/issue"); got != issue {
		t.Fatalf("/etc/issue was written through the user's symlink: %q", got)
	}
	if n := strings.Count(g.runOK(alice, "logs"), "python packages into"); n != 2 {
		t.Fatalf("installed %d times in all; the changed requirements want a second", n)
	}
	if out := g.runOK(alice, "status"); !strings.Contains(out, "/srv/repos/demo.git, cloned in ~/projects") || !regexp.MustCompile(`python packages +installed`).MatchString(out) {
		t.Fatalf("status:\n%s", out)
	}
}

// A clone that fails says why in one warning, and the session goes on.
// A package index that cannot be reached fails the install with pip's
// reason, shown in status; the shell never waited for it.
func TestFailedCloneAndInstallWarnAndTheShellOpens(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{extra: `repo: {url: /srv/nowhere/missing.git}
python_packages: [berthdemo]
python_index: http://127.0.0.1:9/simple
`}, alice)
	r := run(t, g.ssh(alice, nil, "echo still here"), "")
	if r.code != 0 || r.stdout != "still here\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "berth: warning: could not clone /srv/nowhere/missing.git: fatal: repository '/srv/nowhere/missing.git' does not exist. Your session goes on without it") {
		t.Fatalf("clone warning: %q", r.stderr)
	}
	state, detail := packagesState(t, g, alice)
	if state != "failed" || !strings.Contains(detail, "berthdemo") || !strings.Contains(detail, "Connection refused") {
		t.Fatalf("python packages: %s: %q", state, detail)
	}
	if g.logs.count("repo clone failed", "missing.git") == 0 {
		t.Fatalf("no log line for the failed clone:\n%s", g.logs)
	}
}

// gitSSHD serves the host's git over OpenSSH's sshd on the berth
// network's gateway address, letting root in with key only, and returns
// the address containers reach it at.
func gitSSHD(t *testing.T, authorized string) string {
	t.Helper()
	nw, err := docker.NetworkInspect(t.Context(), containers.NetworkName, client.NetworkInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gateway := ""
	for _, c := range nw.Network.IPAM.Config {
		if c.Gateway.IsValid() && c.Gateway.Is4() {
			gateway = c.Gateway.String()
		}
	}
	if gateway == "" {
		t.Fatalf("the berth network has no IPv4 gateway: %+v", nw.Network.IPAM)
	}
	dir := t.TempDir()
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	hostKey := filepath.Join(dir, "host_key")
	mustOutput(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostKey)
	os.WriteFile(filepath.Join(dir, "authorized_keys"), []byte(authorized+"\n"), 0o600)
	port := freePort(t)
	cfg := filepath.Join(dir, "sshd_config")
	os.WriteFile(cfg, []byte(strings.Join([]string{
		"Port " + port, "ListenAddress " + gateway, "HostKey " + hostKey,
		"AuthorizedKeysFile " + filepath.Join(dir, "authorized_keys"),
		"PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
		"PidFile none", "StrictModes no", "PermitRootLogin prohibit-password",
	}, "\n")+"\n"), 0o644)
	background(t, exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", cfg))
	addr := net.JoinHostPort(gateway, port)
	waitFor(t, "the git sshd", 10*time.Second, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr
}

// An ssh:// repository that only the user's own key may read is cloned
// with the agent they forwarded (ssh -A); the key never leaves the client.
func TestCloneOverSSHUsesTheForwardedAgent(t *testing.T) {
	t.Parallel()
	alice, bob := newUser(t, "alice"), newUser(t, "bob")
	// bob's first login makes the berth network, where the git host is.
	startGateway(t, options{}, bob).runOK(bob, "true")
	repos := t.TempDir()
	bare := bareRepo(t, repos, "secret", map[string]string{"README": "for alice's key only\n"}, 0)
	addr := gitSSHD(t, alice.pub)
	host, port, _ := net.SplitHostPort(addr)
	g := startGateway(t, options{extra: fmt.Sprintf("repo: {url: \"ssh://root@%s:%s%s\"}\npython_packages: []\n", host, port, bare)}, alice)

	// Without the agent, the clone fails, says why, and the session goes on.
	if r := run(t, g.ssh(alice, nil, "echo on"), ""); r.code != 0 || !strings.Contains(r.stderr, "could not clone") || !strings.Contains(r.stderr, "Permission denied") {
		t.Fatalf("without an agent: exit %d, stderr %q", r.code, r.stderr)
	}
	agentSock := filepath.Join(shortTempDir(t), "agent")
	background(t, exec.Command("ssh-agent", "-D", "-a", agentSock))
	waitFor(t, "ssh-agent", 10*time.Second, func() bool { _, err := os.Stat(agentSock); return err == nil })
	add := exec.Command("ssh-add", alice.key)
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+agentSock)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v\n%s", err, out)
	}
	cmd := g.ssh(alice, []string{"-A"}, "cat projects/secret/README")
	cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK="+agentSock)
	r := run(t, cmd, "")
	if r.code != 0 || r.stdout != "for alice's key only\n" || !strings.Contains(r.stderr, "berth: cloned") {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

// With repo_dockerfile, the repo's .berth/Dockerfile makes the user's
// image from the very first session: the clone happens in a container of
// the configured environment, then the container is made again from the
// repo's image before the user's command runs.
func TestRepoDockerfileAppliesFromTheFirstStart(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	srv := worldReadable(t, t.TempDir())
	bareRepo(t, srv, "tools", map[string]string{
		".berth/Dockerfile": "FROM " + baseImage + "\nCOPY motd /etc/berth-repo-motd\n",
		"motd":              "built from the repo\n",
	}, 3000)
	g := startGateway(t, options{userYAML: "repo_dockerfile: true", extra: fmt.Sprintf(`mounts: ["%s:/srv:ro"]
repo: {url: /srv/tools.git}
python_packages: []
`, srv)}, alice)
	r := run(t, g.ssh(alice, nil, "cat /etc/berth-repo-motd; ls projects/tools"), "")
	t.Cleanup(func() { testImages.Store(inspect(t, alice).Container.Config.Image, true) })
	if r.code != 0 || r.stdout != "built from the repo\nmotd\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "your repo has .berth/Dockerfile; building your image from it") {
		t.Fatalf("progress: %q", r.stderr)
	}
	// Its uid owns the clone; the image is only the repo's.
	if out := g.runOK(alice, "stat -c %u projects/tools/motd"); strings.TrimSpace(out) != strconv.Itoa(3000) {
		t.Fatalf("owner: %q", out)
	}
}
