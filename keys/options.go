package keys

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Options are the authorized_keys options berth enforces for the key that
// signed (sshd(8), AUTHORIZED_KEYS FILE FORMAT). x/crypto/ssh only parses
// them; acting on them is berth's job.
type Options struct {
	// Command is a forced command: it runs instead of whatever the client
	// asked for, verbs included, with the request in SSH_ORIGINAL_COMMAND.
	Command    string
	NoPTY      bool
	NoForwards bool // no port or socket forwarding
	NoAgent    bool
	// From are from="" patterns: the client's address must match one and
	// no negated one. Empty allows any address.
	From []string
	// Expiry, when set, is when the key stops working.
	Expiry time.Time
	// PermitOpen and PermitListen limit ssh -L/-D and ssh -R to these
	// "host:port" destinations and "[host:]port" listens; "*" matches any
	// host or port. Empty allows any. Unix sockets are refused when set.
	PermitOpen, PermitListen []string
	// Env are environment="NAME=value" settings, applied only where the
	// config's permit_user_environment allows.
	Env []string
}

// ParseOptions reads an authorized_keys line's options. An option berth
// does not enforce is an error: a key whose restrictions would be ignored
// must not log in at all.
func ParseOptions(opts []string) (Options, error) {
	var o Options
	for _, opt := range opts {
		name, raw, hasValue := strings.Cut(opt, "=")
		value := func() (string, error) {
			v, err := unquote(raw)
			if !hasValue || err != nil {
				return "", fmt.Errorf("option %q: want %s=\"...\"", opt, name)
			}
			return v, nil
		}
		switch strings.ToLower(name) {
		case "restrict":
			o.NoPTY, o.NoForwards, o.NoAgent = true, true, true
		case "no-pty":
			o.NoPTY = true
		case "no-port-forwarding":
			o.NoForwards = true
		case "no-agent-forwarding":
			o.NoAgent = true
		case "pty":
			o.NoPTY = false
		case "port-forwarding":
			o.NoForwards = false
		case "agent-forwarding":
			o.NoAgent = false
		case "no-x11-forwarding", "no-user-rc", "x11-forwarding", "user-rc":
			// berth has neither X11 forwarding nor ~/.ssh/rc.
		case "command":
			v, err := value()
			if err != nil {
				return Options{}, err
			}
			o.Command = v
		case "from":
			v, err := value()
			if err != nil {
				return Options{}, err
			}
			for p := range strings.SplitSeq(v, ",") {
				if p = strings.TrimSpace(p); p == "" || p == "!" {
					return Options{}, fmt.Errorf("option %q: an empty pattern", opt)
				}
				if c := strings.TrimPrefix(p, "!"); strings.Contains(c, "/") {
					if _, err := netip.ParsePrefix(c); err != nil {
						return Options{}, fmt.Errorf("option %q: %q is not an address/prefix", opt, c)
					}
				} else if strings.ContainsAny(c, "[]\\") {
					// sshd's patterns have only * and ?; a bracket would
					// make a pattern that silently never matches.
					return Options{}, fmt.Errorf("option %q: %q: patterns take only * and ?", opt, c)
				}
				o.From = append(o.From, p)
			}
		case "expiry-time":
			v, err := value()
			if err != nil {
				return Options{}, err
			}
			if o.Expiry, err = parseExpiry(v); err != nil {
				return Options{}, fmt.Errorf("option %q: %w", opt, err)
			}
		case "permitopen", "permitlisten":
			v, err := value()
			if err != nil {
				return Options{}, err
			}
			host, port := "", v
			if i := strings.LastIndexByte(v, ':'); i >= 0 {
				host, port = strings.Trim(v[:i], "[]"), v[i+1:]
			}
			if n, err := strconv.Atoi(port); port != "*" && (err != nil || n < 0 || n > 65535) {
				return Options{}, fmt.Errorf("option %q: %q is not a port or *", opt, port)
			}
			if strings.EqualFold(name, "permitopen") {
				if host == "" {
					return Options{}, fmt.Errorf("option %q: want host:port", opt)
				}
				o.PermitOpen = append(o.PermitOpen, v)
			} else {
				o.PermitListen = append(o.PermitListen, v)
			}
		case "environment":
			v, err := value()
			if err != nil {
				return Options{}, err
			}
			if k, _, ok := strings.Cut(v, "="); !ok || k == "" || strings.ContainsAny(k, " \t") {
				return Options{}, fmt.Errorf("option %q: want environment=\"NAME=value\"", opt)
			}
			o.Env = append(o.Env, v)
		default:
			return Options{}, fmt.Errorf("option %q is not supported by berth, so the key is refused", name)
		}
	}
	return o, nil
}

// parseExpiry reads YYYYMMDD[HHMM[SS]], in local time unless it ends
// in Z, as sshd does.
func parseExpiry(v string) (time.Time, error) {
	loc := time.Local
	if s, ok := strings.CutSuffix(v, "Z"); ok {
		v, loc = s, time.UTC
	}
	for _, layout := range []string{"20060102", "200601021504", "20060102150405"} {
		if len(v) == len(layout) {
			if t, err := time.ParseInLocation(layout, v, loc); err == nil {
				return t, nil
			}
		}
	}
	return time.Time{}, fmt.Errorf("%q is not YYYYMMDD[HHMM[SS]][Z]", v)
}

// ErrNotFrom and ErrExpired say why a key that is the user's was refused.
var (
	ErrNotFrom = errors.New("the key's from= does not allow this address")
	ErrExpired = errors.New("the key's expiry-time has passed")
)

// Admit checks the options that decide whether the key may be used at
// all: from= against the client's address, and expiry-time against now.
func (o Options) Admit(source net.Addr, now time.Time) error {
	if !o.Expiry.IsZero() && !now.Before(o.Expiry) {
		return fmt.Errorf("%w (%s)", ErrExpired, o.Expiry.Format(time.RFC3339))
	}
	if len(o.From) == 0 {
		return nil
	}
	ip := addrIP(source)
	allowed := false
	for _, p := range o.From {
		neg := strings.HasPrefix(p, "!")
		if matchAddr(strings.TrimPrefix(p, "!"), ip) {
			if neg {
				return fmt.Errorf("%w: %s", ErrNotFrom, ip)
			}
			allowed = true
		}
	}
	if !allowed {
		return fmt.Errorf("%w: %s", ErrNotFrom, ip)
	}
	return nil
}

// addrIP is the client's IP, with an IPv4-mapped IPv6 address unmapped.
func addrIP(a net.Addr) netip.Addr {
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// matchAddr matches an address against a from= pattern: a prefix such as
// 10.0.0.0/8, or an address with * and ? wildcards. berth does no DNS, so
// host name patterns match nothing (sshd with UseDNS no does the same).
func matchAddr(pattern string, ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	if strings.Contains(pattern, "/") {
		p, err := netip.ParsePrefix(pattern)
		return err == nil && p.Contains(ip)
	}
	return wildcard(pattern, ip.String())
}

// wildcard matches s against a pattern where * is any run of characters
// and ? any one, as sshd's match_pattern.
func wildcard(pattern, s string) bool {
	for len(pattern) > 0 {
		switch pattern[0] {
		case '*':
			for i := len(s); i >= 0; i-- {
				if wildcard(pattern[1:], s[i:]) {
					return true
				}
			}
			return false
		case '?':
			if s == "" {
				return false
			}
		default:
			if s == "" || s[0] != pattern[0] {
				return false
			}
		}
		pattern, s = pattern[1:], s[1:]
	}
	return s == ""
}

// AllowsOpen reports whether ssh -L or -D may reach host:port. A unix
// socket is refused when permitopen limits where forwards go.
func (o Options) AllowsOpen(network, addr string) bool {
	if len(o.PermitOpen) == 0 {
		return true
	}
	return network == "tcp" && permits(o.PermitOpen, addr, true)
}

// AllowsListen reports whether ssh -R may listen on host:port.
func (o Options) AllowsListen(network, addr string) bool {
	if len(o.PermitListen) == 0 {
		return true
	}
	return network == "tcp" && permits(o.PermitListen, addr, false)
}

// permits matches host:port against "host:port" or "port" entries, where
// "*" is any host or any port. Hosts compare without case, as names.
func permits(entries []string, addr string, needHost bool) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	for _, e := range entries {
		eh, ep := "", e
		if i := strings.LastIndexByte(e, ':'); i >= 0 {
			eh, ep = strings.Trim(e[:i], "[]"), e[i+1:]
		}
		if ep != "*" && ep != port {
			continue
		}
		if eh == "*" || strings.EqualFold(eh, host) || (!needHost && eh == "" && (host == "" || host == "localhost" || host == "127.0.0.1" || host == "::1")) {
			return true
		}
	}
	return false
}

// unquote reads an option value in double quotes, where \" is a quote.
func unquote(v string) (string, error) {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return "", fmt.Errorf("not quoted")
	}
	return strings.ReplaceAll(v[1:len(v)-1], `\"`, `"`), nil
}
