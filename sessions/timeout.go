package sessions

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// activeChannel is a session channel that notes when bytes last passed
// either way, for the idle timeout.
type activeChannel struct {
	ssh.Channel
	last *atomic.Int64 // unix nanoseconds
}

func (c activeChannel) Read(p []byte) (int, error) {
	n, err := c.Channel.Read(p)
	if n > 0 {
		c.last.Store(time.Now().UnixNano())
	}
	return n, err
}

func (c activeChannel) Write(p []byte) (int, error) {
	c.last.Store(time.Now().UnixNano())
	return c.Channel.Write(p)
}

func (c activeChannel) Stderr() io.ReadWriter {
	return activeStderr{c.Channel.Stderr(), c.last}
}

type activeStderr struct {
	io.ReadWriter
	last *atomic.Int64
}

func (s activeStderr) Write(p []byte) (int, error) {
	s.last.Store(time.Now().UnixNano())
	return s.ReadWriter.Write(p)
}

// watchTimeouts hangs the session up, with one line to the user, when it
// has been idle for IdleTimeout or running for MaxDuration (0 turns either
// off). It returns when ctx ends.
func (s *Session) watchTimeouts(ctx context.Context, hangup context.CancelCauseFunc, began time.Time) {
	idle, longest := s.conn.IdleTimeout, s.conn.MaxDuration
	if idle <= 0 && longest <= 0 {
		return
	}
	every := time.Minute
	for _, d := range []time.Duration{idle, longest} {
		if d > 0 {
			every = min(every, max(d/4, 10*time.Millisecond))
		}
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var why string
		switch {
		case longest > 0 && time.Since(began) >= longest:
			why = fmt.Sprintf("the session reached its longest allowed time, %s (session_max_duration)", longest)
		case idle > 0 && time.Since(time.Unix(0, s.active.Load())) >= idle:
			why = fmt.Sprintf("the session was idle for %s (session_idle_timeout)", idle)
		default:
			continue
		}
		s.log.Info("session timed out", "why", why)
		fmt.Fprintf(s.progress(), "\nberth: %s; hung up.\n", why)
		hangup(fmt.Errorf("timed out: %s", why))
		return
	}
}
