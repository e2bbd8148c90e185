package e2e

import (
	"bufio"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-ssh/berth/containers"
)

// scrape reads /metrics as the gateway's http_listen serves it: each
// series line, name and labels, mapped to its value.
func (g *gw) scrape() map[string]float64 {
	g.t.Helper()
	rec := httptest.NewRecorder()
	g.monitor.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		g.t.Fatalf("/metrics: %d %s", rec.Code, rec.Body)
	}
	series := map[string]float64{}
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			g.t.Fatalf("/metrics line %q: %v", line, err)
		}
		series[line[:i]] = v
	}
	return series
}

// An operator's graphs move with what users do: connections, logins good
// and bad, sessions, each phase of a login, image builds, forwards and
// their bytes, and who holds which GPU.
func TestMetricsMoveWithLogins(t *testing.T) {
	t.Parallel()
	alice, bob, stranger := newUser(t, "alice"), newUser(t, "bob"), newUser(t, "eve")
	dgx := mockDGX()
	g := startGateway(t, options{nvml: dgx, extra: "gpus: none\n"}, alice, bob)
	held := uuids(t, dgx, 2)
	leaseHolder(t, bob, held)

	g.runOK(alice, "true")
	g.runOK(alice, "rebuild") // an image build, from the cache
	if r := run(t, exec.Command("ssh", append(g.sshArgs(stranger), alice.name+"@127.0.0.1", "true")...), ""); r.code != 255 {
		t.Fatalf("a stranger's key: exit %d", r.code)
	}
	want := g.serveHTTPInside(alice, 8124)
	port := g.localForward(alice, "-L", ":127.0.0.1:8124")
	if got := httpGet(t, "http://127.0.0.1:"+port+"/index.txt", ""); got != want {
		t.Fatalf("ssh -L: %q, want %q", got, want)
	}
	background(t, g.ssh(alice, nil, "sleep 60"))
	active := `berth_sessions_active{user="` + alice.name + `"}`
	waitFor(t, "the running session to show", 20*time.Second, func() bool { return g.scrape()[active] >= 1 })

	m := g.scrape()
	atLeast := func(series string, min float64) {
		t.Helper()
		if m[series] < min {
			t.Errorf("%s = %v, want at least %v", series, m[series], min)
		}
	}
	atLeast(`berth_connections_total{result="accepted"}`, 5)
	atLeast(`berth_authentications_total{method="publickey",result="ok"}`, 5)
	atLeast(`berth_authentications_total{method="publickey",result="failed"}`, 1)
	atLeast(`berth_session_duration_seconds_count{kind="command"}`, 3)
	for _, phase := range []string{"auth", "container", "exec"} {
		atLeast(`berth_connect_phase_seconds_count{phase="`+phase+`"}`, 3)
	}
	atLeast(`berth_image_builds_total{result="ok"}`, 1)
	atLeast(`berth_image_build_duration_seconds_count`, 1)
	atLeast(`berth_forward_channels_total{type="direct-tcpip"}`, 1)
	atLeast(`berth_forward_bytes_total{direction="out"}`, float64(len(want)))
	atLeast(`berth_forward_bytes_total{direction="in"}`, float64(len("GET /index.txt HTTP/1.1\r\n")))
	for i, id := range held {
		atLeast(fmt.Sprintf(`berth_gpu_lease{container=%q,gpu="%d",user=%q,uuid=%q}`, containers.Name(bob.name), i, bob.name, id), 1)
	}
	utilization := map[string]float64{}
	for series, v := range m {
		if strings.HasPrefix(series, "berth_gpu_utilization_ratio{") {
			utilization[series] = v
		}
	}
	if len(utilization) != 8 {
		t.Errorf("utilization of %d GPUs, want the mock's 8: %v", len(utilization), utilization)
	}
	for series, v := range utilization {
		if v != 0.05 {
			t.Errorf("%s = %v, want the mock's 0.05", series, v)
		}
	}
}

// /readyz turns red when a user's keys file stops parsing, naming the
// file and line, before anyone finds out by being locked out; it turns
// green again once the file is fixed.
func TestReadyzTurnsRedOnABrokenKeysFile(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	readyz := func() (int, string) {
		rec := httptest.NewRecorder()
		g.monitor.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := readyz(); code != 200 {
		t.Fatalf("/readyz before: %d %s", code, body)
	}
	file := filepath.Join(g.cfg.KeysDir, alice.name)
	if err := os.MkdirAll(g.cfg.KeysDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(alice.pub+"\nssh-ed25519 half-a-key-pasted\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, body := readyz(); code != 503 || !strings.Contains(body, file+":2:") {
		t.Fatalf("/readyz with a broken line: %d %s", code, body)
	}
	if err := os.WriteFile(file, []byte(alice.pub+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, body := readyz(); code != 200 {
		t.Fatalf("/readyz after the fix: %d %s", code, body)
	}
}
