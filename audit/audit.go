// Package audit is berth's audit trail: JSON lines under state_dir saying
// who connected, who authenticated with which key or certificate, what
// each session ran and how it ended, every forward and verb, and what
// happened to containers.
//
// It rides on the log: a record that carries an "event" attribute goes
// both to berth's log and to the audit file, so the two never disagree and
// no part of berth needs an audit object of its own.
//
//	w, err := audit.Open(path, 100<<20, 5)
//	log := slog.New(audit.Tee(mainHandler, w))
//	log.Info("authenticated", audit.Event("auth"), "result", "ok", "key", fp)
package audit

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
)

// EventKey is the attribute that marks a record for the audit trail.
const EventKey = "event"

// Event marks a log record as an audit event, such as "auth" or
// "session-end".
func Event(name string) slog.Attr { return slog.String(EventKey, name) }

// Tee returns a handler that gives every record to main, as far as main's
// level lets it, and every record with an Event attribute to the audit
// writer w, at any level.
func Tee(main slog.Handler, w *Writer) slog.Handler {
	return tee{main: main, audit: slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})}
}

type tee struct{ main, audit slog.Handler }

func (t tee) Enabled(ctx context.Context, l slog.Level) bool {
	return t.main.Enabled(ctx, l) || t.audit.Enabled(ctx, l)
}

func (t tee) Handle(ctx context.Context, r slog.Record) error {
	var err error
	if t.main.Enabled(ctx, r.Level) {
		err = t.main.Handle(ctx, r.Clone())
	}
	event := false
	r.Attrs(func(a slog.Attr) bool {
		event = a.Key == EventKey
		return !event
	})
	if event {
		if aerr := t.audit.Handle(ctx, r); aerr != nil && err == nil {
			err = aerr
		}
	}
	return err
}

func (t tee) WithAttrs(as []slog.Attr) slog.Handler {
	return tee{main: t.main.WithAttrs(as), audit: t.audit.WithAttrs(as)}
}

func (t tee) WithGroup(name string) slog.Handler {
	return tee{main: t.main.WithGroup(name), audit: t.audit.WithGroup(name)}
}

// Writer appends to a file that it rotates by size: at max bytes the file
// becomes path.1, path.1 becomes path.2, and so on, keeping keep old
// files. It is safe for concurrent use; each Write is one record.
type Writer struct {
	path string
	max  int64
	keep int

	mu     sync.Mutex
	f      *os.File // nil after a failed rotation, until an open succeeds
	size   int64
	closed bool
}

// Open opens (or creates, mode 0600) the audit file at path.
func Open(path string, max int64, keep int) (*Writer, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	w := &Writer{path: path, max: max, keep: keep}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Writer) open() error {
	f, err := os.OpenFile(w.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("audit log: %w", err)
	}
	w.f, w.size = f, st.Size()
	return nil
}

func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, os.ErrClosed
	}
	if w.f == nil {
		// A rotation failed to open the new file (a full disk, no
		// descriptors): try again now rather than stay silent for good.
		if err := w.open(); err != nil {
			return 0, err
		}
	}
	if w.max > 0 && w.size > 0 && w.size+int64(len(p)) > w.max {
		if err := w.rotate(); err != nil {
			return 0, err
		}
	}
	n, err := w.f.Write(p)
	w.size += int64(n)
	return n, err
}

// rotate shifts the old files up by one, dropping the oldest, and starts
// a new file. The caller holds mu.
func (w *Writer) rotate() error {
	w.f.Close()
	w.f = nil
	for i := w.keep - 1; i >= 1; i-- {
		os.Rename(fmt.Sprintf("%s.%d", w.path, i), fmt.Sprintf("%s.%d", w.path, i+1))
	}
	if w.keep > 0 {
		os.Rename(w.path, w.path+".1")
	} else {
		os.Remove(w.path)
	}
	return w.open()
}

// Close closes the file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}
