package containers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"

	"github.com/moby/moby/client"
	"golang.org/x/sys/unix"

	"github.com/berth-ssh/berth/agent"
)

// A container's run directory (<state_dir>/run/<name>, its /.berth/run)
// holds its agent's socket and the files the agent writes. It is mounted
// read-write, so root inside the container can put anything there,
// symlinks included. berth, root on the host, therefore never follows a
// name in it: files are opened without following symlinks and read to a
// bound, and whatever answers on the socket must be that container's own
// agent.

// connect dials the agent of container name and checks that the process
// that answered runs in that container, not in another one a planted
// symlink points to.
func (m *Manager) connect(ctx context.Context, name string) (*net.UnixConn, error) {
	c, err := agent.Connect(ctx, m.socketPath(name))
	if err != nil {
		return nil, err
	}
	if err := m.checkPeer(ctx, c, name); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// errForeignAgent is the agent socket of one container answered by another.
var errForeignAgent = errors.New("the agent socket is answered from outside its container")

// checkPeer checks that the socket's peer process is in the PID namespace
// of name's container (that of its init process). Namespaces, unlike cgroup
// paths, look the same whatever the cgroup driver or parent.
func (m *Manager) checkPeer(ctx context.Context, c *net.UnixConn, name string) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if cerr != nil {
		return fmt.Errorf("agent peer credentials: %w", cerr)
	}
	if cred.Pid == 0 {
		return &Failure{Msg: "berth cannot see the processes of containers; run it in the host's PID namespace",
			Err: errors.New("SO_PEERCRED pid 0: the agent's pid is outside berth's PID namespace")}
	}
	got := pidNamespace(int(cred.Pid))
	for again := false; ; again = true {
		want, err := m.containerNamespace(ctx, name, again)
		if err != nil {
			return err
		}
		if got != "" && got == want {
			return nil
		}
		if again {
			break
		}
		// The container may have restarted outside berth: look again.
	}
	m.log.Error("agent socket answered from outside its container", "container", name, "pid", cred.Pid, "pid_ns", got)
	return &Failure{Msg: "berth refused your container's agent socket, which leads out of your container; `restart` makes a new one",
		Err: fmt.Errorf("%w: %s, pid %d in %s", errForeignAgent, name, cred.Pid, got)}
}

// pidNamespace names the PID namespace of a host process, or "".
func pidNamespace(pid int) string {
	ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	return ns
}

// containerNamespace is the PID namespace of name's container, kept until
// its agent stops answering or a new container of that name is made;
// again looks it up anew.
func (m *Manager) containerNamespace(ctx context.Context, name string, again bool) (string, error) {
	m.mu.Lock()
	ns := m.remember(name).pidNS
	m.mu.Unlock()
	if ns != "" && !again {
		return ns, nil
	}
	c, err := m.docker.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
	if err != nil {
		return "", m.dockerFailure(ctx, "berth could not look up your container", err)
	}
	if c.Container.State == nil || c.Container.State.Pid == 0 {
		return "", &Failure{Msg: "your container is not running", Err: fmt.Errorf("%s has no process", name)}
	}
	ns = pidNamespace(c.Container.State.Pid)
	m.mu.Lock()
	m.remember(name).pidNS = ns
	m.mu.Unlock()
	return ns, nil
}

// readRunFile reads a file the agent wrote in name's run directory, at
// most max bytes, refusing a symlink or anything but a regular file.
func (m *Manager) readRunFile(name, file string, max int64) ([]byte, error) {
	fd, err := unix.Open(filepath.Join(m.runDir(name), file), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: file, Err: err}
	}
	f := os.NewFile(uintptr(fd), file)
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s in %s is not a regular file", file, name)
	}
	if st.Size() > max {
		f.Seek(st.Size()-max, io.SeekStart) // keep the end, where the news is
	}
	return io.ReadAll(io.LimitReader(f, max))
}
