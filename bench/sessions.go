package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// coldConnectRow stops the user's container (untimed) and times `ssh host
// true`, which makes berth start it again; the peer is the container's own
// start, `docker start berth-<user>` right after a `docker stop`. The two
// alternate, n times each. It leaves the container running, but without
// the port-forward sink, which the stop killed: it starts that again.
func coldConnectRow(ctx context.Context, l *lab, n int) (row, error) {
	ways := []struct {
		name string
		cmd  func() *exec.Cmd
	}{
		{"berth", func() *exec.Cmd { return l.ssh(ctx, l.berth, nil, "true") }},
		{"docker start", func() *exec.Cmd { return exec.CommandContext(ctx, "docker", "start", l.container) }},
	}
	times := make([][]time.Duration, len(ways))
	progress("cold connect: %d × (docker stop; ssh true) and (docker stop; docker start)", n)
	for i := range n {
		for j := range ways {
			k := (i + j) % len(ways)
			if err := runQuiet(exec.CommandContext(ctx, "docker", "stop", l.container)); err != nil {
				return row{}, err
			}
			begin := time.Now()
			if err := runQuiet(ways[k].cmd()); err != nil {
				return row{}, fmt.Errorf("cold connect, %s: %w\nberth's log:\n%s", ways[k].name, err, tail(l.logOf("berth")))
			}
			times[k] = append(times[k], time.Since(begin))
		}
	}
	med := make([]float64, len(ways))
	for k := range ways {
		med[k] = ms(median(times[k]))
		progress("cold connect, %s: median %.1f ms (min %.1f, max %.1f)", ways[k].name, med[k], ms(slices.Min(times[k])), ms(slices.Max(times[k])))
	}
	if err := l.startSink(ctx, l.berth); err != nil {
		return row{}, fmt.Errorf("berth: restart the sink after the cold connects: %w", err)
	}
	return row{name: "cold connect vs docker start", unit: "ms", berth: med[0], peer: med[1], goal: slowerByAtMost(150)}, nil
}

// shell is an interactive `ssh -tt host` with a login shell on a PTY, its
// stdin held open.
type shell struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	prompt chan error // one value: nil once a prompt appeared, or why not
	done   chan struct{}
	seen   string // the output's end when the prompt appeared
}

// openShell starts `ssh -tt` to t and reads its output in the background,
// reporting on prompt when the shell's prompt ("$ " or "# ") appears; it
// keeps draining the output afterwards so that the shell never blocks.
func (l *lab) openShell(ctx context.Context, t target) (*shell, error) {
	cmd := l.ssh(ctx, t, []string{"-tt"})
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &shell{cmd: cmd, stdin: stdin, prompt: make(chan error, 1), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		var seen []byte
		buf := make([]byte, 4096)
		found := false
		for {
			k, err := out.Read(buf)
			if !found {
				seen = append(seen, buf[:k]...)
				if bytes.Contains(seen, []byte("$ ")) || bytes.Contains(seen, []byte("# ")) {
					found = true
					s.seen = string(seen[max(0, len(seen)-40):])
					s.prompt <- nil
				}
			}
			if err != nil {
				break
			}
		}
		werr := cmd.Wait()
		if !found {
			s.prompt <- fmt.Errorf("no prompt before exit (%v): output %q\n%s", werr, lastLines(string(seen), 5), lastLines(stderr.String(), 10))
		}
	}()
	return s, nil
}

// waitPrompt waits up to d for the prompt.
func (s *shell) waitPrompt(ctx context.Context, d time.Duration) error {
	select {
	case err := <-s.prompt:
		return err
	case <-time.After(d):
		return fmt.Errorf("no prompt in %s", d)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close asks the shell to exit and kills the client if it has not within
// a second; it returns once the client is gone.
func (s *shell) close() {
	s.stdin.Write([]byte("exit\n"))
	s.stdin.Close()
	select {
	case <-s.done:
	case <-time.After(time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// kill kills the client at once and waits for it.
func (s *shell) kill() {
	s.cmd.Process.Kill()
	s.stdin.Close()
	<-s.done
}

// shellPromptRow times `ssh -tt host` from fork to the first prompt in its
// output, n times per target, alternating which goes first.
func shellPromptRow(ctx context.Context, l *lab, n int) (row, error) {
	times := map[string][]time.Duration{}
	progress("shell prompt: %d × ssh -tt to the first prompt (berth, sshd)", n)
	for i := range n {
		order := l.targets()
		if i%2 == 1 {
			slices.Reverse(order)
		}
		for _, t := range order {
			begin := time.Now()
			s, err := l.openShell(ctx, t)
			if err != nil {
				return row{}, err
			}
			err = s.waitPrompt(ctx, 20*time.Second)
			took := time.Since(begin)
			s.close()
			if err != nil {
				return row{}, fmt.Errorf("shell prompt, %s: %w", t.name, err)
			}
			if i == 0 {
				progress("shell prompt, %s: output ends %q", t.name, s.seen)
			}
			times[t.name] = append(times[t.name], took)
		}
	}
	for _, t := range l.targets() {
		ts := times[t.name]
		progress("shell prompt, %s: median %.1f ms (min %.1f, max %.1f)", t.name, ms(median(ts)), ms(slices.Min(ts)), ms(slices.Max(ts)))
	}
	return row{name: "shell prompt, ssh -tt", unit: "ms",
		berth: ms(median(times[l.berth.name])), peer: ms(median(times[l.sshd.name])), goal: ratioAtMost(1)}, nil
}

// scaleRows opens n idle login shells on berth, batch at a time (no more
// than berth's max_startups start, 10 by default, so that none is refused
// for authenticating alongside too many others), each waiting at its
// prompt, and reports berth's resident memory per session
// and the p99 of 20 `ssh host true` connects while they are open, against
// warm, the warm-connect median. Every shell is killed before it returns.
func scaleRows(ctx context.Context, l *lab, n, batch int, warm float64) ([]row, error) {
	pid := l.berthPID()
	before, err := vmRSS(pid)
	if err != nil {
		return nil, err
	}
	procs := l.containerProcs(ctx)
	progress("scale: opening %d idle ssh -tt sessions on berth, %d at a time (berth RSS %d KiB, %d processes in %s)",
		n, batch, before, procs, l.container)
	var open []*shell
	defer func() {
		var wg sync.WaitGroup
		for _, s := range open {
			wg.Go(s.kill)
		}
		wg.Wait()
		time.Sleep(time.Second)
		progress("scale: killed %d sessions; %d processes left in %s", len(open), l.containerProcs(ctx), l.container)
	}()
	ok, failed := 0, 0
	var firstErr error
	for len(open) < n {
		var started []*shell
		for range min(batch, n-len(open)) {
			s, err := l.openShell(ctx, l.berth)
			if err != nil {
				return nil, err
			}
			started = append(started, s)
		}
		errs := make([]error, len(started))
		var wg sync.WaitGroup
		for i, s := range started {
			wg.Go(func() { errs[i] = s.waitPrompt(ctx, 30*time.Second) })
		}
		wg.Wait()
		for i, s := range started {
			open = append(open, s) // a failed one is killed too
			if errs[i] == nil {
				ok++
				continue
			}
			failed++
			if firstErr == nil {
				firstErr = errs[i]
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	progress("scale: %d sessions at a prompt, %d failed", ok, failed)
	if firstErr != nil {
		progress("scale: first failure: %v", firstErr)
	}
	if ok == 0 {
		return nil, fmt.Errorf("scale: no session reached a prompt: %w", firstErr)
	}
	time.Sleep(time.Second) // let whatever a login starts settle
	after, err := vmRSS(pid)
	if err != nil {
		return nil, err
	}
	perSession := float64(after-before) / float64(ok)
	progress("scale: berth RSS %d KiB → %d KiB, %.1f KiB per session; %d processes in %s",
		before, after, perSession, l.containerProcs(ctx), l.container)

	var times []time.Duration
	for range 20 {
		begin := time.Now()
		if err := runQuiet(l.ssh(ctx, l.berth, nil, "true")); err != nil {
			return nil, fmt.Errorf("scale: connect with %d sessions open: %w", ok, err)
		}
		times = append(times, time.Since(begin))
	}
	p99 := ms(percentile(times, 0.99))
	progress("scale: connect with %d idle sessions: median %.1f ms, p99 %.1f ms", ok, ms(median(times)), p99)
	label := fmt.Sprintf("%d open, %d failed", ok, failed)
	return []row{
		{name: "berth RSS per idle session, " + label, unit: "KiB", berth: perSession, peer: math.NaN(), goal: atMost(150)},
		{name: fmt.Sprintf("connect p99 with %d idle sessions vs warm median", ok), unit: "ms", berth: p99, peer: warm, goal: report()},
	}, nil
}

// percentile returns the nearest-rank p-quantile of xs (p in (0, 1]).
func percentile(xs []time.Duration, p float64) time.Duration {
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// berthPID is the pid of the `berth serve` process the lab started.
func (l *lab) berthPID() int {
	for _, s := range l.servers {
		if s.name == "berth" {
			return s.cmd.Process.Pid
		}
	}
	return 0
}

// vmRSS reads a process's resident set size in KiB from /proc.
func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := cutAfter(line, "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(v, " kB"), 10, 64)
		}
	}
	return 0, errors.New("no VmRSS in /proc/" + strconv.Itoa(pid) + "/status")
}

// containerProcs is the number of processes in the user's container, from
// `docker top`, or -1 if that fails. It is for progress lines only.
func (l *lab) containerProcs(ctx context.Context) int {
	out, err := exec.CommandContext(ctx, "docker", "top", l.container).Output()
	if err != nil {
		return -1
	}
	return strings.Count(strings.TrimSpace(string(out)), "\n") // less the header
}
