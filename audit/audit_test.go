package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Only records marked as events reach the audit file, with the attributes
// bound to their logger; all of them reach the main log.
func TestTeeSendsEventsToTheAuditFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	w, err := Open(path, 1<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	var main bytes.Buffer
	log := slog.New(Tee(slog.NewTextHandler(&main, nil), w)).With("conn", "c1")
	log.Info("authenticated", Event("auth"), "user", "alice")
	log.Info("just chatter")
	log.Debug("connection", Event("connect")) // below main's level, still audited
	w.Close()

	var events []map[string]any
	f, _ := os.Open(path)
	defer f.Close()
	for sc := bufio.NewScanner(f); sc.Scan(); {
		var e map[string]any
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("not a JSON line: %q", sc.Text())
		}
		events = append(events, e)
	}
	if len(events) != 2 || events[0]["event"] != "auth" || events[0]["user"] != "alice" || events[0]["conn"] != "c1" || events[1]["event"] != "connect" {
		t.Fatalf("audit file: %v", events)
	}
	if got := main.String(); strings.Count(got, "\n") != 2 || !strings.Contains(got, "just chatter") || strings.Contains(got, "msg=connection") {
		t.Fatalf("main log:\n%s", got)
	}
}

// At its size the file rolls over to .1, .1 to .2, and the oldest past
// keep is dropped; every line stays whole.
func TestWriterRotatesBySize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	w, err := Open(path, 100, 2)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		fmt.Fprintf(w, "{\"n\":%d,\"pad\":\"%s\"}\n", i, strings.Repeat("x", 20))
	}
	w.Close()
	for _, name := range []string{path, path + ".1", path + ".2"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 100 || !bytes.HasSuffix(b, []byte("}\n")) {
			t.Fatalf("%s: %d bytes, %q", name, len(b), b)
		}
	}
	if _, err := os.Stat(path + ".3"); err == nil {
		t.Fatal("kept more old files than asked")
	}
	last, _ := os.ReadFile(path)
	if !bytes.Contains(last, []byte(`"n":19`)) {
		t.Fatalf("the newest record is not in the current file: %q", last)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("audit log mode %v", st.Mode().Perm())
	}
}

// A rotation that cannot open the new file (here its directory is gone)
// costs that record, not the rest: the next write opens it again.
func TestWriterRecoversFromAFailedRotation(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "audit")
	path := filepath.Join(dir, "audit.log")
	w, err := Open(path, 40, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	fmt.Fprintf(w, "{\"n\":1,\"pad\":\"%s\"}\n", strings.Repeat("x", 20))
	os.RemoveAll(dir)
	if _, err := fmt.Fprintf(w, "{\"n\":2,\"pad\":\"%s\"}\n", strings.Repeat("x", 20)); err == nil {
		t.Fatal("a write into a vanished directory succeeded")
	}
	os.MkdirAll(dir, 0o700)
	if _, err := fmt.Fprintf(w, "{\"n\":3}\n"); err != nil {
		t.Fatalf("the writer did not recover: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "{\"n\":3}\n" {
		t.Fatalf("audit.log after recovery: %q", b)
	}
}
