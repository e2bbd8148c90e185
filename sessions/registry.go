package sessions

import (
	"slices"
	"sync"
	"time"
)

// Registry knows the sessions running now and when each container last
// had one: `admin who` and the idle stop read it. One Registry serves the
// whole gateway; it is safe for concurrent use.
type Registry struct {
	mu     sync.Mutex
	nextID int
	active map[int]Info
	last   map[string]time.Time // container name → when its last session ended
}

// Info describes a running session.
type Info struct {
	ID        int       `json:"id"`
	Login     string    `json:"login"`
	Container string    `json:"container"`
	Source    string    `json:"source"`
	Command   string    `json:"command"`
	Since     time.Time `json:"since"`
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{active: map[int]Info{}, last: map[string]time.Time{}}
}

// track records a session until done is called.
func (r *Registry) track(info Info) (done func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextID++
	info.ID, info.Since = r.nextID, time.Now()
	r.active[info.ID] = info
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.active, info.ID)
		r.last[info.Container] = time.Now()
	}
}

// List returns the running sessions, oldest first.
func (r *Registry) List() []Info {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Info, 0, len(r.active))
	for _, s := range r.active {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b Info) int { return a.ID - b.ID })
	return out
}

// Active counts the sessions running in a container.
func (r *Registry) Active(container string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, s := range r.active {
		if s.Container == container {
			n++
		}
	}
	return n
}

// LastActive is when a container's last session ended, or zero if none
// has since berth started.
func (r *Registry) LastActive(container string) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last[container]
}
