package e2e

import (
	"io"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Not parallel: it counts the whole process's goroutines and descriptors.
func TestNoGoroutineOrDescriptorLeaksAcrossSessions(t *testing.T) {
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	g.runOK(alice, "true")
	c := g.dial(alice) // one connection, many sessions: the gateway's side of each must go
	count := func() (int, int) {
		fds, _ := os.ReadDir("/proc/self/fd")
		return runtime.NumGoroutine(), len(fds)
	}
	session := func(cmd string) {
		s, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		out, err := s.CombinedOutput(cmd)
		if err != nil || !strings.Contains(string(out), "ok") {
			t.Fatalf("%q: %v %q", cmd, err, out)
		}
	}
	pty := func() {
		s, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		s.RequestPty("xterm", 24, 80, nil)
		if out, err := s.Output("echo ok"); err != nil || !strings.Contains(string(out), "ok") {
			t.Fatalf("pty: %v %q", err, out)
		}
	}
	g.serveHTTPInside(alice, 8126)
	forward := func() {
		conn, err := c.Dial("tcp", "127.0.0.1:8126")
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(conn, "GET /index.txt HTTP/1.0\r\n\r\n")
		if b, _ := io.ReadAll(conn); !strings.Contains(string(b), "served from inside") {
			t.Fatalf("forward: %q", b)
		}
		conn.Close()
		if _, err := c.Dial("tcp", "127.0.0.1:1"); err == nil {
			t.Fatal("a forward to a closed port succeeded")
		}
	}
	session("echo ok")
	pty()
	forward()
	g0, f0 := count()
	for i := range 150 {
		switch i % 3 {
		case 0:
			session("echo ok >&2; cat /dev/null")
		case 1:
			pty()
		case 2:
			forward()
		}
	}
	var g1, f1 int
	waitFor(t, "goroutines and descriptors to settle", 20*time.Second, func() bool {
		g1, f1 = count()
		return g1 <= g0+5 && f1 <= f0+5
	})
	t.Logf("goroutines %d -> %d, descriptors %d -> %d", g0, g1, f0, f1)
	if n := helpersLeft(t, alice); n != 0 {
		t.Fatalf("%d berth helper processes left in the container", n)
	}
}
