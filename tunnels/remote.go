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

// Remote holds one connection's remote forwards (ssh -R): listeners
// inside the user's container whose connections come back to the client
// as forwarded channels. Close ends them all; the gateway does when the
// connection ends.
type Remote struct {
	conn ssh.Conn
	o    Opener
	met  *metrics.Metrics
	log  *slog.Logger

	mu        sync.Mutex
	listeners map[string]*agent.Listener // by the client's bind address
	closed    bool
}

// NewRemote returns the remote forwards of the connection conn. met may
// be nil.
func NewRemote(conn ssh.Conn, o Opener, met *metrics.Metrics, log *slog.Logger) *Remote {
	return &Remote{conn: conn, o: o, met: met, log: log, listeners: map[string]*agent.Listener{}}
}

// Handle answers a tcpip-forward, cancel-tcpip-forward,
// streamlocal-forward or cancel-streamlocal-forward request.
func (r *Remote) Handle(ctx context.Context, req *ssh.Request) {
	ok, reply := r.handle(ctx, req)
	if req.WantReply {
		req.Reply(ok, reply)
	}
}

func (r *Remote) handle(ctx context.Context, req *ssh.Request) (bool, []byte) {
	switch req.Type {
	case TCPIPForward, CancelTCPIPForward:
		var p struct {
			Addr string
			Port uint32
		}
		if ssh.Unmarshal(req.Payload, &p) != nil || p.Port > 65535 {
			return false, nil
		}
		key := net.JoinHostPort(p.Addr, strconv.Itoa(int(p.Port)))
		if req.Type == CancelTCPIPForward {
			return r.cancel(key), nil
		}
		l, ok := r.listen(ctx, key, "tcp", net.JoinHostPort(loopback(p.Addr), strconv.Itoa(int(p.Port))))
		if !ok {
			return false, nil
		}
		_, port, _ := net.SplitHostPort(l.Address)
		n, _ := strconv.Atoi(port)
		if p.Port == 0 {
			// The client learns which port it got, and later cancels by it.
			r.rekey(key, net.JoinHostPort(p.Addr, port))
		}
		go r.accept(ctx, l, func(c net.Conn) (string, []byte) {
			host, oport := splitAddr(c.RemoteAddr())
			return forwardedTCPIP, ssh.Marshal(struct {
				Addr       string
				Port       uint32
				OriginAddr string
				OriginPort uint32
			}{p.Addr, uint32(n), host, oport})
		})
		if p.Port == 0 {
			return true, ssh.Marshal(struct{ Port uint32 }{uint32(n)})
		}
		return true, nil
	case UnixForward, CancelUnixForward:
		var p struct{ Path string }
		if ssh.Unmarshal(req.Payload, &p) != nil || p.Path == "" {
			return false, nil
		}
		if req.Type == CancelUnixForward {
			return r.cancel("unix:" + p.Path), nil
		}
		l, ok := r.listen(ctx, "unix:"+p.Path, "unix", p.Path)
		if !ok {
			return false, nil
		}
		go r.accept(ctx, l, func(net.Conn) (string, []byte) {
			return forwardedUnix, ssh.Marshal(struct {
				Path     string
				Reserved string
			}{p.Path, ""})
		})
		return true, nil
	}
	return false, nil
}

// loopback is where a remote forward listens inside the container. Like
// sshd with its default GatewayPorts=no, that is the loopback interface,
// whatever address the client named.
func loopback(addr string) string {
	if addr == "::1" {
		return addr
	}
	return "127.0.0.1"
}

func (r *Remote) listen(ctx context.Context, key, network, addr string) (*agent.Listener, bool) {
	log := r.log.With("forward", "remote", "listen", addr)
	conn, err := r.o.Open(ctx, io.Discard)
	if err != nil {
		log.Info("remote forward refused: container not ready", "err", err)
		return nil, false
	}
	l, err := agent.ListenInside(conn, network, addr)
	if err != nil {
		log.Info("remote forward refused", "err", err)
		return nil, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.listeners[key] != nil {
		l.Close()
		return nil, false
	}
	r.listeners[key] = l
	log.Info("remote forward listening", audit.Event("forward"), "at", l.Address)
	return l, true
}

func (r *Remote) rekey(from, to string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if l, ok := r.listeners[from]; ok {
		delete(r.listeners, from)
		r.listeners[to] = l
	}
}

func (r *Remote) cancel(key string) bool {
	r.mu.Lock()
	l, ok := r.listeners[key]
	delete(r.listeners, key)
	r.mu.Unlock()
	if ok {
		l.Close()
	}
	return ok
}

// accept opens a forwarded channel to the client for every connection the
// listener takes, until the listener closes.
func (r *Remote) accept(ctx context.Context, l *agent.Listener, open func(net.Conn) (string, []byte)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			typ, data := open(c)
			ch, reqs, err := r.conn.OpenChannel(typ, data)
			if err != nil {
				r.log.Info("client refused a forwarded connection", "type", typ, "err", err)
				c.Close()
				return
			}
			go ssh.DiscardRequests(reqs)
			bridge(ctx, ch, c, r.met.Forward(typ))
		}()
	}
}

// Close stops every remote forward of the connection.
func (r *Remote) Close() {
	r.mu.Lock()
	r.closed = true
	ls := r.listeners
	r.listeners = map[string]*agent.Listener{}
	r.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
}

// Agent makes a private socket inside the container that reaches the
// client's SSH agent, for ssh -A, and returns its path for SSH_AUTH_SOCK.
// The socket lives until ctx ends. met may be nil.
func Agent(ctx context.Context, conn ssh.Conn, o Opener, met *metrics.Metrics, log *slog.Logger) (string, error) {
	c, err := o.Open(ctx, io.Discard)
	if err != nil {
		return "", err
	}
	l, err := agent.ListenInside(c, agent.AgentSocket, "")
	if err != nil {
		return "", fmt.Errorf("agent socket: %w", err)
	}
	context.AfterFunc(ctx, func() { l.Close() })
	log.Debug("agent forwarding", audit.Event("forward"), "at", l.Address)
	r := &Remote{conn: conn, met: met, log: log}
	go r.accept(ctx, l, func(net.Conn) (string, []byte) { return agentChannel, nil })
	return l.Address, nil
}

func splitAddr(a net.Addr) (string, uint32) {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String(), 0
	}
	n, _ := strconv.Atoi(port)
	return host, uint32(n)
}
