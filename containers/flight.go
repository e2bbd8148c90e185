package containers

import (
	"context"
	"io"
	"sync"
)

// flights runs one piece of work per key at a time. A caller that arrives
// while work of the same kind runs waits for the same result, and sees its
// progress from the first line on, so ten users connecting at once all
// watch the one image build. A caller with work of another kind (a stop
// while a start runs) waits for the running work to end and then runs its
// own: it must not take the other's result for its own.
type flights struct {
	mu sync.Mutex
	m  map[string]*flight
}

type flight struct {
	kind string
	done chan struct{}
	err  error

	mu   sync.Mutex
	past []byte // every byte of progress so far, for late joiners
	subs map[chan []byte]struct{}
}

// do runs work of kind under key unless work of that kind is already
// running, and waits for it or for ctx. The work runs on base, not ctx: it
// is shared, so one caller hanging up must not cancel it for the others.
func (fs *flights) do(ctx, base context.Context, key, kind string, progress io.Writer, work func(ctx context.Context, progress io.Writer) error) error {
	var f *flight
	var running bool
	for {
		fs.mu.Lock()
		if fs.m == nil {
			fs.m = map[string]*flight{}
		}
		f, running = fs.m[key]
		if running && f.kind != kind {
			fs.mu.Unlock()
			select {
			case <-f.done:
				continue
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		}
		if !running {
			f = &flight{kind: kind, done: make(chan struct{}), subs: map[chan []byte]struct{}{}}
			fs.m[key] = f
		}
		fs.mu.Unlock()
		break
	}

	ch, delivered := f.subscribe(progress)
	if !running {
		go func() {
			f.err = work(base, f)
			fs.mu.Lock()
			delete(fs.m, key)
			fs.mu.Unlock()
			f.finish()
		}()
	}
	select {
	case <-delivered:
		return f.err
	case <-ctx.Done():
		f.unsubscribe(ch)
		return context.Cause(ctx)
	}
}

// Write broadcasts progress to every waiter. It never blocks on a slow
// client: a waiter whose backlog is full misses lines instead.
func (f *flight) Write(p []byte) (int, error) {
	b := append([]byte(nil), p...)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.past = append(f.past, b...)
	for ch := range f.subs {
		select {
		case ch <- b:
		default:
		}
	}
	return len(p), nil
}

// subscribe replays the progress so far to w and forwards what follows.
// The returned channel is closed once the work is done and w has been
// given everything, so a waiter's own output never overtakes its progress.
func (f *flight) subscribe(w io.Writer) (chan []byte, <-chan struct{}) {
	ch := make(chan []byte, 256)
	delivered := make(chan struct{})
	f.mu.Lock()
	if len(f.past) > 0 {
		ch <- append([]byte(nil), f.past...)
	}
	select {
	case <-f.done:
		close(ch)
	default:
		f.subs[ch] = struct{}{}
	}
	f.mu.Unlock()
	go func() {
		defer close(delivered)
		for b := range ch {
			w.Write(b)
		}
	}()
	return ch, delivered
}

// unsubscribe stops progress to a waiter that left.
func (f *flight) unsubscribe(ch chan []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.subs[ch]; ok {
		delete(f.subs, ch)
		close(ch)
	}
}

func (f *flight) finish() {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.done)
	for ch := range f.subs {
		close(ch)
	}
	f.subs = nil
}
