package agent

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/pkg/sftp"
)

// Helpers are berth-agent subcommands that berth starts as the user, like
// any process of theirs (Spawn.Helper), so that whatever a helper reaches
// the user's own shell could reach too:
//
//	berth-agent sftp               an SFTP server on stdin and stdout
//	berth-agent dial NET ADDR      connect, and pass the socket back
//	berth-agent listen NET ADDR    listen, pass the listener back, and
//	                               remove a unix socket when berth lets go
//
// dial and listen talk to berth over stdin, a unix socket, and pass the
// descriptor with SCM_RIGHTS: berth then moves the bytes itself.

// helperReply is a dial or listen helper's answer.
type helperReply struct {
	Error string `json:"error,omitempty"`
	// Addr is where a listener listens: the port a ":0" request got, or
	// the path of a socket the helper chose.
	Addr string `json:"addr,omitempty"`
}

// AgentSocket is the network name for "listen" that asks the helper for a
// fresh, private unix socket for SSH agent forwarding, as sshd makes one
// under /tmp for each session.
const AgentSocket = "unix-agent"

func runHelper(name string, args []string) int {
	switch name {
	case "sftp":
		return serveSFTP()
	case "dial", "listen":
		if len(args) != 2 {
			fmt.Fprintf(os.Stderr, "usage: berth-agent %s NETWORK ADDRESS\n", name)
			return 2
		}
		c, err := stdinConn()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer c.Close()
		if name == "dial" {
			return helperDial(c, args[0], args[1])
		}
		return helperListen(c, args[0], args[1])
	}
	return 2
}

// serveSFTP serves SFTP on stdin and stdout, from the user's home.
func serveSFTP() int {
	home, _ := os.UserHomeDir()
	rw := struct {
		io.Reader
		io.WriteCloser
	}{os.Stdin, os.Stdout}
	srv, err := sftp.NewServer(rw, sftp.WithServerWorkingDirectory(home))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := srv.Serve(); err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// stdinConn is the helper's line to berth.
func stdinConn() (*net.UnixConn, error) {
	c, err := net.FileConn(os.Stdin)
	if err != nil {
		return nil, fmt.Errorf("stdin is not berth's socket: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, errors.New("stdin is not a unix socket")
	}
	return uc, nil
}

func helperDial(c *net.UnixConn, network, addr string) int {
	conn, err := net.Dial(network, addr)
	if err != nil {
		writeMessage(c, helperReply{Error: err.Error()})
		return 1
	}
	defer conn.Close()
	f, err := conn.(interface{ File() (*os.File, error) }).File()
	if err != nil {
		writeMessage(c, helperReply{Error: err.Error()})
		return 1
	}
	defer f.Close()
	if err := writeMessage(c, helperReply{Addr: conn.RemoteAddr().String()}, f); err != nil {
		return 1
	}
	return 0
}

func helperListen(c *net.UnixConn, network, addr string) int {
	var dir string
	if network == AgentSocket {
		d, err := os.MkdirTemp("/tmp", "ssh-berth-")
		if err != nil {
			writeMessage(c, helperReply{Error: err.Error()})
			return 1
		}
		dir = d
		network, addr = "unix", filepath.Join(dir, "agent.sock")
	}
	if network == "unix" {
		// Only the user (and root) may connect, whatever the umask.
		syscall.Umask(0o077)
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		writeMessage(c, helperReply{Error: err.Error()})
		removeSocket(dir, "")
		return 1
	}
	if ul, ok := l.(*net.UnixListener); ok {
		// berth removes nothing: the socket file goes when this helper does.
		ul.SetUnlinkOnClose(false)
	}
	f, err := l.(interface{ File() (*os.File, error) }).File()
	l.Close()
	if err != nil {
		writeMessage(c, helperReply{Error: err.Error()})
		removeSocket(dir, addr)
		return 1
	}
	err = writeMessage(c, helperReply{Addr: listenAddr(network, addr, f)}, f)
	f.Close()
	if err == nil {
		// Hold on until berth closes its end: the forward is over.
		io.Copy(io.Discard, c)
	}
	if network == "unix" {
		removeSocket(dir, addr)
	}
	return 0
}

// listenAddr is the address a listener got, with the port the kernel
// chose for a ":0" request.
func listenAddr(network, addr string, f *os.File) string {
	if network == "unix" {
		return addr
	}
	sa, err := syscall.Getsockname(int(f.Fd()))
	if err != nil {
		return addr
	}
	host, _, _ := net.SplitHostPort(addr)
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		return net.JoinHostPort(host, fmt.Sprint(sa.Port))
	case *syscall.SockaddrInet6:
		return net.JoinHostPort(host, fmt.Sprint(sa.Port))
	}
	return addr
}

func removeSocket(dir, path string) {
	if path != "" && !strings.HasPrefix(path, "@") {
		os.Remove(path)
	}
	if dir != "" {
		os.Remove(dir)
	}
}
