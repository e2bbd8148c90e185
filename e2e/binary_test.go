package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
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
)

// buildBerth builds the berth command once per run.
var buildBerth = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "berth-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "berth")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/berth")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build berth: %v\n%s", err, out)
	}
	return bin, nil
})

func berthBin(t *testing.T) string {
	t.Helper()
	bin, err := buildBerth()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestCheckConfigNamesTheOffendingKey(t *testing.T) {
	t.Parallel()
	bin := berthBin(t)
	example, err := exec.Command(bin, "check-config", filepath.Join(root, "config.yaml")).CombinedOutput()
	if err != nil {
		t.Fatalf("the example config.yaml does not validate: %v\n%s", err, example)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"listen: :2222\nbogus: 1\n", `line 2: unknown key "bogus"`},
		{"users:\n  - name: Alice\n    authorized_keys: [x]\n", `users[0].name: "Alice" is not a valid login name`},
		{"users:\n  - name: alice\n    authorized_keys: [\"not a key\"]\n", "users[0].authorized_keys[0]"},
		{"shutdown_grace: soon\n", `"soon" is not a duration`},
	} {
		path := filepath.Join(t.TempDir(), "config.yaml")
		os.WriteFile(path, []byte(tc.yaml), 0o644)
		out, err := exec.Command(bin, "check-config", path).CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), tc.want) {
			t.Errorf("check-config %q: %v, output %q; want exit 2 naming %q", tc.yaml, err, out, tc.want)
		}
	}
	if out, err := exec.Command(bin, "version").Output(); err != nil || !strings.HasPrefix(string(out), "berth ") {
		t.Errorf("berth version: %v %q", err, out)
	}
}

// A served berth stops accepting on SIGTERM, lets the open session finish,
// exits 0, and leaves the container running.
func TestSIGTERMDrainsSessionsAndLeavesContainersRunning(t *testing.T) {
	t.Parallel()
	bin := berthBin(t)
	alice := newUser(t, "alice")
	port := freePort(t)
	cfg, path := gatewayConfig(t, options{listen: "127.0.0.1:" + port, extra: "shutdown_grace: 30s\n"}, alice)
	serve := exec.Command(bin, "serve", "--config", path)
	logs := &logBuffer{}
	serve.Stderr = logs
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { serve.Process.Kill(); serve.Wait() })
	waitFor(t, "berth to listen", 30*time.Second, func() bool {
		c, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	g := &gw{t: t, addr: "127.0.0.1:" + port, port: port, cfg: cfg, logs: logs}
	g.runOK(alice, "true")

	session := g.ssh(alice, nil, "echo started; sleep 2; echo finished")
	stdout, _ := session.StdoutPipe()
	if err := session.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || lines.Text() != "started" {
		t.Fatalf("session did not start: %q", lines.Text())
	}
	serve.Process.Signal(syscall.SIGTERM)
	waitFor(t, "berth to stop accepting", 10*time.Second, func() bool {
		c, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	if !lines.Scan() || lines.Text() != "finished" {
		t.Fatalf("the open session was cut: %q", lines.Text())
	}
	if err := session.Wait(); err != nil {
		t.Fatalf("session: %v", err)
	}
	if err := serve.Wait(); err != nil {
		t.Fatalf("berth serve exited with %v after SIGTERM\n%s", err, logs)
	}
	if !strings.Contains(logs.String(), "shutting down") {
		t.Fatalf("no shutdown log line:\n%s", logs)
	}
	// Not on a terminal, the log is JSON lines, one object each.
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var entry struct{ Time, Level, Msg string }
		if err := json.Unmarshal([]byte(line), &entry); err != nil || entry.Msg == "" || entry.Level == "" {
			t.Fatalf("not a JSON log line: %q", line)
		}
	}
	if st := inspect(t, alice).Container.State; st == nil || !st.Running {
		t.Fatal("berth's shutdown stopped the user's container")
	}
}

// freePort returns a TCP port that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

// An operator adds a key with `berth keys add`, and it works at the next
// login, with no restart; removing it stops the next one.
func TestKeysAddTakesEffectWithoutARestart(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	laptop := newUser(t, "laptop") // a second key of alice's
	laptop.name = alice.name
	if r := run(t, g.ssh(laptop, nil, "true"), ""); r.code != 255 {
		t.Fatal("a key not added yet logs in")
	}
	pub := filepath.Join(t.TempDir(), "laptop.pub")
	os.WriteFile(pub, []byte(laptop.pub+" alice@laptop\n"), 0o644)
	out, err := exec.Command(berthBin(t), "keys", "add", "--config", g.cfgPath, alice.name, pub).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "counts at the next login") {
		t.Fatalf("berth keys add: %v %s", err, out)
	}
	if out := g.runOK(laptop, "id -un"); strings.TrimSpace(out) != alice.name {
		t.Fatalf("the added key: %q", out)
	}
	os.WriteFile(filepath.Join(g.cfg.KeysDir, alice.name), nil, 0o644)
	if r := run(t, g.ssh(laptop, nil, "true"), ""); r.code != 255 {
		t.Fatal("a removed key still logs in")
	}
	// A bad key file is refused with a reason.
	os.WriteFile(pub, []byte("ssh-ed25519 nonsense\n"), 0o644)
	if out, err := exec.Command(berthBin(t), "keys", "add", "--config", g.cfgPath, alice.name, pub).CombinedOutput(); err == nil || !strings.Contains(string(out), "not an authorized_keys line") {
		t.Fatalf("a bad key: %v %s", err, out)
	}
}

// make install puts berth, its agent beside it, the systemd unit and a
// starting config in place; the config validates and the unit passes
// systemd-analyze verify where that exists.
func TestMakeInstall(t *testing.T) {
	t.Parallel()
	dest := t.TempDir()
	cmd := exec.Command("make", "install", "DESTDIR="+dest)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	for _, f := range []string{"/usr/local/bin/berth", "/usr/local/bin/berth-agent", "/etc/systemd/system/berth.service", "/etc/berth/config.yaml"} {
		if _, err := os.Stat(dest + f); err != nil {
			t.Fatalf("make install did not place %s", f)
		}
	}
	if out, err := exec.Command(dest+"/usr/local/bin/berth", "check-config", dest+"/etc/berth/config.yaml").CombinedOutput(); err != nil {
		t.Fatalf("the installed config: %v %s", err, out)
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("no systemd-analyze here: the unit is installed but not verified")
		return
	}
	out, _ := exec.Command(analyze, "verify", dest+"/etc/systemd/system/berth.service").CombinedOutput()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		// The unit names the binary at its real path, which this test
		// installed under DESTDIR instead.
		if line != "" && !strings.Contains(line, "/usr/local/bin/berth is not executable") {
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
}

// /readyz turns red while the Docker engine is cut off and green when it
// comes back; /healthz stays green throughout.
func TestReadyzFollowsTheDockerEngine(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	proxy := startDockerProxy(t)
	httpPort := freePort(t)
	_, path := gatewayConfig(t, options{listen: "127.0.0.1:" + freePort(t),
		extra: "docker_host: unix://" + proxy.path + "\nhttp_listen: 127.0.0.1:" + httpPort + "\n"}, alice)
	serve := exec.Command(berthBin(t), "serve", "--config", path)
	var logs logBuffer
	serve.Stderr = &logs
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { serve.Process.Kill(); serve.Wait() })
	get := func(p string) (int, string) {
		resp, err := http.Get("http://127.0.0.1:" + httpPort + p)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor(t, "berth to be ready", 30*time.Second, func() bool { code, _ := get("/readyz"); return code == 200 })
	proxy.cut()
	waitFor(t, "/readyz to turn red", 30*time.Second, func() bool {
		code, body := get("/readyz")
		return code == 503 && strings.Contains(body, "Docker engine does not answer")
	})
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz: %d while Docker is away", code)
	}
	proxy.restore(t)
	waitFor(t, "/readyz to turn green again", 30*time.Second, func() bool { code, _ := get("/readyz"); return code == 200 })
}
