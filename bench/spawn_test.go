//go:build spike

// spawn_test.go is the spike behind design decision 1 (docs/design.md).
// It compares the two ways to get a process into a user's container:
//
//   - Docker exec: ExecCreate + ExecAttach (which starts the exec on a
//     hijacked HTTP connection), the output multiplexed by dockerd with
//     8-byte frame headers, then ExecInspect for the exit code.
//   - berth's agent: dial the container's agent socket, pass it the child's
//     ends of three pipes (SCM_RIGHTS), read the pipes directly, and get
//     the exit status on the socket (see package agent).
//
// It measures the latency of running `true` to completion, the throughput
// of 256 MiB of stdout, and records what each way can do with signals.
// It needs root (the agent socket is root-only) and a reachable Docker
// engine with the berth-base:bookworm image, and fails without them. It is
// evidence for a decision, not part of the test suite, so it builds only
// with the spike tag. To reproduce (about a minute):
//
//	go test -tags spike -run Spike -bench . -benchtime 30x -v ./bench/
//
// The medians are printed as a table at the end of the run. It shares
// median and ms with the benchmark suite (measures.go), the rest of the
// package; see main.go for the suite itself.

package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"
	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/ssh"

	"github.com/berth-ssh/berth/agent"
	"github.com/berth-ssh/berth/config"
	"github.com/berth-ssh/berth/containers"
	"github.com/berth-ssh/berth/gpus"
)

// spikeUID is the uid (and gid) of the spike's user; exec runs as it too,
// so both ways start the process as the same user.
const spikeUID = 2500

// throughputBytes is how much the throughput benchmarks read: 256 MiB.
const throughputBytes = 256 << 20

// fixture is the one container all of the spike's tests and benchmarks use.
type fixture struct {
	dir       string // temp dir: agent binary, config, state and data
	user      config.User
	mgr       *containers.Manager
	gpus      *gpus.Inventory
	docker    *client.Client
	container string // container name, berth-<user>
	sock      string // host path of the container's agent socket
}

var (
	setupOnce sync.Once
	fix       *fixture // set, possibly half made, once setup has run
	setupErr  error
	skipWhy   string // why the spike cannot run here, if it cannot

	// results collects medians and observations for the closing summary.
	resultsMu sync.Mutex
	medians   []string
	facts     []string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fix != nil {
		fix.teardown()
	}
	printSummary()
	os.Exit(code)
}

// spike returns the shared fixture, making it on first use.
func spike(tb testing.TB) *fixture {
	tb.Helper()
	setupOnce.Do(func() { fix, setupErr = setup() })
	if skipWhy != "" {
		tb.Fatal(skipWhy)
	}
	if setupErr != nil {
		tb.Fatalf("spike setup: %v", setupErr)
	}
	return fix
}

// setup builds the agent, writes a config for one user and starts that
// user's container through containers.Manager, as berth would.
func setup() (*fixture, error) {
	if os.Geteuid() != 0 {
		skipWhy = "spike needs root: the agent socket is root-only"
		return nil, nil
	}
	docker, err := client.New(client.FromEnv)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := docker.Ping(pctx, client.PingOptions{}); err != nil {
		docker.Close()
		skipWhy = "spike needs a Docker engine: " + err.Error()
		return nil, nil
	}

	dir, err := os.MkdirTemp("", "berth-spike-")
	if err != nil {
		return nil, err
	}
	f := &fixture{dir: dir, docker: docker}

	// Build the agent from this checkout, static as the Makefile does.
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return f, fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	agentBin := filepath.Join(dir, "berth-agent")
	build := exec.Command("go", "build", "-o", agentBin, "./cmd/berth-agent")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return f, fmt.Errorf("build berth-agent: %v\n%s", err, out)
	}

	// A user with a fresh key nobody will use, and a random name so that
	// runs never share a container.
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return f, err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return f, err
	}
	suffix := make([]byte, 4)
	rand.Read(suffix)
	name := "spike" + hex.EncodeToString(suffix)
	doc, err := yaml.Marshal(map[string]any{
		"state_dir":  filepath.Join(dir, "state"),
		"data_root":  filepath.Join(dir, "users"),
		"agent_path": agentBin,
		"environment": map[string]any{
			"dockerfile": filepath.Join(root, "testdata", "env", "Dockerfile"),
		},
		"users": []map[string]any{{
			"name":            name,
			"authorized_keys": []string{strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub)))},
			"uid":             spikeUID,
		}},
	})
	if err != nil {
		return f, err
	}
	cfg, err := config.Decode(bytes.NewReader(doc), dir)
	if err != nil {
		return f, fmt.Errorf("config: %w", err)
	}
	f.user, _ = cfg.User(name)
	f.container = containers.Name(name)
	f.sock = filepath.Join(cfg.StateDir, "run", f.container, agent.SocketName)

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// As berth serve does; without a GPU the inventory is empty.
	f.gpus = gpus.Open(nvml.New(), log)
	f.mgr, err = containers.New(cfg, f.gpus, nil, log)
	if err != nil {
		return f, err
	}
	// Generous: the first run on a machine builds the environment image.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	begin := time.Now()
	conn, err := f.mgr.Open(ctx, containers.Ref{User: f.user}, io.Discard)
	if err != nil {
		return f, fmt.Errorf("open %s: %w", f.container, err)
	}
	conn.Close()
	fmt.Fprintf(os.Stderr, "spike: container %s ready in %s\n", f.container, time.Since(begin).Round(time.Millisecond))
	return f, nil
}

// teardown removes the container and the temp dir. The "berth" network is
// left: other berth tests share it.
func (f *fixture) teardown() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if f.container != "" {
		if _, err := f.docker.ContainerRemove(ctx, f.container, client.ContainerRemoveOptions{Force: true}); err != nil {
			fmt.Fprintf(os.Stderr, "spike: remove %s: %v\n", f.container, err)
		}
	}
	if f.mgr != nil {
		f.mgr.Close()
	}
	if f.gpus != nil {
		f.gpus.Close()
	}
	f.docker.Close()
	os.RemoveAll(f.dir)
}

// execRun runs cmd through Docker exec as the spike's user, copies its
// stdout to stdout (stderr is discarded) and returns its exit code. polls
// counts the extra ExecInspect calls needed because the exec was still
// marked running after its stream ended.
func (f *fixture) execRun(ctx context.Context, cmd []string, stdout io.Writer) (code, polls int, err error) {
	id, att, err := f.execStart(ctx, cmd)
	if err != nil {
		return 0, 0, err
	}
	defer att.Close()
	// Without a TTY dockerd multiplexes stdout and stderr in frames with
	// 8-byte headers; StdCopy takes them apart, as berth would have to.
	if _, err := stdcopy.StdCopy(stdout, io.Discard, att.Reader); err != nil {
		return 0, 0, fmt.Errorf("read exec stream: %w", err)
	}
	return f.execWait(ctx, id)
}

// execStart creates an exec and starts it attached.
func (f *fixture) execStart(ctx context.Context, cmd []string) (string, client.ExecAttachResult, error) {
	uid := strconv.Itoa(spikeUID)
	cr, err := f.docker.ExecCreate(ctx, f.container, client.ExecCreateOptions{
		User:         uid + ":" + uid,
		AttachStdout: true,
		AttachStderr: true,
		Cmd:          cmd,
	})
	if err != nil {
		return "", client.ExecAttachResult{}, fmt.Errorf("exec create: %w", err)
	}
	// ExecAttach is POST /exec/<id>/start on a hijacked connection: it
	// starts the process and streams its output.
	att, err := f.docker.ExecAttach(ctx, cr.ID, client.ExecAttachOptions{})
	if err != nil {
		return "", client.ExecAttachResult{}, fmt.Errorf("exec attach: %w", err)
	}
	return cr.ID, att, nil
}

// execWait polls ExecInspect until the exec is no longer running and
// returns its exit code, the only thing Docker says about how it ended.
func (f *fixture) execWait(ctx context.Context, id string) (code, polls int, err error) {
	for {
		ins, err := f.docker.ExecInspect(ctx, id, client.ExecInspectOptions{})
		if err != nil {
			return 0, polls, fmt.Errorf("exec inspect: %w", err)
		}
		if !ins.Running {
			return ins.ExitCode, polls, nil
		}
		polls++
		select {
		case <-ctx.Done():
			return 0, polls, ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

// agentProc is a process started through the agent, with our ends of its
// pipes.
type agentProc struct {
	*agent.Process
	stdin, stdout, stderr *os.File
}

// agentStart dials the agent and starts command (run by the user's shell
// with -c, as sshd does) with three fresh pipes.
func (f *fixture) agentStart(ctx context.Context, command string) (*agentProc, error) {
	conn, err := agent.Connect(ctx, f.sock)
	if err != nil {
		return nil, fmt.Errorf("dial agent: %w", err)
	}
	var ends [3][2]*os.File // [stdin, stdout, stderr][read, write]
	for i := range ends {
		r, w, err := os.Pipe()
		if err != nil {
			conn.Close()
			return nil, err
		}
		ends[i] = [2]*os.File{r, w}
	}
	p, err := agent.Start(conn, agent.Spawn{Command: command}, ends[0][0], ends[1][1], ends[2][1])
	// The child has its own copies now (or there is no child): ours must
	// go, so that its exit is what ends our reads.
	ends[0][0].Close()
	ends[1][1].Close()
	ends[2][1].Close()
	if err != nil {
		ends[0][1].Close()
		ends[1][0].Close()
		ends[2][0].Close()
		return nil, fmt.Errorf("agent start: %w", err)
	}
	return &agentProc{Process: p, stdin: ends[0][1], stdout: ends[1][0], stderr: ends[2][0]}, nil
}

// agentRun runs command through the agent with empty stdin, copies its
// stdout to stdout (stderr is discarded) and waits for its exit.
func (f *fixture) agentRun(ctx context.Context, command string, stdout io.Writer) (agent.ExitStatus, error) {
	p, err := f.agentStart(ctx, command)
	if err != nil {
		return agent.ExitStatus{}, err
	}
	defer p.Close()
	defer p.stdout.Close()
	defer p.stderr.Close()
	p.stdin.Close()
	// Read both streams to EOF, as the exec side's demultiplexer does.
	stderrDone := make(chan struct{})
	go func() {
		io.Copy(io.Discard, p.stderr)
		close(stderrDone)
	}()
	// A plain reader hides *os.File's WriterTo, so the copy uses our
	// buffer: 256 KiB reads, rather than io.Copy's 32 KiB.
	buf := make([]byte, 256<<10)
	if _, err := io.CopyBuffer(stdout, struct{ io.Reader }{p.stdout}, buf); err != nil {
		return agent.ExitStatus{}, err
	}
	<-stderrDone
	return p.Wait()
}

// counter is a writer that only counts.
type counter int64

func (c *counter) Write(p []byte) (int, error) {
	*c += counter(len(p))
	return len(p), nil
}

func addMedian(format string, args ...any) {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	medians = append(medians, fmt.Sprintf(format, args...))
}

// observe records a fact about a way in, for the test log and the summary.
func observe(t *testing.T, format string, args ...any) {
	t.Helper()
	s := fmt.Sprintf(format, args...)
	t.Log(s)
	resultsMu.Lock()
	defer resultsMu.Unlock()
	facts = append(facts, s)
}

func printSummary() {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	if len(medians) > 0 {
		fmt.Println("\nspike medians:")
		for _, m := range medians {
			fmt.Println("  " + m)
		}
	}
	if len(facts) > 0 {
		fmt.Println("\nspike observations:")
		for _, s := range facts {
			fmt.Println("  - " + s)
		}
	}
}

// BenchmarkTrue is the latency of running `true` to completion and getting
// its exit code. Exec runs true directly; the agent runs it as `bash -c
// true` (the user's shell, as sshd would), which execs true in place.
func BenchmarkTrue(b *testing.B) {
	f := spike(b)
	ctx := context.Background()

	b.Run("exec", func(b *testing.B) {
		var times []time.Duration
		extraPolls := 0
		for b.Loop() {
			start := time.Now()
			code, polls, err := f.execRun(ctx, []string{"true"}, io.Discard)
			if err != nil {
				b.Fatal(err)
			}
			if code != 0 {
				b.Fatalf("true exited %d", code)
			}
			times = append(times, time.Since(start))
			extraPolls += polls
		}
		med := median(times)
		b.ReportMetric(ms(med), "median-ms")
		addMedian("true, docker exec: %8.2f ms   (n=%d; %d extra ExecInspect polls after EOF)", ms(med), len(times), extraPolls)
	})

	b.Run("agent", func(b *testing.B) {
		var times []time.Duration
		for b.Loop() {
			start := time.Now()
			st, err := f.agentRun(ctx, "true", io.Discard)
			if err != nil {
				b.Fatal(err)
			}
			if st.Code != 0 || st.Signal != "" {
				b.Fatalf("true ended with %s", st)
			}
			times = append(times, time.Since(start))
		}
		med := median(times)
		b.ReportMetric(ms(med), "median-ms")
		addMedian("true, agent:       %8.2f ms   (n=%d)", ms(med), len(times))
	})
}

// BenchmarkThroughput reads 256 MiB of zeros from `head` in the container
// to EOF. It is the transport's ceiling: berth would copy into an SSH
// channel, which is slower than either.
func BenchmarkThroughput(b *testing.B) {
	f := spike(b)
	ctx := context.Background()
	size := strconv.Itoa(throughputBytes)

	report := func(b *testing.B, way string, times []time.Duration) {
		med := median(times)
		mibs := float64(throughputBytes>>20) / med.Seconds()
		b.ReportMetric(mibs, "median-MiB/s")
		addMedian("256 MiB, %-10s %8.0f MiB/s (n=%d; median %.0f ms)", way+":", mibs, len(times), ms(med))
	}

	b.Run("exec", func(b *testing.B) {
		b.SetBytes(throughputBytes)
		var times []time.Duration
		for b.Loop() {
			start := time.Now()
			var n counter
			code, _, err := f.execRun(ctx, []string{"head", "-c", size, "/dev/zero"}, &n)
			if err != nil {
				b.Fatal(err)
			}
			if code != 0 || n != throughputBytes {
				b.Fatalf("head exited %d after %d bytes", code, n)
			}
			times = append(times, time.Since(start))
		}
		report(b, "exec", times)
	})

	b.Run("agent", func(b *testing.B) {
		b.SetBytes(throughputBytes)
		var times []time.Duration
		for b.Loop() {
			start := time.Now()
			var n counter
			st, err := f.agentRun(ctx, "head -c "+size+" /dev/zero", &n)
			if err != nil {
				b.Fatal(err)
			}
			if st.Code != 0 || st.Signal != "" || n != throughputBytes {
				b.Fatalf("head ended with %s after %d bytes", st, n)
			}
			times = append(times, time.Since(start))
		}
		report(b, "agent", times)
	})
}

// TestSpikeSignals records what each way in can do about signals: deliver
// one to the process (SSH "signal" requests), report that the process was
// killed by one (SSH "exit-signal"), and hang the process up when the
// client goes away. Facts about Docker are only logged; the agent's are
// berth's contract, so they are checked.
func TestSpikeSignals(t *testing.T) {
	f := spike(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("exec/signal", func(t *testing.T) {
		observe(t, "exec: the Engine API has no call to signal an exec'd process (ContainerKill signals only the container's main process)")
		id, att, err := f.execStart(ctx, []string{"sleep", "100"})
		if err != nil {
			t.Fatal(err)
		}
		defer att.Close()
		pid, err := f.execPID(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		// NSpid lists the pid in each pid namespace, outermost first.
		nspid := "?"
		if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
			for line := range strings.Lines(string(status)) {
				if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
					nspid = strings.Join(strings.Fields(v), " ")
				}
			}
		}
		observe(t, "exec: ExecInspect gives the host pid %d (NSpid %s), not the pid inside the container, so a second exec cannot `kill` it by that number", pid, nspid)
		if err := f.killHostPID(pid, []string{"sleep", "100"}, syscall.SIGINT); err != nil {
			observe(t, "exec: SIGINT to host pid %d failed: %v (berth is not in the host's pid namespace)", pid, err)
			return
		}
		io.Copy(io.Discard, att.Reader)
		code, _, err := f.execWait(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		observe(t, "exec: SIGINT via kill(2) on the host pid works only because this test shares the host's pid namespace (and is root); exit code then: %d", code)
	})

	t.Run("exec/exit-signal", func(t *testing.T) {
		killed, _, err := f.execRun(ctx, []string{"sh", "-c", "kill -9 $$"}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		exited, _, err := f.execRun(ctx, []string{"sh", "-c", "exit 137"}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		observe(t, "exec: `kill -9 $$` gives ExitCode %d, `exit 137` gives ExitCode %d; ExecInspect has no signal field, so exec can tell them apart: %v",
			killed, exited, killed != exited)
	})

	t.Run("exec/hangup", func(t *testing.T) {
		id, att, err := f.execStart(ctx, []string{"sleep", "101"})
		if err != nil {
			t.Fatal(err)
		}
		pid, err := f.execPID(ctx, id)
		if err != nil {
			att.Close()
			t.Fatal(err)
		}
		att.Close() // the SSH client went away
		time.Sleep(500 * time.Millisecond)
		ins, err := f.docker.ExecInspect(ctx, id, client.ExecInspectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		observe(t, "exec: closing the attach connection leaves the process running: %v", ins.Running)
		if ins.Running {
			f.killHostPID(pid, []string{"sleep", "101"}, syscall.SIGKILL) // tidy up if we can
		}
	})

	t.Run("agent/signal", func(t *testing.T) {
		p, err := f.agentStart(ctx, "sleep 100")
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		p.stdin.Close()
		p.stdout.Close()
		p.stderr.Close()
		if err := p.Signal("INT"); err != nil {
			t.Fatal(err)
		}
		st, err := waitTimeout(p.Process, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		observe(t, "agent: Process.Signal(\"INT\") on `sleep 100` -> Wait reports %s", fields(st))
		if st.Signal != "INT" {
			t.Errorf("Wait reported %s, want killed by SIGINT", st)
		}
	})

	t.Run("agent/exit-signal", func(t *testing.T) {
		killed, err := f.agentRun(ctx, "kill -9 $$", io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		exited, err := f.agentRun(ctx, "exit 137", io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		observe(t, "agent: `kill -9 $$` -> %s, `exit 137` -> %s; the agent tells them apart: %v",
			fields(killed), fields(exited), killed != exited)
		if killed.Signal != "KILL" || exited.Signal != "" || exited.Code != 137 {
			t.Errorf("got %s and %s, want killed by SIGKILL and exit 137", killed, exited)
		}
	})

	t.Run("agent/hangup", func(t *testing.T) {
		p, err := f.agentStart(ctx, "sleep 102")
		if err != nil {
			t.Fatal(err)
		}
		p.stdin.Close()
		p.stdout.Close()
		p.stderr.Close()
		p.Close() // the SSH client went away
		// pgrep exits 1 when nothing matches; the agent's SIGHUP to the
		// process group may take a moment.
		var st agent.ExitStatus
		for range 20 {
			time.Sleep(50 * time.Millisecond)
			if st, err = f.agentRun(ctx, "pgrep -f '^sleep 102$'", io.Discard); err != nil {
				t.Fatal(err)
			}
			if st.Code == 1 {
				break
			}
		}
		observe(t, "agent: closing the connection hangs the process up (SIGHUP to its group): %v", st.Code == 1)
		if st.Code != 1 {
			t.Errorf("sleep 102 still running after the connection closed (pgrep %s)", st)
		}
	})
}

// execPID waits for a started exec to have a pid, and returns it.
func (f *fixture) execPID(ctx context.Context, id string) (int, error) {
	for range 100 {
		ins, err := f.docker.ExecInspect(ctx, id, client.ExecInspectOptions{})
		if err != nil {
			return 0, err
		}
		if ins.Running && ins.PID != 0 {
			return ins.PID, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return 0, errors.New("exec never got a pid")
}

// killHostPID sends sig to the host pid of an exec'd process, after making
// sure that pid, in our pid namespace, is that process: the command line
// must be argv and its cgroup the container's. A pid from another
// namespace may name an unrelated process here.
func (f *fixture) killHostPID(pid int, argv []string, sig syscall.Signal) error {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return err
	}
	if string(cmdline) != strings.Join(argv, "\x00")+"\x00" {
		return fmt.Errorf("pid %d here is %q, not the exec'd process", pid, cmdline)
	}
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return err
	}
	ins, err := f.docker.ContainerInspect(context.Background(), f.container, client.ContainerInspectOptions{})
	if err != nil {
		return err
	}
	if !strings.Contains(string(cg), ins.Container.ID) {
		return fmt.Errorf("pid %d here is not in %s's cgroup", pid, f.container)
	}
	return syscall.Kill(pid, sig)
}

// fields shows an exit status field by field (its String hides Code when
// there is a Signal).
func fields(st agent.ExitStatus) string {
	return fmt.Sprintf("{Code:%d Signal:%q}", st.Code, st.Signal)
}

// waitTimeout waits for p's exit, giving up after d.
func waitTimeout(p *agent.Process, d time.Duration) (agent.ExitStatus, error) {
	select {
	case <-p.Done():
		return p.Wait()
	case <-time.After(d):
		return agent.ExitStatus{}, fmt.Errorf("process still running after %s", d)
	}
}
