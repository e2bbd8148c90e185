// Package gateway is berth's SSH server: the listener, host keys,
// public-key authentication, and the routing of each connection's channels
// and requests into the user's container.
//
// Like net/http's Server, it serves listeners and shuts down gracefully:
//
//	gw, err := gateway.New(cfg, keys.New(cfg), manager, metrics.New(), logger)
//	go gw.Serve(listener)
//	...
//	gw.Shutdown(ctx) // stop accepting, let sessions drain until ctx ends
package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/berth-ssh/berth/audit"
	"github.com/berth-ssh/berth/config"
	"github.com/berth-ssh/berth/containers"
	"github.com/berth-ssh/berth/keys"
	"github.com/berth-ssh/berth/metrics"
	"github.com/berth-ssh/berth/sessions"
	"github.com/berth-ssh/berth/tunnels"
	"github.com/berth-ssh/berth/verbs"
)

// handshakeTimeout bounds a connection's time before it is authenticated.
const handshakeTimeout = 30 * time.Second

// Permission extensions. x/crypto/ssh (≥ v0.31) hands a connection the
// permissions returned for the key that actually signed, never those of a
// key that was only offered, so these are the only source of identity.
const (
	extUser     = "berth-user"
	extInstance = "berth-instance"
	extKey      = "berth-key-fp"
	extCA       = "berth-ca-fp"   // set for a certificate login
	extCertID   = "berth-cert-id" // the certificate's key ID
)

// optionsKey keys the signing key's keys.Options in Permissions.ExtraData.
type optionsKey struct{}

// Authorizer decides whether key may log in as user, or cert from source.
type Authorizer interface {
	Authorize(user string, key ssh.PublicKey) (keys.Entry, error)
	AuthorizeCert(user string, cert *ssh.Certificate, source net.Addr) (opts keys.Options, ca string, err error)
}

// Server is the SSH gateway.
type Server struct {
	cfg        *config.Config
	auth       Authorizer
	containers *containers.Manager
	verbs      *verbs.Handler
	registry   *sessions.Registry
	admission  *admission
	sessions   sessionCounts
	met        *metrics.Metrics
	log        *slog.Logger
	ssh        *ssh.ServerConfig

	// base is every connection's parent context; cancelling it hangs up
	// all sessions.
	base   context.Context
	hangup context.CancelCauseFunc

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	closing   bool
	active    sync.WaitGroup
}

// New loads (or makes) the host keys and returns a gateway. met may be
// nil.
func New(cfg *config.Config, auth Authorizer, m *containers.Manager, met *metrics.Metrics, log *slog.Logger) (*Server, error) {
	signers, err := loadHostKeys(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	registry := sessions.NewRegistry()
	s := &Server{
		cfg:        cfg,
		auth:       auth,
		containers: m,
		verbs:      verbs.New(cfg, m, registry, log),
		registry:   registry,
		admission:  newAdmission(cfg),
		met:        met,
		log:        log,
		listeners:  map[net.Listener]struct{}{},
		conns:      map[net.Conn]struct{}{},
	}
	s.base, s.hangup = context.WithCancelCause(context.Background())
	go m.StopIdle(s.base, registry)
	s.ssh = &ssh.ServerConfig{
		ServerVersion:     "SSH-2.0-berth",
		PublicKeyCallback: s.authorize,
		AuthLogCallback: func(meta ssh.ConnMetadata, method string, err error) {
			// OpenSSH's client starts with "none" to learn the methods.
			if method == "none" {
				return
			}
			s.met.Auth(method, err == nil)
			if err != nil {
				s.admission.refusedKey(meta.RemoteAddr())
			}
		},
	}
	for _, k := range signers {
		s.ssh.AddHostKey(k)
	}
	return s, nil
}

// authorize is called for every key the client offers, signed or not. Its
// answer is cached per key by x/crypto/ssh; nothing here may leave state
// behind that a later, different key could inherit.
func (s *Server) authorize(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	fp := ssh.FingerprintSHA256(key)
	name, instance, ok := config.SplitLogin(meta.User())
	// refuse logs why the key is refused, for the log and the audit trail.
	// The client learns nothing: unknown user and wrong key look the same.
	refuse := func(level slog.Level, msg string, args ...any) (*ssh.Permissions, error) {
		args = append([]any{audit.Event("auth"), "result", "failed", "user", name, "source", meta.RemoteAddr().String(), "key", fp}, args...)
		s.log.Log(context.Background(), level, msg, args...)
		return nil, keys.ErrDenied
	}
	if !ok {
		return refuse(slog.LevelInfo, "key refused: invalid login name")
	}
	if cert, ok := key.(*ssh.Certificate); ok {
		return s.authorizeCert(meta, name, instance, cert)
	}
	entry, err := s.auth.Authorize(name, key)
	if err != nil {
		return refuse(slog.LevelInfo, "key refused", "detail", err)
	}
	opts, err := keys.ParseOptions(entry.Options)
	if err != nil {
		return refuse(slog.LevelWarn, "key refused: its options", "from", entry.Source, "err", err)
	}
	if err := opts.Admit(meta.RemoteAddr(), time.Now()); err != nil {
		return refuse(slog.LevelInfo, "key refused: its options", "from", entry.Source, "err", err)
	}
	return &ssh.Permissions{
		Extensions: map[string]string{extUser: name, extInstance: instance, extKey: fp},
		ExtraData:  map[any]any{optionsKey{}: opts},
	}, nil
}

// authorizeCert is authorize for an OpenSSH user certificate: the
// certificate, not an authorized_keys line, says what its holder may do.
func (s *Server) authorizeCert(meta ssh.ConnMetadata, name, instance string, cert *ssh.Certificate) (*ssh.Permissions, error) {
	fp := ssh.FingerprintSHA256(cert.Key)
	opts, ca, err := s.auth.AuthorizeCert(name, cert, meta.RemoteAddr())
	if err != nil {
		s.log.Info("certificate refused", audit.Event("auth"), "result", "failed", "user", name, "source", meta.RemoteAddr().String(), "key", fp, "ca", ca,
			"cert_id", cert.KeyId, "serial", cert.Serial, "principals", cert.ValidPrincipals, "valid", keys.CertValidity(cert), "err", err)
		return nil, keys.ErrDenied
	}
	return &ssh.Permissions{
		// x/crypto/ssh checks source-address again from here.
		CriticalOptions: cert.CriticalOptions,
		Extensions: map[string]string{extUser: name, extInstance: instance, extKey: fp, extCA: ca,
			extCertID: cert.KeyId},
		ExtraData: map[any]any{optionsKey{}: opts},
	}, nil
}

// Serve accepts connections on l until l is closed or Shutdown is called.
func (s *Server) Serve(l net.Listener) error {
	if !s.track(l, true) {
		return errors.New("gateway: shut down")
	}
	defer s.track(l, false)
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.isClosing() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of file descriptors and the like: back off, keep serving.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Error("accept", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		ok, why := s.admission.admit(nc.RemoteAddr())
		s.met.Connection(ok)
		if !ok {
			s.log.Info("connection turned away", "source", nc.RemoteAddr().String(), "why", why)
			nc.Close()
			continue
		}
		if !s.trackConn(nc, true) {
			s.admission.done(nc.RemoteAddr(), false)
			nc.Close()
			continue
		}
		go func() {
			defer s.trackConn(nc, false)
			s.serveConn(nc)
		}()
	}
}

// serveConn runs one SSH connection: handshake and authentication, then
// its channels until it closes.
func (s *Server) serveConn(nc net.Conn) {
	defer nc.Close()
	id := newID()
	log := s.log.With("conn", id, "source", nc.RemoteAddr().String())
	// A bug here must cost one connection, not the gateway.
	defer func() {
		if p := recover(); p != nil {
			log.Error("panic serving connection", "panic", p, "stack", string(debug.Stack()))
		}
	}()

	log.Debug("connection", audit.Event("connect"), "local", nc.LocalAddr().String())
	accepted := time.Now()
	nc.SetDeadline(accepted.Add(handshakeTimeout))
	sconn, chans, reqs, err := ssh.NewServerConn(nc, s.ssh)
	s.admission.done(nc.RemoteAddr(), err == nil)
	if err != nil {
		// A port probe or health check that hangs up is not news.
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			log.Debug("handshake abandoned", "err", err)
		} else {
			log.Info("handshake failed", "err", err)
		}
		return
	}
	nc.SetDeadline(time.Time{})
	defer sconn.Close()
	s.met.Phase(metrics.PhaseAuth, time.Since(accepted))

	// Identity comes only from the permissions of the key that signed.
	ext := sconn.Permissions.Extensions
	user, ok := s.cfg.User(ext[extUser])
	ref := containers.Ref{User: user, Instance: ext[extInstance]}
	if !ok || ref.Login() != sconn.User() {
		log.Error("authenticated connection without a configured user", "user", ext[extUser], "login", sconn.User())
		return
	}
	opts, _ := sconn.Permissions.ExtraData[optionsKey{}].(keys.Options)
	log = log.With("user", ref.Login(), "container", ref.Name())
	if ca := ext[extCA]; ca != "" {
		log.Info("authenticated", audit.Event("auth"), "result", "ok", "key", ext[extKey], "ca", ca, "cert_id", ext[extCertID], "client", string(sconn.ClientVersion()))
	} else {
		log.Info("authenticated", audit.Event("auth"), "result", "ok", "key", ext[extKey], "client", string(sconn.ClientVersion()))
	}

	ctx, cancel := context.WithCancelCause(s.base)
	defer cancel(errors.New("connection closed"))
	opener := userOpener{m: s.containers, ref: ref}
	forwarding := s.cfg.ForwardingFor(user) && !opts.NoForwards
	remote := tunnels.NewRemote(sconn, opener, s.met, log)
	defer remote.Close()
	var done sync.WaitGroup // everything this connection started
	done.Go(func() { s.globalRequests(ctx, reqs, remote, forwarding, opts, log) })
	if every := time.Duration(*s.cfg.KeepaliveInterval); every > 0 {
		go keepalive(ctx, sconn, every, s.cfg.KeepaliveCountMax, log)
	}

	conn := sessions.Conn{
		SSH:       sconn,
		Opener:    opener,
		Verbs:     s.verbs.For(caller(ref, ext[extKey], nc)),
		Registry:  s.registry,
		Login:     ref.Login(),
		Container: ref.Name(),
		Source:    nc.RemoteAddr().String(),
		// The key's environment= first, so that it cannot replace berth's
		// own SSH_* variables.
		Env:             append(s.keyEnv(opts), "SSH_CONNECTION="+sshConnection(nc), "SSH_CLIENT="+sshClient(nc)),
		AgentForwarding: s.cfg.ForwardingFor(user) && !opts.NoAgent,
		NoPTY:           opts.NoPTY,
		ForceCommand:    opts.Command,
		Metrics:         s.met,
		IdleTimeout:     time.Duration(s.cfg.SessionIdleTimeout),
		MaxDuration:     time.Duration(s.cfg.SessionMaxDuration),
	}
	if s.cfg.RecordFor(user) {
		conn.RecordDir = filepath.Join(s.cfg.RecordingsDir(), user.Name)
	}
	maxSessions := s.cfg.MaxSessionsFor(user)
	n := 0
	for nch := range chans {
		switch typ := nch.ChannelType(); {
		case typ == "session":
			if !s.sessions.acquire(user.Name, maxSessions) {
				log.Info("session refused: max_sessions", audit.Event("session-refused"), "max", maxSessions)
				nch.Reject(ssh.ResourceShortage, fmt.Sprintf("you have %d sessions open, the most berth allows you (max_sessions)", maxSessions))
				continue
			}
			ch, creqs, err := nch.Accept()
			if err != nil {
				s.sessions.release(user.Name)
				log.Info("accept session", "err", err)
				continue
			}
			n++
			c := conn
			c.Log = log.With("session", n)
			c.RecordID = fmt.Sprintf("%s-%d", id, n)
			done.Go(func() {
				defer s.sessions.release(user.Name)
				sessions.New(ch, c).Serve(ctx, creqs)
			})
		case typ == tunnels.DirectTCPIP || typ == tunnels.DirectStreamlocal:
			if !forwarding {
				nch.Reject(ssh.Prohibited, "forwarding is turned off for you")
				continue
			}
			if network, addr, err := tunnels.Destination(nch); err == nil && !opts.AllowsOpen(network, addr) {
				log.Info("forward refused: the key's permitopen", audit.Event("forward"), "result", "refused", "to", addr)
				nch.Reject(ssh.Prohibited, "the key's permitopen does not allow "+addr)
				continue
			}
			done.Go(func() { tunnels.Direct(ctx, nch, opener, s.met, log) })
		default:
			nch.Reject(ssh.UnknownChannelType, fmt.Sprintf("berth does not support %s channels", typ))
		}
	}
	cancel(errors.New("connection closed"))
	remote.Close()
	done.Wait()
	log.Info("connection closed", audit.Event("disconnect"))
}

// caller describes the connection to the verbs.
func caller(ref containers.Ref, key string, nc net.Conn) verbs.Caller {
	host, port, _ := net.SplitHostPort(nc.LocalAddr().String())
	return verbs.Caller{Ref: ref, Key: key, Host: host, Port: port}
}

// globalRequests answers the connection's global requests until it
// closes: remote forwards the key's permitlisten allows, and a failure
// reply for anything else, which is all keepalive@openssh.com needs.
func (s *Server) globalRequests(ctx context.Context, reqs <-chan *ssh.Request, remote *tunnels.Remote, forwarding bool, opts keys.Options, log *slog.Logger) {
	for req := range reqs {
		switch req.Type {
		case tunnels.TCPIPForward, tunnels.UnixForward:
			network, addr := listenAddr(req)
			if forwarding && opts.AllowsListen(network, addr) {
				remote.Handle(ctx, req)
				continue
			}
			if forwarding {
				log.Info("remote forward refused: the key's permitlisten", audit.Event("forward"), "result", "refused", "listen", addr)
			}
		case tunnels.CancelTCPIPForward, tunnels.CancelUnixForward:
			if forwarding {
				remote.Handle(ctx, req)
				continue
			}
		}
		if req.WantReply {
			req.Reply(false, nil)
		}
	}
}

// listenAddr reads where a remote forward request wants to listen.
func listenAddr(req *ssh.Request) (network, addr string) {
	if req.Type == tunnels.UnixForward {
		var p struct{ Path string }
		ssh.Unmarshal(req.Payload, &p)
		return "unix", p.Path
	}
	var p struct {
		Addr string
		Port uint32
	}
	ssh.Unmarshal(req.Payload, &p)
	return "tcp", net.JoinHostPort(p.Addr, strconv.Itoa(int(p.Port)))
}

// keyEnv is the key's environment= settings where the config allows them
// (permit_user_environment, as sshd's PermitUserEnvironment); otherwise
// they are ignored, as sshd does.
func (s *Server) keyEnv(opts keys.Options) []string {
	if !s.cfg.PermitUserEnvironment {
		return nil
	}
	return opts.Env
}

// keepalive asks the client for a reply every interval and closes the
// connection after max unanswered asks in a row, so that a vanished
// client's sessions end.
func keepalive(ctx context.Context, conn ssh.Conn, every time.Duration, max int, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	missed := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		replied := make(chan error, 1)
		go func() {
			_, _, err := conn.SendRequest("keepalive@openssh.com", true, nil)
			replied <- err
		}()
		select {
		case err := <-replied:
			if err != nil {
				return // the connection is closing
			}
			missed = 0
		case <-time.After(every):
			if missed++; missed >= max {
				log.Info("client stopped answering keepalives; closing", "missed", missed)
				conn.Close()
				return
			}
		case <-ctx.Done():
			return
		}
	}
}

// userOpener opens the agent connection for one container's sessions.
type userOpener struct {
	m   *containers.Manager
	ref containers.Ref
}

func (o userOpener) Open(ctx context.Context, progress io.Writer) (*net.UnixConn, error) {
	return o.m.Open(ctx, o.ref, progress)
}

func (o userOpener) Prepare(ctx context.Context, authSock string, login bool, progress io.Writer) bool {
	return o.m.Prepare(ctx, o.ref, authSock, login, progress)
}

// Shutdown stops accepting connections and waits for open ones to end
// until ctx is done; then it hangs up the rest. Containers keep running.
func (s *Server) Shutdown(ctx context.Context) error {
	defer s.hangup(errors.New("gateway shut down"))
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	s.mu.Unlock()

	drained := make(chan struct{})
	go func() {
		s.active.Wait()
		close(drained)
	}()
	select {
	case <-drained:
		return nil
	case <-ctx.Done():
	}
	s.hangup(errors.New("gateway shutting down"))
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	<-drained
	return ctx.Err()
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

func (s *Server) track(l net.Listener, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.closing {
			return false
		}
		s.listeners[l] = struct{}{}
	} else {
		delete(s.listeners, l)
	}
	return true
}

func (s *Server) trackConn(c net.Conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.closing {
			return false
		}
		s.conns[c] = struct{}{}
		s.active.Add(1)
	} else {
		delete(s.conns, c)
		s.active.Done()
	}
	return true
}

func newID() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// sshConnection is $SSH_CONNECTION: client address and port, server
// address and port.
func sshConnection(c net.Conn) string {
	rh, rp, _ := net.SplitHostPort(c.RemoteAddr().String())
	lh, lp, _ := net.SplitHostPort(c.LocalAddr().String())
	return fmt.Sprintf("%s %s %s %s", rh, rp, lh, lp)
}

// sshClient is $SSH_CLIENT: client address and port, server port.
func sshClient(c net.Conn) string {
	rh, rp, _ := net.SplitHostPort(c.RemoteAddr().String())
	_, lp, _ := net.SplitHostPort(c.LocalAddr().String())
	return fmt.Sprintf("%s %s %s", rh, rp, lp)
}
