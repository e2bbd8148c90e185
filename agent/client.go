package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
)

// Process is a process the agent started. Wait for its end, or Close to
// hang it up early.
type Process struct {
	// PID is the process's id inside the container.
	PID int
	// PTY is the master side of the process's terminal when one was asked
	// for; the caller reads, writes, resizes and closes it.
	PTY *os.File

	conn *net.UnixConn
	done chan struct{}
	exit ExitStatus
	err  error

	closeOnce sync.Once
}

// Connect connects to the agent socket at path. It fails fast when no
// agent is listening, so callers can tell a stopped container from a slow
// one.
func Connect(ctx context.Context, path string) (*net.UnixConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	return c.(*net.UnixConn), nil
}

// Start asks the agent on conn to start a process. Without a TTY, stdio
// must hold the child's ends of its stdin, stdout and stderr; Spawn passes
// them and the caller closes its copies afterwards. Spawn takes over conn:
// the returned Process closes it.
func Start(conn *net.UnixConn, s Spawn, stdio ...*os.File) (*Process, error) {
	if s.TTY == nil && len(stdio) != 3 {
		return nil, errors.New("spawn without a tty needs stdin, stdout and stderr")
	}
	if err := writeMessage(conn, request{Version: Version, Spawn: &s}, stdio...); err != nil {
		conn.Close()
		return nil, fmt.Errorf("send spawn: %w", err)
	}
	var r reply
	files, err := readMessage(conn, &r, true)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read spawn reply: %w", err)
	}
	if r.Version != Version {
		closeFiles(files)
		conn.Close()
		return nil, fmt.Errorf("%w: agent speaks %d, berth %d", errVersion, r.Version, Version)
	}
	if r.Error != "" {
		closeFiles(files)
		conn.Close()
		return nil, errors.New(r.Error)
	}
	p := &Process{PID: r.PID, conn: conn, done: make(chan struct{})}
	if s.TTY != nil {
		if len(files) != 1 {
			closeFiles(files)
			conn.Close()
			return nil, errors.New("agent sent no terminal")
		}
		p.PTY = files[0]
	} else {
		closeFiles(files)
	}
	go p.readExit()
	return p, nil
}

// IsVersionMismatch reports whether err means the agent is of another
// berth version.
func IsVersionMismatch(err error) bool { return errors.Is(err, errVersion) }

func (p *Process) readExit() {
	defer close(p.done)
	var status ExitStatus
	if _, err := readMessage(p.conn, &status, false); err != nil {
		p.err = fmt.Errorf("agent connection lost: %w", err)
		return
	}
	p.exit = status
}

// Signal delivers an SSH-named signal ("INT", "TERM", ...) to the process.
func (p *Process) Signal(name string) error {
	return writeMessage(p.conn, control{Signal: name})
}

// Done is closed when the process has ended or the agent is gone.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait returns how the process ended, once it has.
func (p *Process) Wait() (ExitStatus, error) {
	<-p.done
	return p.exit, p.err
}

// Close lets go of the process. If it is still running, the agent sends
// its process group SIGHUP, as a terminal hangup would. Close does not
// close PTY.
func (p *Process) Close() error {
	p.closeOnce.Do(func() { p.conn.Close() })
	return nil
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// DialInside connects to addr from inside the container, as its user, and
// returns the connection. It uses up conn, a fresh agent connection.
func DialInside(conn *net.UnixConn, network, addr string) (net.Conn, error) {
	line, proc, f, _, err := runNetHelper(conn, "dial", network, addr)
	if err != nil {
		return nil, err
	}
	line.Close()
	proc.Close()
	defer f.Close()
	return net.FileConn(f)
}

// Listener is a socket listening inside the container, accepted from by
// berth. Close stops it; a unix socket's file is then removed.
type Listener struct {
	net.Listener
	// Address is where it listens, with the port the kernel chose for a
	// ":0" request, or the path of the socket.
	Address string

	line *os.File // the helper holds on until this closes
	proc *Process
}

// ListenInside listens on addr inside the container, as its user. network
// is "tcp", "unix", or AgentSocket for a fresh private socket. It uses up
// conn, a fresh agent connection.
func ListenInside(conn *net.UnixConn, network, addr string) (*Listener, error) {
	line, proc, f, reply, err := runNetHelper(conn, "listen", network, addr)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		line.Close()
		proc.Close()
		return nil, err
	}
	return &Listener{Listener: l, Address: reply.Addr, line: line, proc: proc}, nil
}

// Close stops listening and lets the helper clean up.
func (l *Listener) Close() error {
	err := l.Listener.Close()
	l.line.Close()
	l.proc.Close()
	return err
}

// runNetHelper starts a dial or listen helper and returns its line, its
// process, and the descriptor it passed back with its reply.
func runNetHelper(conn *net.UnixConn, verb, network, addr string) (line *os.File, proc *Process, f *os.File, r helperReply, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		conn.Close()
		return nil, nil, nil, r, err
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "helper"), os.NewFile(uintptr(fds[1]), "helper")
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		conn.Close()
		ours.Close()
		theirs.Close()
		return nil, nil, nil, r, err
	}
	proc, err = Start(conn, Spawn{Helper: []string{verb, network, addr}}, theirs, devnull, devnull)
	theirs.Close()
	devnull.Close()
	if err != nil {
		ours.Close()
		return nil, nil, nil, r, err
	}
	fail := func(err error) (*os.File, *Process, *os.File, helperReply, error) {
		ours.Close()
		proc.Close()
		return nil, nil, nil, r, err
	}
	c, err := net.FileConn(ours)
	if err != nil {
		return fail(err)
	}
	defer c.Close() // a dup: ours stays open
	files, err := readMessage(c.(*net.UnixConn), &r, false)
	if err != nil {
		return fail(fmt.Errorf("%s helper: %w", verb, err))
	}
	if r.Error != "" || len(files) != 1 {
		closeFiles(files)
		if r.Error == "" {
			r.Error = "no descriptor passed"
		}
		return fail(errors.New(r.Error))
	}
	return ours, proc, files[0], r, nil
}

// Install asks the agent on conn to install Python packages into the
// user's ~/.venv. It returns once the install has started in the
// background, or when the same packages are installed already; the
// install's progress is in PackagesFile. It closes conn.
func Install(conn *net.UnixConn, p Packages) error {
	defer conn.Close()
	if err := writeMessage(conn, request{Version: Version, Packages: &p}); err != nil {
		return fmt.Errorf("send install: %w", err)
	}
	var r reply
	if _, err := readMessage(conn, &r, false); err != nil {
		return fmt.Errorf("read install reply: %w", err)
	}
	if r.Error != "" {
		return fmt.Errorf("agent: %s", r.Error)
	}
	return nil
}
