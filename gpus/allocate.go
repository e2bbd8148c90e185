package gpus

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Policy is how many GPUs a container gets, and whether it has them to
// itself.
type Policy struct {
	// Count is the number of GPUs; All means every GPU; 0 means none.
	Count int
	// Exclusive leases each GPU to at most one running container.
	Exclusive bool
	// FallbackCPU starts the container without GPUs, with a warning,
	// when too few are free; otherwise that is an error.
	FallbackCPU bool
}

// All is Policy.Count for every GPU on the host.
const All = -1

// Lease is a running container's hold on GPUs, as its labels record it.
type Lease struct {
	Container string
	User      string
	UUIDs     []string
	Since     time.Time
}

// NotEnough says who holds the GPUs a container could not get. With
// CPUFallback the container is to start without GPUs, and this is the
// warning to give.
type NotEnough struct {
	Want, Free  int
	Holders     []Lease
	CPUFallback bool
}

func (e *NotEnough) Error() string {
	var who []string
	for _, h := range e.Holders {
		who = append(who, fmt.Sprintf("%s (%s) holds %d since %s", h.User, h.Container, len(h.UUIDs), h.Since.Local().Format("Jan 2 15:04")))
	}
	msg := fmt.Sprintf("you asked for %d GPUs and %d are free", e.Want, e.Free)
	if len(who) > 0 {
		msg += ": " + strings.Join(who, "; ")
	}
	return msg
}

// Allocate picks the GPUs a container gets under p, given the snapshot
// and the other running containers' leases (the container's own must not
// be among them). It prefers the GPUs in previous, so that a restarted
// container gets its own back when they are free. An empty result with a
// nil error means CPU-only (no GPUs on the host, or a policy of none); with
// a *NotEnough whose CPUFallback is set, CPU-only with a warning.
func Allocate(s Snapshot, leases []Lease, p Policy, previous []string) ([]string, error) {
	if p.Count == 0 || len(s.GPUs) == 0 {
		return nil, nil
	}
	want := p.Count
	if want == All {
		want = len(s.GPUs)
	}
	if !p.Exclusive {
		// Shared: every container may use any GPU.
		var ids []string
		for _, g := range s.GPUs[:min(want, len(s.GPUs))] {
			ids = append(ids, g.UUID)
		}
		return ids, nil
	}
	held := map[string]bool{}
	for _, l := range leases {
		for _, u := range l.UUIDs {
			held[u] = true
		}
	}
	var free []string
	for _, g := range s.GPUs {
		if !held[g.UUID] {
			free = append(free, g.UUID)
		}
	}
	// Its own GPUs first, then the rest, each by index.
	slices.SortStableFunc(free, func(a, b string) int {
		return btoi(!slices.Contains(previous, a)) - btoi(!slices.Contains(previous, b))
	})
	if len(free) >= want {
		return free[:want], nil
	}
	return nil, &NotEnough{Want: want, Free: len(free), Holders: leases, CPUFallback: p.FallbackCPU}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TorchVariant is the PyTorch wheel variant that matches a CUDA driver
// version, such as "cu124", or "cpu" without GPUs: the newest variant the
// driver can run.
func TorchVariant(cuda string, gpus int) string {
	if gpus == 0 {
		return "cpu"
	}
	var major, minor int
	if _, err := fmt.Sscanf(cuda, "%d.%d", &major, &minor); err != nil {
		return "cpu"
	}
	v := major*10 + minor
	for _, c := range []struct {
		min     int
		variant string
	}{{128, "cu128"}, {126, "cu126"}, {124, "cu124"}, {121, "cu121"}, {118, "cu118"}} {
		if v >= c.min {
			return c.variant
		}
	}
	return "cpu"
}
