package gateway

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/berth-ssh/berth/config"
)

// admission decides, before any handshake, whether a connection may
// proceed: like OpenSSH's MaxStartups it caps connections that have not
// authenticated yet, and like PerSourcePenalties it turns away, for a
// while, a source whose connections ended without logging in.
type admission struct {
	start, rate, full int // MaxStartups start:rate:full
	penalty, maxPen   time.Duration
	exempt            []netip.Prefix

	mu        sync.Mutex
	unauthed  int
	penalties map[netip.Addr]penalty
	refused   map[string]bool // connections (by remote address) that offered a wrong key
}

type penalty struct {
	until time.Time
	last  time.Duration
}

func newAdmission(cfg *config.Config) *admission {
	a := &admission{penalty: time.Duration(*cfg.Penalty), maxPen: time.Duration(cfg.PenaltyMax),
		penalties: map[netip.Addr]penalty{}, refused: map[string]bool{}}
	a.start, a.rate, a.full, _ = config.ParseStartups(cfg.MaxStartups) // validated
	for _, e := range cfg.PenaltyExempt {
		if p, err := config.ParsePrefix(e); err == nil {
			a.exempt = append(a.exempt, p)
		}
	}
	return a
}

// refusedKey notes that a connection offered a key that was refused, from
// ssh.ServerConfig.AuthLogCallback. Only such a connection earns its
// source a penalty: a port probe or a health check does not.
func (a *admission) refusedKey(addr net.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.refused[addr.String()] = true
}

// admit reports whether a new connection from addr may start its
// handshake, and why not. A connection admitted must call done with
// whether it authenticated.
func (a *admission) admit(addr net.Addr) (ok bool, why string) {
	ip := addrIP(addr)
	a.mu.Lock()
	defer a.mu.Unlock()
	if p, found := a.penalties[ip]; found && time.Now().Before(p.until) && !a.exempted(ip) {
		return false, fmt.Sprintf("source penalised for failed logins until %s", p.until.Format(time.TimeOnly))
	}
	if n := a.unauthed; n >= a.start {
		if n >= a.full {
			return false, fmt.Sprintf("%d connections are authenticating already (max_startups full)", n)
		}
		// From rate% at start, rising linearly to 100% at full.
		drop := a.rate + (100-a.rate)*(n-a.start)/max(a.full-a.start, 1)
		if rand.IntN(100) < drop {
			return false, fmt.Sprintf("%d connections are authenticating already (max_startups)", n)
		}
	}
	a.unauthed++
	return true, ""
}

// done ends an admitted connection's unauthenticated phase. A connection
// that offered a wrong key and never logged in earns its source a
// penalty, doubled each time up to maxPen.
func (a *admission) done(addr net.Addr, authenticated bool) {
	ip := addrIP(addr)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.unauthed--
	refused := a.refused[addr.String()]
	delete(a.refused, addr.String())
	if authenticated || !refused || a.penalty == 0 || a.exempted(ip) {
		return
	}
	p := a.penalties[ip]
	next := a.penalty
	if time.Now().Before(p.until.Add(a.maxPen)) && p.last > 0 {
		next = min(2*p.last, a.maxPen)
	}
	a.penalties[ip] = penalty{until: time.Now().Add(next), last: next}
	if len(a.penalties) > 10000 { // forget the expired ones
		for k, v := range a.penalties {
			if time.Now().After(v.until) {
				delete(a.penalties, k)
			}
		}
	}
}

func (a *admission) exempted(ip netip.Addr) bool {
	for _, p := range a.exempt {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func addrIP(addr net.Addr) netip.Addr {
	if ap, err := netip.ParseAddrPort(addr.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// sessionCounts counts each user's open sessions across connections, for
// max_sessions.
type sessionCounts struct {
	mu sync.Mutex
	n  map[string]int
}

// acquire counts a new session of user unless it would pass limit (0 is
// no limit).
func (c *sessionCounts) acquire(user string, limit int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if limit > 0 && c.n[user] >= limit {
		return false
	}
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[user]++
	return true
}

func (c *sessionCounts) release(user string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[user]--; c.n[user] <= 0 {
		delete(c.n, user)
	}
}
