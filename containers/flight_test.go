package containers

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// lockedBuffer is a writer several goroutines may share.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestFlightsRunOnceAndEveryWaiterSeesAllProgress(t *testing.T) {
	var fs flights
	var runs atomic.Int32
	release := make(chan struct{})
	started := make(chan struct{})
	work := func(ctx context.Context, w io.Writer) error {
		runs.Add(1)
		fmt.Fprintln(w, "step 1")
		close(started)
		<-release
		fmt.Fprintln(w, "step 2")
		return nil
	}
	var wg sync.WaitGroup
	outs := make([]*lockedBuffer, 10)
	for i := range outs {
		outs[i] = &lockedBuffer{}
		if i == 1 {
			<-started // the rest join while the work runs
		}
		wg.Go(func() {
			if err := fs.do(t.Context(), context.Background(), "k", "build", outs[i], work); err != nil {
				t.Error(err)
			}
		})
	}
	// Let the work finish only once every waiter has joined it.
	waitJoined(&fs, "k", len(outs))
	close(release)
	wg.Wait()
	if runs.Load() != 1 {
		t.Fatalf("work ran %d times", runs.Load())
	}
	for i, o := range outs {
		if o.String() != "step 1\nstep 2\n" {
			t.Errorf("waiter %d saw %q", i, o.String())
		}
	}
}

func TestFlightsKeepRunningWhenOneWaiterLeaves(t *testing.T) {
	var fs flights
	release := make(chan struct{})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- fs.do(ctx, context.Background(), "k", "build", io.Discard, func(ctx context.Context, w io.Writer) error {
			<-release
			return ctx.Err()
		})
	}()
	cancel()
	if err := <-done; err == nil {
		t.Fatal("a waiter that left got no error")
	}
	second := make(chan error, 1)
	go func() {
		second <- fs.do(t.Context(), context.Background(), "k", "build", io.Discard, func(context.Context, io.Writer) error {
			return fmt.Errorf("a second run started")
		})
	}()
	waitJoined(&fs, "k", 1) // the second waiter; the first one left
	close(release)
	if err := <-second; err != nil {
		t.Fatalf("the shared work was cancelled or run twice: %v", err)
	}
}

// waitJoined waits until n waiters are subscribed to the flight at key.
func waitJoined(fs *flights, key string, n int) {
	for {
		fs.mu.Lock()
		f := fs.m[key]
		fs.mu.Unlock()
		f.mu.Lock()
		joined := len(f.subs)
		f.mu.Unlock()
		if joined == n {
			return
		}
		runtime.Gosched()
	}
}

// Work of another kind under the same key does not join the running
// work: a stop that arrives while a start runs waits for it, then stops.
func TestFlightsOfAnotherKindWaitAndRunTheirOwn(t *testing.T) {
	var fs flights
	release := make(chan struct{})
	var order []string
	var mu sync.Mutex
	note := func(s string) { mu.Lock(); order = append(order, s); mu.Unlock() }
	started := make(chan struct{})
	startDone := make(chan error, 1)
	go func() {
		startDone <- fs.do(t.Context(), context.Background(), "c", "start", io.Discard, func(context.Context, io.Writer) error {
			close(started)
			<-release
			note("start")
			return nil
		})
	}()
	<-started
	stopDone := make(chan error, 1)
	calling := make(chan struct{})
	go func() {
		close(calling)
		stopDone <- fs.do(t.Context(), context.Background(), "c", "stop", io.Discard, func(context.Context, io.Writer) error {
			note("stop")
			return nil
		})
	}()
	<-calling
	for range 100 {
		runtime.Gosched() // let the stop reach the running start
	}
	close(release)
	if err := <-startDone; err != nil {
		t.Fatal(err)
	}
	if err := <-stopDone; err != nil {
		t.Fatal(err)
	}
	if strings.Join(order, ",") != "start,stop" {
		t.Fatalf("ran %v, want the start and then the stop's own work", order)
	}
}
