package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-ssh/berth/containers"
)

// copyFile copies src to dst, making dst's directory.
func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, mode); err != nil {
		t.Fatal(err)
	}
}

// docker runs the Docker CLI and fails the test with its output.
func dockerCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// deploy/Dockerfile runs berth itself in a container, as its comment
// says: the Docker socket, state_dir and data_root mounted, the host PID
// namespace. A user logs in through it and lands in their own container,
// which outlives the gateway's.
func TestBerthRunsInAContainer(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")

	// The build context `make image` uses: bin/ and deploy/.
	build := t.TempDir()
	copyFile(t, berthBin(t), filepath.Join(build, "bin/berth"), 0o755)
	copyFile(t, agentBin, filepath.Join(build, "bin/berth-agent"), 0o755)
	copyFile(t, filepath.Join(root, "deploy/config.yaml"), filepath.Join(build, "deploy/config.yaml"), 0o644)
	tag := "berth-test-gateway:" + nonce()
	testImages.Store(tag, true)
	dockerCLI(t, "build", "-q", "-f", filepath.Join(root, "deploy/Dockerfile"), "-t", tag, build)

	state := shortTempDir(t)
	etc := t.TempDir()
	copyFile(t, filepath.Join(root, "testdata/env/Dockerfile"), filepath.Join(etc, "env/Dockerfile"), 0o644)
	config := fmt.Sprintf(`listen: ":2222"
state_dir: %s
data_root: %s/users
environment:
  dockerfile: /etc/berth/env/Dockerfile
  build_args: {BASE_IMAGE: %s}
users:
  - name: %s
    uid: 3100
    authorized_keys: [%q]
`, state, state, baseImage, alice.name, alice.pub)
	if err := os.WriteFile(filepath.Join(etc, "config.yaml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	name := "berth-test-gateway-" + nonce()
	dockerCLI(t, "run", "-d", "--name", name, "--pid", "host", "-p", "127.0.0.1:"+port+":2222",
		"-v", "/var/run/docker.sock:/var/run/docker.sock",
		"-v", etc+":/etc/berth:ro", "-v", state+":"+state, tag)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := exec.Command("docker", "logs", name).CombinedOutput()
			t.Logf("gateway container's log:\n%s", out)
		}
		removeContainer(name)
	})

	g := &gw{t: t, port: port}
	var r result
	waitFor(t, "a login through the containerised gateway", 2*time.Minute, func() bool {
		r = run(t, g.ssh(alice, nil, "id -un; id -u; echo $HOME; ls -ld ~/projects | cut -d' ' -f3"), "")
		return r.code == 0
	})
	if want := fmt.Sprintf("%s\n3100\n/home/%s\n%s\n", alice.name, alice.name, alice.name); r.stdout != want {
		t.Fatalf("inside: %q, want %q", r.stdout, want)
	}
	c := inspect(t, alice).Container
	for _, m := range c.Mounts {
		if strings.Contains(m.Source, "docker.sock") {
			t.Fatalf("the user's container has the Docker socket: %+v", m)
		}
	}
	if _, err := os.Stat(filepath.Join(state, "users", alice.name, "projects")); err != nil {
		t.Fatalf("data_root on the host: %v", err)
	}

	// docker stop is SIGTERM: berth drains and exits 0, and the user's
	// container keeps running.
	dockerCLI(t, "stop", "-t", "40", name)
	if code := dockerCLI(t, "inspect", "-f", "{{.State.ExitCode}}", name); code != "0" {
		t.Fatalf("the gateway exited %s on docker stop", code)
	}
	if running := dockerCLI(t, "inspect", "-f", "{{.State.Running}}", containers.Name(alice.name)); running != "true" {
		t.Fatalf("the user's container stopped with the gateway")
	}
}
