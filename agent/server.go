package agent

import (
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// Account is the user the container belongs to.
type Account struct {
	Name string
	UID  int
	GID  int
	Sudo bool
}

// Home is the account's home directory inside the container.
func (a Account) Home() string { return "/home/" + a.Name }

// Server runs in the container and starts processes as its account.
type Server struct {
	Account Account
	// Shell is the account's login shell.
	Shell string
	// Env is the container's environment, passed on to every process.
	Env []string
	Log *log.Logger

	// children counts the processes started and not yet reaped.
	children sync.WaitGroup
	packages installer
}

// Serve accepts berth's connections on l until it is closed.
func (s *Server) Serve(l *net.UnixListener) error {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go s.handle(c)
	}
}

func (s *Server) handle(c *net.UnixConn) {
	defer c.Close()
	if !fromRoot(c) {
		s.Log.Printf("refused a connection from a non-root peer")
		return
	}
	var req request
	files, err := readMessage(c, &req, false)
	if err != nil {
		return
	}
	defer closeFiles(files)
	fail := func(err error) {
		writeMessage(c, reply{Version: Version, Error: err.Error()})
	}
	switch {
	case req.Version != Version:
		fail(fmt.Errorf("%w: agent speaks %d, berth %d", errVersion, Version, req.Version))
	case req.Spawn != nil:
		s.spawn(c, req.Spawn, files, fail)
	case req.Packages != nil:
		if err := s.install(*req.Packages); err != nil {
			fail(err)
			return
		}
		writeMessage(c, reply{Version: Version})
	default:
		fail(errors.New("unknown request"))
	}
}

// fromRoot reports whether the peer is root. The socket's directory is
// already root-only; this is the second lock on the same door.
func fromRoot(c *net.UnixConn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var cred *unix.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	return err == nil && cred.Uid == 0
}

func (s *Server) spawn(c *net.UnixConn, sp *Spawn, files []*os.File, fail func(error)) {
	cmd := s.command(sp)
	var master *os.File
	if sp.TTY != nil {
		m, tty, err := openTTY(sp.TTY)
		if err != nil {
			fail(fmt.Errorf("open a terminal: %w", err))
			return
		}
		defer m.Close()
		defer tty.Close()
		master = m
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0
	} else {
		if len(files) != 3 {
			fail(errors.New("spawn without a tty needs three descriptors"))
			return
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = files[0], files[1], files[2]
	}

	if err := cmd.Start(); err != nil {
		fail(fmt.Errorf("start %s: %w", cmd.Path, err))
		return
	}
	s.children.Add(1)
	pid := cmd.Process.Pid
	// The child has its own copies now. Ours must go before the reply, so
	// that the child's end of the terminal or pipes is the last one open
	// and berth sees EOF or EIO as soon as the child is gone.
	closeFiles(files)
	var pass []*os.File
	if master != nil {
		pass = []*os.File{master}
	}
	if err := writeMessage(c, reply{Version: Version, PID: pid}, pass...); err != nil {
		syscall.Kill(-pid, syscall.SIGHUP)
	}
	if master != nil {
		master.Close()
	}

	exited := make(chan ExitStatus, 1)
	go func() {
		defer s.children.Done()
		cmd.Wait()
		exited <- exitStatus(cmd.ProcessState)
	}()
	// The reader ends when c closes, which the deferred Close in handle
	// does on every return path.
	done := make(chan struct{})
	defer close(done)
	controls := make(chan control)
	go func() {
		defer close(controls)
		for {
			var m control
			if _, err := readMessage(c, &m, false); err != nil {
				return
			}
			select {
			case controls <- m:
			case <-done:
				return
			}
		}
	}()
	for {
		select {
		case st := <-exited:
			writeMessage(c, st)
			return
		case m, ok := <-controls:
			if !ok {
				// Berth hung up while the process runs: the connection
				// dropped. Hang up the session as a terminal would; nohup
				// and setsid jobs survive, as under sshd.
				syscall.Kill(-pid, syscall.SIGHUP)
				controls = nil
				c.Close()
				<-exited
				return
			}
			if sig := unix.SignalNum("SIG" + m.Signal); sig != 0 {
				syscall.Kill(pid, sig)
			}
		}
	}
}

// command builds the account's process for a spawn request, as sshd does:
// the shell with -c for a command, a login shell otherwise.
func (s *Server) command(sp *Spawn) *exec.Cmd {
	shell := s.Shell
	var cmd *exec.Cmd
	if len(sp.Helper) > 0 {
		cmd = &exec.Cmd{Path: BinaryPath, Args: append([]string{"berth-agent"}, sp.Helper...)}
	} else if sp.Command == "" {
		cmd = &exec.Cmd{Path: shell, Args: []string{"-" + filepath.Base(shell)}}
	} else {
		cmd = &exec.Cmd{Path: shell, Args: []string{filepath.Base(shell), "-c", sp.Command}}
	}
	// A shell starts in ~/projects, where the work is. A command runs in
	// the home directory, as under sshd, so that the relative paths scp,
	// rsync and scripts use mean what they mean everywhere else.
	home := s.Account.Home()
	cmd.Dir = home
	if sp.Command == "" && len(sp.Helper) == 0 {
		if st, err := os.Stat(filepath.Join(home, "projects")); err == nil && st.IsDir() {
			cmd.Dir = filepath.Join(home, "projects")
		}
	}
	cmd.Env = mergeEnv(s.Env,
		"HOME="+home,
		"USER="+s.Account.Name,
		"LOGNAME="+s.Account.Name,
		"SHELL="+shell,
	)
	cmd.Env = mergeEnv(cmd.Env, venvEnv(cmd.Env, home)...)
	cmd.Env = mergeEnv(cmd.Env, sp.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid: true,
		Credential: &syscall.Credential{
			Uid:    uint32(s.Account.UID),
			Gid:    uint32(s.Account.GID),
			Groups: supplementaryGroups(s.Account.Name, s.Account.GID),
		},
	}
	return cmd
}

// mergeEnv returns base with each of add set, replacing earlier values.
func mergeEnv(base []string, add ...string) []string {
	out := make([]string, 0, len(base)+len(add))
	idx := map[string]int{}
	for _, kv := range append(append([]string{}, base...), add...) {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			continue
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	return out
}

func openTTY(t *TTY) (master, tty *os.File, err error) {
	master, tty, err = pty.Open()
	if err != nil {
		return nil, nil, err
	}
	if t.Cols > 0 && t.Rows > 0 {
		pty.Setsize(master, &pty.Winsize{Cols: t.Cols, Rows: t.Rows})
	}
	if err := applyModes(tty, t.Modes); err != nil {
		master.Close()
		tty.Close()
		return nil, nil, err
	}
	return master, tty, nil
}

func exitStatus(ps *os.ProcessState) ExitStatus {
	ws, ok := ps.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		name := strings.TrimPrefix(unix.SignalName(ws.Signal()), "SIG")
		return ExitStatus{Code: 128 + int(ws.Signal()), Signal: name, CoreDumped: ws.CoreDump()}
	}
	return ExitStatus{Code: ps.ExitCode()}
}

// Shutdown sends every process in the container SIGTERM and waits up to
// grace for the ones the agent started to end.
func (s *Server) Shutdown(grace time.Duration) {
	syscall.Kill(-1, syscall.SIGTERM)
	reaped := make(chan struct{})
	go func() {
		s.children.Wait()
		close(reaped)
	}()
	select {
	case <-reaped:
	case <-time.After(grace):
	}
}
