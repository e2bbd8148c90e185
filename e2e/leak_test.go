package e2e

import (
	"io"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// 500 cycles of connect, work, disconnect: exec, a terminal, a forward
// and SFTP in turn. Afterwards berth's goroutines and descriptors are back
// within 5 of where they were, no helper berth started (dial, listen,
// SFTP server) is left in the container, and the user's nohup job still
// runs. Not parallel: it counts the whole process's goroutines and
// descriptors.
func TestNoGoroutineOrDescriptorLeaksAcrossSessions(t *testing.T) {
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	g.runOK(alice, "nohup sleep 600 >/dev/null 2>&1 & echo $! > ~/job.pid")
	count := func() (int, int) {
		fds, _ := os.ReadDir("/proc/self/fd")
		return runtime.NumGoroutine(), len(fds)
	}
	session := func(c *ssh.Client, cmd string) {
		s, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		out, err := s.CombinedOutput(cmd)
		if err != nil || !strings.Contains(string(out), "ok") {
			t.Fatalf("%q: %v %q", cmd, err, out)
		}
	}
	pty := func(c *ssh.Client) {
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
	forward := func(c *ssh.Client) {
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
	transfer := func(c *ssh.Client) {
		sc, err := sftp.NewClient(c)
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		if _, err := sc.Stat("job.pid"); err != nil {
			t.Fatalf("sftp: %v", err)
		}
	}
	cycle := func(i int) {
		c := g.dial(alice)
		defer c.Close()
		switch i % 4 {
		case 0:
			session(c, "echo ok >&2; cat /dev/null")
		case 1:
			pty(c)
		case 2:
			forward(c)
		case 3:
			transfer(c)
		}
	}
	for i := range 4 {
		cycle(i)
	}
	g0, f0 := count()
	for i := range 500 {
		cycle(i)
	}
	var g1, f1 int
	waitFor(t, "goroutines and descriptors to settle", 20*time.Second, func() bool {
		g1, f1 = count()
		return g1 <= g0+5 && f1 <= f0+5
	})
	t.Logf("goroutines %d -> %d, descriptors %d -> %d", g0, g1, f0, f1)
	waitFor(t, "the helpers to go", 10*time.Second, func() bool { return helpersLeft(t, alice) == 0 })
	if out := g.runOK(alice, "kill -0 $(cat ~/job.pid) && echo alive"); out != "alive\n" {
		t.Fatalf("the nohup job: %q", out)
	}
}
