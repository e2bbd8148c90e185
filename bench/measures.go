package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// connectRows times `ssh host true` against berth and sshd, and `docker
// exec berth-<user> true`, n times each, rotating which goes first, after
// one untimed round to warm caches. Each is the wall time of the client
// command, from fork to exit.
func connectRows(ctx context.Context, l *lab, n int) ([]row, error) {
	ways := []struct {
		name string
		cmd  func() *exec.Cmd
	}{
		{"berth", func() *exec.Cmd { return l.ssh(ctx, l.berth, nil, "true") }},
		{"sshd", func() *exec.Cmd { return l.ssh(ctx, l.sshd, nil, "true") }},
		{"docker exec", func() *exec.Cmd { return l.dockerExec(ctx) }},
	}
	times := make([][]time.Duration, len(ways))
	progress("warm connect: %d × ssh true (berth, sshd) and docker exec true", n)
	for i := range n + 1 {
		for j := range ways {
			k := (i + j) % len(ways)
			begin := time.Now()
			if err := runQuiet(ways[k].cmd()); err != nil {
				return nil, fmt.Errorf("connect, %s: %w", ways[k].name, err)
			}
			if i > 0 { // round 0 warms up
				times[k] = append(times[k], time.Since(begin))
			}
		}
	}
	med := make([]float64, len(ways))
	for k := range ways {
		med[k] = ms(median(times[k]))
		progress("connect, %s: median %.1f ms (min %.1f, max %.1f)", ways[k].name, med[k], ms(slices.Min(times[k])), ms(slices.Max(times[k])))
	}
	return []row{
		{name: "warm connect, ssh true", unit: "ms", berth: med[0], peer: med[1], goal: ratioAtMost(0.5)},
		{name: "warm connect vs docker exec true", unit: "ms", berth: med[0], peer: med[2], goal: slowerByAtMost(40)},
	}, nil
}

// transfer is a throughput row: once moves size bytes through target t
// and returns how long that took.
type transfer struct {
	name string
	once func(ctx context.Context, l *lab, t target, size int64) (time.Duration, error)
	pty  bool // moves plan.ptySize bytes instead of plan.size
}

// transfers are the throughput rows, in the order they run. The SFTP get
// reads the file the put wrote.
var transfers = []transfer{
	{"stdout, no PTY", stdoutOnce, false},
	{"stdout on a PTY, ssh -tt", stdoutPTYOnce, true},
	{"port forward, ssh -L", forwardOnce, false},
	{"sftp put", sftpPut, false},
	{"sftp get", sftpGet, false},
}

// compare runs tr p.reps times on each target, alternating which goes
// first, and returns the row of median throughputs.
func compare(ctx context.Context, l *lab, p plan, tr transfer) (row, error) {
	size := p.size
	if tr.pty {
		size = p.ptySize
	}
	times := map[string][]time.Duration{}
	for rep := range p.reps {
		order := l.targets()
		if rep%2 == 1 {
			slices.Reverse(order)
		}
		for _, t := range order {
			d, err := tr.once(ctx, l, t, size)
			if err != nil {
				return row{}, fmt.Errorf("%s, %s: %w", tr.name, t.name, err)
			}
			// An SFTP put leaves a GiB of dirty pages; written back
			// later, they would slow whichever transfer came next.
			syscall.Sync()
			progress("%s, %s, %d/%d: %d MiB in %.2fs, %.0f MiB/s", tr.name, t.name, rep+1, p.reps, size>>20, d.Seconds(), mibs(size, d))
			times[t.name] = append(times[t.name], d)
		}
	}
	return row{
		name:  tr.name,
		unit:  "MiB/s",
		berth: mibs(size, median(times[l.berth.name])),
		peer:  mibs(size, median(times[l.sshd.name])),
		goal:  ratioAtLeast(0.9),
	}, nil
}

// stdoutOnce runs `head -c size /dev/zero` on t without a PTY and reads
// its stdout to EOF. The time runs from the first byte to EOF, so the
// connection's setup is not in it.
func stdoutOnce(ctx context.Context, l *lab, t target, size int64) (time.Duration, error) {
	return readStdout(ctx, l, t, false, size)
}

// stdoutPTYOnce is stdoutOnce on a PTY (`ssh -tt`).
func stdoutPTYOnce(ctx context.Context, l *lab, t target, size int64) (time.Duration, error) {
	return readStdout(ctx, l, t, true, size)
}

// readStdout runs `head -c size /dev/zero` on t, on a PTY if pty, and
// reads its stdout to EOF, timing from the first byte to EOF. On a PTY
// the client's stdin is a pipe held open until the end, so that no EOF
// reaches the terminal early.
func readStdout(ctx context.Context, l *lab, t target, pty bool, size int64) (time.Duration, error) {
	var opts []string
	if pty {
		opts = []string{"-tt"}
	}
	cmd := l.ssh(ctx, t, opts, "head -c "+strconv.FormatInt(size, 10)+" /dev/zero")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if pty {
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return 0, err
		}
		defer stdin.Close()
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	buf := make([]byte, 1<<20)
	var n int64
	var first time.Time
	for {
		k, err := out.Read(buf)
		if k > 0 && n == 0 {
			first = time.Now()
		}
		n += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			cmd.Wait()
			return 0, err
		}
	}
	took := time.Since(first)
	if err := cmd.Wait(); err != nil {
		return 0, fmt.Errorf("%v\n%s", err, lastLines(stderr.String(), 20))
	}
	if n != size {
		return 0, fmt.Errorf("read %d bytes, want %d", n, size)
	}
	return took, nil
}

// forwardOnce starts `ssh -N -L` from a fresh local port to the sink on
// t's loopback, writes size bytes through it, half-closes, and waits for
// the sink's count. The time runs from the first byte written to the
// reply.
func forwardOnce(ctx context.Context, l *lab, t target, size int64) (time.Duration, error) {
	lport, err := freePort()
	if err != nil {
		return 0, err
	}
	spec := fmt.Sprintf("127.0.0.1:%d:127.0.0.1:%d", lport, l.sinkPort)
	cmd := l.ssh(ctx, t, []string{"-N", "-o", "ExitOnForwardFailure=yes", "-L", spec})
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()

	// The first connection that the local port accepts is the measured
	// one: ssh listens only once it is logged in.
	var c *net.TCPConn
	for deadline := time.Now().Add(20 * time.Second); c == nil; {
		nc, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(lport)))
		if err == nil {
			c = nc.(*net.TCPConn)
			break
		}
		select {
		case err := <-exited:
			exited <- err // for the deferred wait
			return 0, fmt.Errorf("ssh -L exited: %v\n%s", err, lastLines(stderr.String(), 20))
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("ssh -L never listened on %d\n%s", lport, lastLines(stderr.String(), 20))
		}
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()

	buf := make([]byte, 1<<20)
	begin := time.Now()
	for left := size; left > 0; {
		k, err := c.Write(buf[:min(left, int64(len(buf)))])
		if err != nil {
			return 0, fmt.Errorf("write after %d bytes: %v\n%s", size-left, err, lastLines(stderr.String(), 20))
		}
		left -= int64(k)
	}
	if err := c.CloseWrite(); err != nil {
		return 0, err
	}
	reply, err := io.ReadAll(c)
	took := time.Since(begin)
	if err != nil {
		return 0, err
	}
	if string(reply) != strconv.FormatInt(size, 10) {
		return 0, fmt.Errorf("the sink counted %q bytes, want %d\n%s", reply, size, lastLines(stderr.String(), 20))
	}
	return took, nil
}

// sftpFile is the name of the file SFTP puts on each target and gets
// back.
const sftpFile = "bench-sftp.bin"

// sftpPut uploads a local file of size bytes to t with `sftp -b -`.
func sftpPut(ctx context.Context, l *lab, t target, size int64) (time.Duration, error) {
	local, err := l.payload(size)
	if err != nil {
		return 0, err
	}
	return l.sftpBatch(ctx, t, fmt.Sprintf("put %s %s", local, t.remote(sftpFile)))
}

// sftpGet downloads the file sftpPut left on t, checks its size and
// removes the local copy.
func sftpGet(ctx context.Context, l *lab, t target, size int64) (time.Duration, error) {
	local := filepath.Join(l.work, "got.bin")
	defer os.Remove(local)
	took, err := l.sftpBatch(ctx, t, fmt.Sprintf("get %s %s", t.remote(sftpFile), local))
	if err != nil {
		return 0, err
	}
	if st, err := os.Stat(local); err != nil || st.Size() != size {
		return 0, fmt.Errorf("got %v (%v), want %d bytes", st, err, size)
	}
	return took, nil
}

// sftpBatch runs one sftp command against t and returns how long the
// command took. sftp echoes each batch command ("sftp> put ...") as it
// starts it, after logging in and opening the SFTP session, so the time
// runs from that echo to sftp's exit.
func (l *lab) sftpBatch(ctx context.Context, t target, command string) (time.Duration, error) {
	cmd := l.sftp(ctx, t)
	cmd.Stdin = strings.NewReader(command + "\n")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	var begin time.Time
	lines := bufio.NewScanner(out)
	for lines.Scan() {
		if begin.IsZero() && strings.HasPrefix(lines.Text(), "sftp> ") {
			begin = time.Now()
		}
	}
	err = cmd.Wait()
	took := time.Since(begin)
	if err != nil || begin.IsZero() {
		return 0, fmt.Errorf("sftp %q: %v (echo seen: %v)\n%s", command, err, !begin.IsZero(), lastLines(stderr.String(), 20))
	}
	return took, nil
}

// payload returns a local file of size bytes for SFTP to put, making it
// on first use: one random MiB over and over, so that nothing on the way
// can tell it from real data (a file of zeros could end up sparse).
func (l *lab) payload(size int64) (string, error) {
	p := filepath.Join(l.work, "payload.bin")
	if st, err := os.Stat(p); err == nil && st.Size() == size {
		return p, nil
	}
	f, err := os.Create(p)
	if err != nil {
		return "", err
	}
	block := make([]byte, 1<<20)
	rand.Read(block)
	for left := size; left > 0; left -= int64(len(block)) {
		if _, err := f.Write(block[:min(left, int64(len(block)))]); err != nil {
			f.Close()
			return "", err
		}
	}
	return p, errors.Join(f.Sync(), f.Close())
}

// number is what median takes: durations and plain numbers.
type number interface {
	~int | ~int64 | ~float64
}

// median returns the middle of xs (the mean of the two middles when their
// number is even), or zero for none.
func median[T number](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	switch {
	case len(s) == 0:
		var zero T
		return zero
	case len(s)%2 == 1:
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// mibs is a throughput in MiB/s.
func mibs(size int64, d time.Duration) float64 { return float64(size) / (1 << 20) / d.Seconds() }
