package sessions

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
	"unicode/utf8"
)

// recorder writes a terminal session's output as an asciicast v2 file,
// playable with `asciinema play`: a JSON header line, then one
// [seconds, "o", text] line per write and [seconds, "r", "COLSxROWS"] per
// window change. Input is never recorded: it holds passwords. It is safe
// for concurrent use.
type recorder struct {
	mu    sync.Mutex
	f     *os.File
	w     *bufio.Writer
	start time.Time
	// partial holds the start of a UTF-8 sequence that a write split, so
	// that every event is whole text.
	partial []byte
}

// Recording names a session's cast file: <dir>/<start>-<id>.cast.
func recordingPath(dir string, start time.Time, id string) string {
	return filepath.Join(dir, start.UTC().Format("20060102T150405Z")+"-"+id+".cast")
}

// newRecorder creates the cast file (mode 0600, its directory 0700) and
// writes its header.
func newRecorder(path string, cols, rows uint16, term, title string) (*recorder, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	r := &recorder{f: f, w: bufio.NewWriter(f), start: time.Now()}
	if cols == 0 || rows == 0 { // a client with no real terminal; players need a size
		cols, rows = 80, 24
	}
	header := struct {
		Version   int               `json:"version"`
		Width     uint16            `json:"width"`
		Height    uint16            `json:"height"`
		Timestamp int64             `json:"timestamp"`
		Title     string            `json:"title,omitempty"`
		Env       map[string]string `json:"env"`
	}{2, cols, rows, r.start.Unix(), title, map[string]string{"TERM": term}}
	b, _ := json.Marshal(header)
	r.w.Write(append(b, '\n'))
	return r, nil
}

// Write records terminal output.
func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	data := append(r.partial, p...)
	// Keep back an incomplete sequence at the end for the next write.
	cut := len(data)
	for i := len(data) - 1; i >= 0 && i >= len(data)-utf8.UTFMax; i-- {
		if utf8.RuneStart(data[i]) {
			if !utf8.FullRune(data[i:]) {
				cut = i
			}
			break
		}
	}
	r.partial = append([]byte(nil), data[cut:]...)
	if cut > 0 {
		r.event("o", string(data[:cut]))
	}
	return len(p), nil
}

// resize records a window change.
func (r *recorder) resize(cols, rows uint16) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.event("r", fmt.Sprintf("%dx%d", cols, rows))
}

// event writes one event line; the caller holds mu.
func (r *recorder) event(code, data string) {
	b, _ := json.Marshal([]any{time.Since(r.start).Seconds(), code, data})
	r.w.Write(append(b, '\n'))
}

// Close writes what is buffered and closes the file.
func (r *recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.partial) > 0 {
		r.event("o", string(r.partial))
		r.partial = nil
	}
	err := r.w.Flush()
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Recording is one recorded session, as `berth recordings` lists it.
type Recording struct {
	User     string        `json:"user"`
	Path     string        `json:"path"`
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration_ns"`
	Title    string        `json:"title"`
	Size     int64         `json:"size_bytes"`
}

// Recordings lists the recordings under dir (<state_dir>/recordings),
// all users' or one user's, oldest first.
func Recordings(dir, user string) ([]Recording, error) {
	pattern := filepath.Join(dir, "*", "*.cast")
	if user != "" {
		pattern = filepath.Join(dir, user, "*.cast")
	}
	paths, err := filepath.Glob(pattern)
	if err != nil {
		return nil, err
	}
	var out []Recording
	for _, p := range paths {
		rec, err := readRecording(p)
		if err != nil {
			continue // being written, or not a cast file
		}
		out = append(out, rec)
	}
	slices.SortFunc(out, func(a, b Recording) int { return a.Started.Compare(b.Started) })
	return out, nil
}

// readRecording reads a cast file's header and its last event's time.
func readRecording(path string) (Recording, error) {
	f, err := os.Open(path)
	if err != nil {
		return Recording{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Recording{}, err
	}
	rec := Recording{User: filepath.Base(filepath.Dir(path)), Path: path, Size: st.Size()}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	if !sc.Scan() {
		return Recording{}, fmt.Errorf("%s: empty", path)
	}
	var header struct {
		Timestamp int64  `json:"timestamp"`
		Title     string `json:"title"`
	}
	if err := json.Unmarshal(sc.Bytes(), &header); err != nil {
		return Recording{}, fmt.Errorf("%s: %w", path, err)
	}
	rec.Started, rec.Title = time.Unix(header.Timestamp, 0), header.Title
	for sc.Scan() {
		var ev []any
		if json.Unmarshal(sc.Bytes(), &ev) == nil && len(ev) > 0 {
			if secs, ok := ev[0].(float64); ok {
				rec.Duration = time.Duration(secs * float64(time.Second))
			}
		}
	}
	return rec, nil
}
