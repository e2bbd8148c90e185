package sessions

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A write that splits a UTF-8 character keeps it whole in the recording,
// and the cast file lists, times and names what happened.
func TestRecordingKeepsCharactersWhole(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "alice", "s.cast")
	r, err := newRecorder(path, 100, 30, "xterm-256color", "alice: login shell")
	if err != nil {
		t.Fatal(err)
	}
	for _, chunk := range []string{"h", "\xc3", "\xa9llo ", "\xe2\x82", "\xac\r\n"} {
		r.Write([]byte(chunk))
	}
	r.resize(120, 40)
	r.Close()

	data, _ := os.ReadFile(path)
	var text strings.Builder
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	for _, line := range lines[1:] {
		var ev []any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("event %q: %v", line, err)
		}
		if ev[1] == "o" {
			if strings.ContainsRune(ev[2].(string), '\uFFFD') {
				t.Fatalf("a character was split: %q", line)
			}
			text.WriteString(ev[2].(string))
		}
	}
	if text.String() != "héllo €\r\n" || !strings.Contains(lines[len(lines)-1], `"r","120x40"`) {
		t.Fatalf("recorded %q; last event %s", text.String(), lines[len(lines)-1])
	}
	recs, err := Recordings(dir, "")
	if err != nil || len(recs) != 1 || recs[0].User != "alice" || recs[0].Title != "alice: login shell" {
		t.Fatalf("Recordings: %+v %v", recs, err)
	}
}
