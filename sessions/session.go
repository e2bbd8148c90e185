// Package sessions bridges one SSH session channel into the user's
// container: the PTY, stdin, stdout and stderr, window changes, signals and
// the exit status, with the behaviour OpenSSH's sshd has.
//
//	s := sessions.New(ch, sessions.Conn{SSH: sconn, Opener: opener, Log: logger})
//	s.Serve(ctx, reqs) // returns when the session is over
//
// A session reads its requests in Serve and runs its process in one other
// goroutine (run). Serve returns only after run has finished.
package sessions

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/creack/pty"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/berth-ssh/berth/agent"
	"github.com/berth-ssh/berth/audit"
	"github.com/berth-ssh/berth/containers"
	"github.com/berth-ssh/berth/metrics"
	"github.com/berth-ssh/berth/tunnels"
)

// Opener connects a session to the agent in its user's container, making
// the container ready first. progress gets lines for the user.
type Opener interface {
	Open(ctx context.Context, progress io.Writer) (*net.UnixConn, error)
	// Prepare clones the repo and starts the Python packages after a
	// container start (see containers.Manager.Prepare). recreated says the
	// container was replaced and must be opened again.
	Prepare(ctx context.Context, authSock string, login bool, progress io.Writer) (recreated bool)
}

// ExitGatewayFailure is the exit status a user gets when berth itself
// failed, as ssh's own 255.
const ExitGatewayFailure = 255

// pipeSize is the capacity berth asks for its pipes (Linux allows up to
// /proc/sys/fs/pipe-max-size, 1 MiB by default, to anyone).
const pipeSize = 1 << 20

// setPipeSize enlarges a pipe, so that one read can carry more than the
// default 64 KiB. It goes through SyscallConn because Fd would make the
// file blocking, and a blocking read cannot be cut short by Close.
func setPipeSize(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.FcntlInt(fd, unix.F_SETPIPE_SZ, pipeSize) })
	}
}

// ptyDrain is how long output is still read from a terminal after its
// process has exited. The process's last output is already in the
// terminal's buffer, so it only matters when a background job keeps the
// terminal open; sshd, too, closes the session then.
const ptyDrain = 100 * time.Millisecond

// Verbs are berth's own commands, run instead of a command that names
// one (see package verbs).
type Verbs interface {
	Lookup(command string) (run func(context.Context, Stdio) int, ok bool)
}

// Stdio is a verb's standard streams. TTY says whether the client has a
// terminal, so that the verb may ask a question.
type Stdio struct {
	In       io.Reader
	Out, Err io.Writer
	TTY      bool
}

// Conn is what a session knows of its connection.
type Conn struct {
	// SSH is the connection, for opening agent channels to the client.
	SSH    ssh.Conn
	Opener Opener
	Verbs  Verbs
	Log    *slog.Logger
	// Registry learns of the session while its program runs, under
	// Login, Container and Source.
	Registry                 *Registry
	Login, Container, Source string
	// Env is set for every process on top of the container's
	// environment: SSH_CONNECTION and such.
	Env []string
	// AgentForwarding allows ssh -A.
	AgentForwarding bool
	// NoPTY refuses terminals (the key's no-pty).
	NoPTY bool
	// ForceCommand runs instead of whatever the client asks for, verbs
	// and subsystems included, as OpenSSH's command= option does.
	ForceCommand string
	// Metrics counts the session and times its phases; it may be nil.
	Metrics *metrics.Metrics
	// IdleTimeout and MaxDuration hang the session up when it has had no
	// input or output for that long, or has run that long; 0 is never.
	IdleTimeout, MaxDuration time.Duration
	// RecordDir, when set, is where a terminal session's output is
	// recorded as an asciicast file named after RecordID.
	RecordDir, RecordID string
}

// Session is one SSH "session" channel.
type Session struct {
	ch   ssh.Channel
	conn Conn
	log  *slog.Logger
	env  []string

	// active is when bytes last passed on the channel, in unix
	// nanoseconds, for the idle timeout.
	active atomic.Int64

	mu           sync.Mutex
	tty          *agent.TTY // set by pty-req
	agentForward bool       // set by auth-agent-req
	master       *os.File   // the running process's terminal, while it runs
	rec          *recorder  // the terminal's recording, while it runs
	proc         *agent.Process
	started      bool
}

// New returns a session on ch.
func New(ch ssh.Channel, c Conn) *Session {
	s := &Session{conn: c, log: c.Log, env: append([]string(nil), c.Env...)}
	s.active.Store(time.Now().UnixNano())
	s.ch = ch
	if c.IdleTimeout > 0 {
		s.ch = activeChannel{ch, &s.active}
	}
	return s
}

// program is what a session runs: a command through the shell (empty for
// a login shell), or one of berth-agent's helpers such as the SFTP server.
type program struct {
	command string
	helper  []string
	// forced is set when command is the key's forced command; original
	// is then what the client asked for.
	forced   bool
	original string
}

// kind is the program's kind for metrics: shell, command or a helper's
// name, such as sftp.
func (p program) kind() string {
	switch {
	case len(p.helper) > 0:
		return p.helper[0]
	case p.command == "":
		return "shell"
	}
	return "command"
}

func (p program) String() string {
	if len(p.helper) > 0 {
		return "subsystem " + p.helper[0]
	}
	if p.command == "" {
		return "login shell"
	}
	// A command is logged, but a script piped in as one is cut short.
	if r := []rune(p.command); len(r) > 200 {
		return string(r[:200]) + "…"
	}
	return p.command
}

// Serve handles the channel's requests until the channel closes, and
// returns once the session's process handling is over. Cancelling ctx
// hangs the session up.
func (s *Session) Serve(ctx context.Context, reqs <-chan *ssh.Request) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var ran sync.WaitGroup
	for req := range reqs {
		switch req.Type {
		case "shell", "exec", "subsystem":
			prog, ok := s.program(req)
			req.Reply(ok, nil)
			if ok {
				ran.Go(func() { s.run(ctx, prog) })
			}
		default:
			ok := s.handle(req)
			if req.WantReply {
				req.Reply(ok, nil)
			}
		}
	}
	// The client closed the channel or the connection went away.
	cancel(errors.New("channel closed"))
	ran.Wait()
}

// program accepts the one shell, exec or subsystem request a session may
// have.
func (s *Session) program(req *ssh.Request) (program, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return program{}, false
	}
	var prog program
	switch req.Type {
	case "exec":
		var p struct{ Command string }
		if ssh.Unmarshal(req.Payload, &p) != nil {
			return program{}, false
		}
		prog.command = p.Command
	case "subsystem":
		var p struct{ Name string }
		if ssh.Unmarshal(req.Payload, &p) != nil {
			return program{}, false
		}
		if s.conn.ForceCommand != "" {
			prog.command = p.Name // OpenSSH's SSH_ORIGINAL_COMMAND for a subsystem
		} else if p.Name == "sftp" {
			prog.helper = []string{"sftp"}
		} else {
			return program{}, false
		}
	}
	if s.conn.ForceCommand != "" {
		prog = program{command: s.conn.ForceCommand, forced: true, original: prog.command}
	}
	s.started = true
	return prog, true
}

// handle answers every request except shell, exec and subsystem.
func (s *Session) handle(req *ssh.Request) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch req.Type {
	case "pty-req":
		if s.started || s.tty != nil || s.conn.NoPTY {
			return false
		}
		t, ok := parsePtyRequest(req.Payload)
		if ok {
			s.tty = t
		}
		return ok
	case "env":
		var p struct{ Name, Value string }
		if ssh.Unmarshal(req.Payload, &p) != nil || s.started || !acceptEnv(p.Name) {
			return false
		}
		s.env = append(s.env, p.Name+"="+p.Value)
		return true
	case "window-change":
		var p struct{ Cols, Rows, Width, Height uint32 }
		if ssh.Unmarshal(req.Payload, &p) != nil || s.tty == nil {
			return false
		}
		s.tty.Cols, s.tty.Rows = uint16(p.Cols), uint16(p.Rows)
		if s.master != nil {
			pty.Setsize(s.master, &pty.Winsize{Cols: s.tty.Cols, Rows: s.tty.Rows})
		}
		if s.rec != nil {
			s.rec.resize(s.tty.Cols, s.tty.Rows)
		}
		return true
	case "auth-agent-req@openssh.com":
		if s.started || !s.conn.AgentForwarding {
			return false
		}
		s.agentForward = true
		return true
	case "signal":
		var p struct{ Signal string }
		if ssh.Unmarshal(req.Payload, &p) != nil || s.proc == nil {
			return false
		}
		return s.proc.Signal(p.Signal) == nil
	}
	return false
}

// acceptEnv is berth's AcceptEnv: the locale, as Debian's sshd accepts.
func acceptEnv(name string) bool {
	return name == "LANG" || strings.HasPrefix(name, "LC_") || name == "COLORTERM"
}

// run is the session's life, top to bottom: make the container ready,
// start the process, bridge its I/O until it ends, report how it ended,
// close.
func (s *Session) run(ctx context.Context, prog program) {
	// Closing the channel is last, after the exit status (RFC 4254 §6.10:
	// the status must precede the close for the client to see it).
	defer s.ch.Close()
	// A bug here must cost one session, not everyone's.
	defer func() {
		if p := recover(); p != nil {
			s.fail(ctx, "run", fmt.Errorf("panic: %v\n%s", p, debug.Stack()))
		}
	}()
	begin := time.Now()
	ctx, hangup := context.WithCancelCause(ctx)
	defer hangup(nil)
	go s.watchTimeouts(ctx, hangup, begin)
	if s.conn.Registry != nil {
		defer s.conn.Registry.track(Info{Login: s.conn.Login, Container: s.conn.Container, Source: s.conn.Source, Command: prog.String()})()
	}
	kind := prog.kind()
	s.log.Debug("session started", audit.Event("session-start"), "command", prog.String(), "tty", s.hasTTY())
	user, _, _ := strings.Cut(s.conn.Login, "+")
	ended := s.conn.Metrics.SessionStarted(user)
	defer func() { ended(kind) }()
	if run, ok := s.verb(prog); ok {
		kind = "verb"
		code := run(ctx, s.stdio())
		s.log.Info("verb ended", audit.Event("session-end"), "command", prog.String(), "status", code, "took", time.Since(begin).Round(time.Millisecond))
		s.sendExit(agent.ExitStatus{Code: code})
		return
	}

	progress, done := s.waitProgress()
	conn, authSock, err := s.open(ctx, progress)
	s.conn.Metrics.Phase(metrics.PhaseContainer, time.Since(begin))
	// A program of the user's own gets the repo and packages first; the
	// SFTP server does not wait for them.
	// A container made again (from the repo's Dockerfile) is opened and
	// prepared again.
	for err == nil && len(prog.helper) == 0 && s.conn.Opener.Prepare(ctx, authSock, prog.command == "", progress) {
		conn.Close()
		conn, authSock, err = s.open(ctx, progress)
	}
	done()
	if err != nil {
		s.fail(ctx, "prepare container", err)
		return
	}
	spec := s.spec(prog)
	if authSock != "" {
		spec.Env = append(spec.Env, "SSH_AUTH_SOCK="+authSock)
	}
	var status agent.ExitStatus
	if spec.TTY != nil {
		status, err = s.runTTY(ctx, conn, spec, begin)
	} else {
		status, err = s.runPipes(ctx, conn, spec, begin)
	}
	if err != nil {
		s.fail(ctx, "run", err)
		return
	}
	s.log.Info("session ended", audit.Event("session-end"), "command", prog.String(), "status", status.String(), "took", time.Since(begin).Round(time.Millisecond))
	s.sendExit(status)
}

// open connects to the agent in the user's container, making it ready,
// and makes the forwarded agent's socket in it when the client asked for
// one. The socket lives as long as the session.
func (s *Session) open(ctx context.Context, progress io.Writer) (conn *net.UnixConn, authSock string, err error) {
	conn, err = s.conn.Opener.Open(ctx, progress)
	if err != nil || !s.wantsAgent() {
		return conn, "", err
	}
	authSock, err = tunnels.Agent(ctx, s.conn.SSH, s.conn.Opener, s.conn.Metrics, s.log)
	if err != nil {
		conn.Close()
		return nil, "", fmt.Errorf("agent forwarding: %w", err)
	}
	return conn, authSock, nil
}

// verb returns the berth verb a command names, if it names one.
func (s *Session) verb(prog program) (func(context.Context, Stdio) int, bool) {
	if s.conn.Verbs == nil || prog.command == "" || prog.forced {
		return nil, false
	}
	return s.conn.Verbs.Lookup(prog.command)
}

// stdio gives a verb the channel as its standard streams. On a terminal,
// whose client is in raw mode, lines end in CRLF.
func (s *Session) stdio() Stdio {
	s.mu.Lock()
	tty := s.tty != nil
	s.mu.Unlock()
	out, errw := io.Writer(s.ch), io.Writer(s.ch.Stderr())
	if tty {
		out, errw = crlfWriter{out}, crlfWriter{errw}
	}
	return Stdio{In: s.ch, Out: out, Err: errw, TTY: tty}
}

func (s *Session) hasTTY() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tty != nil
}

func (s *Session) wantsAgent() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.agentForward
}

// spec is the process request, from what the client asked for so far.
func (s *Session) spec(prog program) agent.Spawn {
	s.mu.Lock()
	defer s.mu.Unlock()
	sp := agent.Spawn{Command: prog.command, Helper: prog.helper, Env: append([]string(nil), s.env...)}
	if prog.forced && prog.original != "" {
		sp.Env = append(sp.Env, "SSH_ORIGINAL_COMMAND="+prog.original)
	}
	if s.tty != nil && len(prog.helper) == 0 {
		t := *s.tty
		sp.TTY = &t
		sp.Env = append(sp.Env, "TERM="+t.Term)
	}
	return sp
}

// runPipes runs a process without a terminal. Its stdin, stdout and stderr
// are pipes whose far ends the process holds, so the bytes pass unchanged
// and stdout and stderr stay apart.
func (s *Session) runPipes(ctx context.Context, conn *net.UnixConn, spec agent.Spawn, begin time.Time) (agent.ExitStatus, error) {
	var child, ours [3]*os.File
	for i := range 3 {
		r, w, err := os.Pipe()
		if err != nil {
			conn.Close()
			closeAll(child[:i]...)
			closeAll(ours[:i]...)
			return agent.ExitStatus{}, err
		}
		setPipeSize(r)
		if i == 0 {
			child[i], ours[i] = r, w
		} else {
			child[i], ours[i] = w, r
		}
	}
	started := time.Now()
	proc, err := agent.Start(conn, spec, child[:]...)
	s.conn.Metrics.Phase(metrics.PhaseExec, time.Since(started))
	// The process has its own copies now; ours must go so that EOF
	// arrives when it and its children close theirs.
	closeAll(child[:]...)
	if err != nil {
		closeAll(ours[:]...)
		return agent.ExitStatus{}, err
	}
	s.attach(proc, nil, begin)
	defer proc.Close()
	stdin, stdout, stderr := ours[0], ours[1], ours[2]
	// A hangup closes everything, which unblocks every copy below.
	stop := context.AfterFunc(ctx, func() {
		proc.Close()
		closeAll(ours[:]...)
	})
	defer stop()

	go func() {
		tunnels.Copy(stdin, s.ch)
		stdin.Close() // the client's EOF is the process's EOF
	}()
	var out sync.WaitGroup
	out.Go(func() { tunnels.Copy(s.ch, stdout) })
	out.Go(func() { io.Copy(s.ch.Stderr(), stderr) })
	// Like sshd, wait for the output to end, not just the process: a
	// background job that keeps stdout open keeps the session.
	out.Wait()
	s.ch.CloseWrite()
	closeAll(stdout, stderr)
	return proc.Wait()
}

// runTTY runs a process on a terminal the agent opened in the container.
// Berth holds the terminal's master side and copies it raw: nothing is
// rewritten on the way.
func (s *Session) runTTY(ctx context.Context, conn *net.UnixConn, spec agent.Spawn, begin time.Time) (agent.ExitStatus, error) {
	started := time.Now()
	proc, err := agent.Start(conn, spec)
	s.conn.Metrics.Phase(metrics.PhaseExec, time.Since(started))
	if err != nil {
		return agent.ExitStatus{}, err
	}
	defer proc.Close()
	master := proc.PTY
	s.attach(proc, master, begin)
	defer func() {
		s.mu.Lock()
		s.master = nil
		s.mu.Unlock()
		master.Close()
	}()
	stop := context.AfterFunc(ctx, func() {
		proc.Close()
		master.SetDeadline(time.Now())
	})
	defer stop()

	// Input has no end on a terminal: the copy ends with the session.
	go io.Copy(master, s.ch)
	out := io.Writer(s.ch)
	if rec := s.record(spec); rec != nil {
		defer func() {
			s.mu.Lock()
			s.rec = nil
			s.mu.Unlock()
			rec.Close()
		}()
		out = io.MultiWriter(s.ch, rec)
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		tunnels.Copy(out, ttyReader{master}) // ends with EIO once no process holds the terminal
	}()
	select {
	case <-copied:
	case <-proc.Done():
		master.SetReadDeadline(time.Now().Add(ptyDrain))
		<-copied
	}
	return proc.Wait()
}

// record starts recording the terminal's output when the session is to
// be recorded. A recording that cannot be made is logged, and the session
// goes on.
func (s *Session) record(spec agent.Spawn) *recorder {
	if s.conn.RecordDir == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	title := s.conn.Login + ": login shell"
	if spec.Command != "" {
		title = s.conn.Login + ": " + spec.Command
	}
	path := recordingPath(s.conn.RecordDir, time.Now(), s.conn.RecordID)
	rec, err := newRecorder(path, spec.TTY.Cols, spec.TTY.Rows, spec.TTY.Term, title)
	if err != nil {
		s.log.Error("session not recorded", "path", path, "err", err)
		return nil
	}
	s.log.Info("recording the session", audit.Event("recording"), "path", path)
	s.rec = rec
	return rec
}

// attach records the running process, so that window changes and
// signals reach it, and resizes the terminal to the latest size in case a
// window-change arrived while the process was starting.
func (s *Session) attach(proc *agent.Process, master *os.File, begin time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.proc, s.master = proc, master
	if master != nil && s.tty != nil {
		pty.Setsize(master, &pty.Winsize{Cols: s.tty.Cols, Rows: s.tty.Rows})
	}
	s.log.Debug("process started", "pid", proc.PID, "tty", master != nil, "after", time.Since(begin).Round(time.Microsecond))
}

// sendExit reports how the process ended: exit-signal when a signal
// killed it, so the client can tell, else exit-status.
func (s *Session) sendExit(st agent.ExitStatus) {
	if st.Signal != "" {
		s.ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
			Signal     string
			CoreDumped bool
			Message    string
			Lang       string
		}{st.Signal, st.CoreDumped, "", ""}))
		return
	}
	s.ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(st.Code)}))
}

// fail tells the user in one sentence what went wrong, logs the detail,
// and ends the session with status 255. A session the client already hung
// up on is only logged.
func (s *Session) fail(ctx context.Context, step string, err error) {
	if ctx.Err() != nil {
		s.log.Info("session hung up", audit.Event("session-end"), "step", step, "err", err)
		return
	}
	msg := "berth could not start your session"
	var f *containers.Failure
	if errors.As(err, &f) {
		msg = f.Msg
	} else if agent.IsVersionMismatch(err) {
		msg = "your container runs an older berth agent; restart the container to update it"
	}
	s.log.Error("session failed", audit.Event("session-end"), "step", step, "err", err)
	fmt.Fprintf(s.progress(), "berth: %s.\n", msg)
	s.sendExit(agent.ExitStatus{Code: ExitGatewayFailure})
}

// progress returns a writer for berth's own messages to the user, on
// stderr. On a terminal, whose client is in raw mode, lines end in CRLF.
func (s *Session) progress() io.Writer {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tty != nil {
		return crlfWriter{s.ch.Stderr()}
	}
	return s.ch.Stderr()
}

// waitProgress is progress while the user waits for a build, a clone or
// a start: on a terminal, one status line plus berth's own step lines;
// otherwise plain lines. Call done before the program starts.
func (s *Session) waitProgress() (w io.Writer, done func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tty == nil {
		return s.ch.Stderr(), func() {}
	}
	p := &statusLine{w: s.ch.Stderr(), cols: int(s.tty.Cols)}
	return p, p.Done
}

type crlfWriter struct{ w io.Writer }

func (c crlfWriter) Write(p []byte) (int, error) {
	if _, err := c.w.Write([]byte(strings.ReplaceAll(string(p), "\n", "\r\n"))); err != nil {
		return 0, err
	}
	return len(p), nil
}

func closeAll(files ...*os.File) {
	for _, f := range files {
		if f != nil {
			f.Close()
		}
	}
}
