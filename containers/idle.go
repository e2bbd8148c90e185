package containers

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/berth-ssh/berth/audit"
)

// Activity tells the idle stop which containers have sessions.
type Activity interface {
	// Active counts the sessions running in a container now.
	Active(container string) int
	// LastActive is when its last session ended; zero if unknown.
	LastActive(container string) time.Time
}

// busyCPU is the CPU use, in cores, above which a container is not idle
// even with nobody logged in: a training run, a build, a notebook kernel.
const busyCPU = 0.1

// StopIdle stops every running container that has had no session for its
// user's idle_stop_after and is not busy, until ctx ends. Data is kept
// and the next connection starts the container again. A container started
// with `start --keep` is left alone until it stops.
func (m *Manager) StopIdle(ctx context.Context, a Activity) {
	every := m.idleCheckInterval()
	if every == 0 {
		return // nobody has an idle stop
	}
	began := time.Now()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.stopIdleOnce(ctx, a, began)
	}
}

// idleCheckInterval is a quarter of the shortest idle_stop_after, between
// a second and a minute; 0 when no user has one.
func (m *Manager) idleCheckInterval() time.Duration {
	var shortest time.Duration
	for _, u := range m.cfg.Users {
		if d := m.cfg.IdleStopFor(u); d > 0 && (shortest == 0 || d < shortest) {
			shortest = d
		}
	}
	if shortest == 0 {
		return 0
	}
	return min(max(shortest/4, time.Second), time.Minute)
}

func (m *Manager) stopIdleOnce(ctx context.Context, a Activity, began time.Time) {
	res, err := m.docker.ContainerList(ctx, client.ContainerListOptions{
		Filters: make(client.Filters).Add("label", LabelUser).Add("status", "running"),
	})
	if err != nil {
		m.log.Warn("idle stop: cannot list containers", "err", err)
		return
	}
	for _, c := range res.Items {
		if len(c.Names) == 0 {
			continue
		}
		name := c.Names[0][1:]
		u, ok := m.cfg.User(c.Labels[LabelUser])
		if !ok {
			continue
		}
		idle := m.cfg.IdleStopFor(u)
		if idle == 0 || a.Active(name) > 0 {
			continue
		}
		if _, err := os.Stat(m.keepPath(name)); err == nil {
			continue
		}
		// A container nobody used since berth started has been idle at
		// most since then, or since it started.
		last := a.LastActive(name)
		if last.IsZero() {
			last = began
			if created := time.Unix(c.Created, 0); created.After(last) {
				last = created
			}
		}
		if time.Since(last) < idle || m.busy(ctx, name) {
			continue
		}
		m.starts.do(ctx, m.base, name, "stop", io.Discard, func(ctx context.Context, _ io.Writer) error {
			if a.Active(name) > 0 { // someone came back meanwhile
				return nil
			}
			m.log.Info("stopping idle container", audit.Event("container"), "container", name, "idle_for", time.Since(last).Round(time.Second))
			return m.stop(ctx, name, false)
		})
	}
}

// busy reports whether a container uses more than busyCPU cores.
func (m *Manager) busy(ctx context.Context, name string) bool {
	res, err := m.docker.ContainerStats(ctx, name, client.ContainerStatsOptions{IncludePreviousSample: true})
	if err != nil {
		return true // when in doubt, leave it running
	}
	defer res.Body.Close()
	var st container.StatsResponse
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		return true
	}
	cpu := float64(st.CPUStats.CPUUsage.TotalUsage) - float64(st.PreCPUStats.CPUUsage.TotalUsage)
	sys := float64(st.CPUStats.SystemUsage) - float64(st.PreCPUStats.SystemUsage)
	if sys <= 0 {
		return false
	}
	cores := cpu / sys * float64(max(st.CPUStats.OnlineCPUs, 1))
	return cores > busyCPU
}
