// Package tunnels carries SSH forwarding into the user's container: local
// forwards (direct-tcpip for ssh -L and -D, direct-streamlocal for -L to a
// unix socket), remote forwards (tcpip-forward and streamlocal-forward for
// ssh -R) and agent forwarding (ssh -A).
//
// Every socket is dialled or listened on inside the user's container, as
// the user, by a helper berth's agent starts (see agent.DialInside and
// agent.ListenInside), never in the gateway's own network namespace: a
// forward reaches exactly what the user's shell in that container could.
// The helper passes the socket back, so berth moves the bytes itself.
//
//	go tunnels.Direct(ctx, newChannel, opener, met, log) // a -L or -D channel
//	r := tunnels.NewRemote(sshConn, opener, met, log)    // per connection
//	r.Handle(ctx, globalRequest)                     // -R requests
//	defer r.Close()
package tunnels

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"

	"golang.org/x/crypto/ssh"

	"github.com/berth-ssh/berth/agent"
	"github.com/berth-ssh/berth/audit"
	"github.com/berth-ssh/berth/metrics"
)

// Opener connects to the agent in the user's container, making the
// container ready first.
type Opener interface {
	Open(ctx context.Context, progress io.Writer) (*net.UnixConn, error)
}

// Channel types and global requests of RFC 4254 §7 and OpenSSH's
// PROTOCOL file.
const (
	DirectTCPIP        = "direct-tcpip"
	DirectStreamlocal  = "direct-streamlocal@openssh.com"
	forwardedTCPIP     = "forwarded-tcpip"
	forwardedUnix      = "forwarded-streamlocal@openssh.com"
	agentChannel       = "auth-agent@openssh.com"
	TCPIPForward       = "tcpip-forward"
	CancelTCPIPForward = "cancel-tcpip-forward"
	UnixForward        = "streamlocal-forward@openssh.com"
	CancelUnixForward  = "cancel-streamlocal-forward@openssh.com"
)

// Direct serves a direct-tcpip or direct-streamlocal channel: it dials the
// destination inside the container and bridges the two until both sides
// are done. A destination that cannot be reached rejects the channel with
// the reason, as sshd does. met may be nil.
func Direct(ctx context.Context, nch ssh.NewChannel, o Opener, met *metrics.Metrics, log *slog.Logger) {
	network, addr, err := Destination(nch)
	if err != nil {
		nch.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	log = log.With("forward", nch.ChannelType(), "to", addr)
	conn, err := o.Open(ctx, io.Discard)
	if err != nil {
		log.Info("forward refused: container not ready", "err", err)
		nch.Reject(ssh.ConnectionFailed, "your container is not ready")
		return
	}
	c, err := agent.DialInside(conn, network, addr)
	if err != nil {
		log.Info("forward failed", "err", err)
		nch.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	ch, reqs, err := nch.Accept()
	if err != nil {
		c.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	log.Debug("forward open", audit.Event("forward"))
	bridge(ctx, ch, c, met.Forward(nch.ChannelType()))
}

// Destination reads where a direct channel wants to go.
func Destination(nch ssh.NewChannel) (network, addr string, err error) {
	switch nch.ChannelType() {
	case DirectTCPIP:
		var p struct {
			Host       string
			Port       uint32
			OriginHost string
			OriginPort uint32
		}
		if err := ssh.Unmarshal(nch.ExtraData(), &p); err != nil || p.Port > 65535 {
			return "", "", fmt.Errorf("malformed %s request", DirectTCPIP)
		}
		return "tcp", net.JoinHostPort(p.Host, strconv.Itoa(int(p.Port))), nil
	case DirectStreamlocal:
		var p struct {
			Path      string
			Reserved0 string
			Reserved1 uint32
		}
		if err := ssh.Unmarshal(nch.ExtraData(), &p); err != nil || p.Path == "" {
			return "", "", fmt.Errorf("malformed %s request", DirectStreamlocal)
		}
		return "unix", p.Path, nil
	}
	return "", "", fmt.Errorf("not a direct channel: %s", nch.ChannelType())
}

// bridge copies between an SSH channel and a socket until both directions
// end. EOF in one direction is passed on as a half-close and does not cut
// the other. Cancelling ctx ends both. meter counts the bytes.
func bridge(ctx context.Context, ch ssh.Channel, c net.Conn, meter metrics.Meter) {
	stop := context.AfterFunc(ctx, func() {
		ch.Close()
		c.Close()
	})
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() {
		Copy(meter.In(c), ch)
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	})
	wg.Go(func() {
		Copy(meter.Out(ch), c)
		ch.CloseWrite()
	})
	wg.Wait()
	ch.Close()
	c.Close()
}

// copyBuffer is the size of berth's copies between SSH channels and
// sockets or pipes. A channel read can return several 32 KiB packets'
// worth, and a socket read as much as the kernel holds; bigger buffers
// mean fewer system calls per byte (the forward benchmark went from 0.60
// to 0.72 of sshd with 256 KiB).
const copyBuffer = 256 << 10

// Copy copies with a copyBuffer-sized buffer. It hides the destination's
// ReadFrom, which would copy 32 KiB at a time.
func Copy(dst io.Writer, src io.Reader) (int64, error) {
	return io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, copyBuffer))
}
