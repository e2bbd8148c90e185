// Package agent is berth's in-container helper and the gateway's client for
// it.
//
// Every user container runs `berth-agent init` under Docker's init. The
// agent creates the user, then listens on a unix socket in a directory that
// is bind-mounted from the host (<state_dir>/run/<container>/agent.sock),
// readable by root only. For each session berth dials the socket and asks
// for a process; the agent starts it as the user and reports its exit.
//
// The agent is never in the data path. Berth passes the process's stdin,
// stdout and stderr pipes to the agent as file descriptors (SCM_RIGHTS), or
// the agent passes back the master side of a PTY it opened inside the
// container, so bytes flow between the SSH channel and the process through
// the kernel only, as they do under OpenSSH's sshd.
//
// Gateway side:
//
//	c, err := agent.Connect(ctx, socketPath)
//	p, err := agent.Start(c, agent.Spawn{Command: "make"}, stdinR, stdoutW, stderrW)
//	status := p.Wait()
package agent

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
)

// Version is the wire protocol's version. Berth refuses an agent that
// speaks another, so a container started by an older berth is restarted
// rather than misunderstood.
const Version = 1

// request is the first message of every connection, from berth.
type request struct {
	Version  int       `json:"version"`
	Spawn    *Spawn    `json:"spawn,omitempty"`
	Packages *Packages `json:"packages,omitempty"`
}

// Spawn asks for a process as the container's user. Without TTY the
// request carries three descriptors: stdin, stdout and stderr.
type Spawn struct {
	// Command runs through the user's shell with -c; empty means a login
	// shell.
	Command string `json:"command,omitempty"`
	// Helper, when set, runs berth-agent itself with these arguments (see
	// helpers.go) instead of the shell.
	Helper []string `json:"helper,omitempty"`
	// Env is added to the container's environment: TERM, LANG, SSH_*.
	Env []string `json:"env,omitempty"`
	// TTY, when set, asks the agent to open a PTY for the process.
	TTY *TTY `json:"tty,omitempty"`
}

// TTY describes the terminal the client asked for.
type TTY struct {
	Term string `json:"term"`
	Cols uint16 `json:"cols"`
	Rows uint16 `json:"rows"`
	// Modes are RFC 4254 §8 terminal modes, opcode to value.
	Modes map[uint8]uint32 `json:"modes,omitempty"`
}

// reply answers a request. With a TTY it carries the PTY's master side.
type reply struct {
	Version int    `json:"version"`
	Error   string `json:"error,omitempty"`
	PID     int    `json:"pid,omitempty"`
}

// control is what berth sends while a process runs.
type control struct {
	// Signal is an SSH signal name without "SIG", e.g. "INT".
	Signal string `json:"signal,omitempty"`
}

// ExitStatus is how a process ended: with a code, or killed by a signal.
type ExitStatus struct {
	Code int `json:"code"`
	// Signal is the SSH name of the signal that killed it, e.g. "KILL".
	Signal     string `json:"signal,omitempty"`
	CoreDumped bool   `json:"core_dumped,omitempty"`
}

func (s ExitStatus) String() string {
	if s.Signal != "" {
		return "killed by SIG" + s.Signal
	}
	return fmt.Sprintf("exit %d", s.Code)
}

// maxMessage bounds a message, so a confused peer cannot make us allocate.
const maxMessage = 1 << 20

// writeMessage sends v as a length-prefixed JSON message, with files
// attached as SCM_RIGHTS. It does not close the files.
func writeMessage(c *net.UnixConn, v any, files ...*os.File) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	msg := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(body)), uint32(len(body)))
	msg = append(msg, body...)
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = syscall.UnixRights(fds...)
	}
	n, _, err := c.WriteMsgUnix(msg, oob, nil)
	if err != nil {
		return err
	}
	if n < len(msg) {
		_, err = c.Write(msg[n:])
	}
	return err
}

// readMessage reads one message into v and returns the files that came
// with it. The caller owns and must close the files. With pollable set the
// files are made non-blocking, so they take deadlines; a descriptor that a
// child process will inherit must stay blocking.
func readMessage(c *net.UnixConn, v any, pollable bool) ([]*os.File, error) {
	head := make([]byte, 4)
	oob := make([]byte, syscall.CmsgSpace(4*8))
	n, oobn, _, _, err := c.ReadMsgUnix(head, oob)
	if err != nil {
		return nil, err
	}
	files, ferr := parseRights(oob[:oobn], pollable)
	if ferr != nil {
		return nil, ferr
	}
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	if n == 0 {
		closeAll()
		return nil, io.EOF
	}
	if _, err := io.ReadFull(c, head[n:]); err != nil {
		closeAll()
		return nil, err
	}
	size := binary.BigEndian.Uint32(head)
	if size > maxMessage {
		closeAll()
		return nil, fmt.Errorf("agent message of %d bytes is too large", size)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(c, body); err != nil {
		closeAll()
		return nil, err
	}
	if err := json.Unmarshal(body, v); err != nil {
		closeAll()
		return nil, fmt.Errorf("decode agent message: %w", err)
	}
	return files, nil
}

func parseRights(oob []byte, pollable bool) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := syscall.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			syscall.CloseOnExec(fd)
			if pollable {
				syscall.SetNonblock(fd, true)
			}
			files = append(files, os.NewFile(uintptr(fd), "passed"))
		}
	}
	return files, nil
}

// errVersion is returned when the two sides speak different protocols.
var errVersion = errors.New("agent protocol version mismatch")
