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
	"github.com/berth-ssh/berth/gpus"
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

// checkPeer compares the container of the socket's peer process, from its
// cgroup, with name's container ID.
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
	want, err := m.containerID(ctx, name)
	if err != nil {
		return err
	}
	if got := gpus.ContainerOfPID("/proc", uint32(cred.Pid)); got != want {
		m.log.Error("agent socket answered by another container's agent", "container", name, "pid", cred.Pid, "peer_container", got)
		return &Failure{Msg: "berth refused your container's agent socket, which leads out of your container; `restart` makes a new one", Err: fmt.Errorf("%w: %s, pid %d in %q", errForeignAgent, name, cred.Pid, got)}
	}
	return nil
}

// containerID is name's container ID, kept until its ready state next
// changes.
func (m *Manager) containerID(ctx context.Context, name string) (string, error) {
	m.mu.Lock()
	id, ok := m.ids[name]
	m.mu.Unlock()
	if ok {
		return id, nil
	}
	c, err := m.docker.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
	if err != nil {
		return "", m.dockerFailure(ctx, "berth could not look up your container", err)
	}
	m.mu.Lock()
	m.ids[name] = c.Container.ID
	m.mu.Unlock()
	return c.Container.ID, nil
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
