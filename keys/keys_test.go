package keys

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/berth-ssh/berth/config"
)

func newKey(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func line(k ssh.PublicKey) string { return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) }

func TestAuthorize(t *testing.T) {
	dir := t.TempDir()
	inline, fromFile, shared, stranger := newKey(t), newKey(t), newKey(t), newKey(t)
	file := filepath.Join(dir, "bob_keys")
	os.WriteFile(file, []byte("# bob's keys\n\nno-pty "+line(fromFile)+" bob@desk\n"+line(shared)+"\n"), 0o644)
	yaml := "users:\n" +
		"  - name: alice\n    authorized_keys: [\"" + line(inline) + "\", \"" + line(shared) + "\"]\n" +
		"  - name: bob\n    authorized_keys: [\"./bob_keys\"]\n"
	cfg, err := config.Decode(strings.NewReader(yaml), dir)
	if err != nil {
		t.Fatal(err)
	}
	book := New(cfg)
	for _, tc := range []struct {
		user string
		key  ssh.PublicKey
		ok   bool
	}{
		{"alice", inline, true},
		{"alice", shared, true},
		{"bob", fromFile, true},
		{"bob", shared, true}, // one key, two accounts
		{"alice", fromFile, false},
		{"bob", inline, false},
		{"alice", stranger, false},
		{"carol", inline, false}, // unknown user: the same refusal
	} {
		_, err := book.Authorize(tc.user, tc.key)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrDenied)) {
			t.Errorf("Authorize(%s, %s) = %v, want ok=%v", tc.user, ssh.FingerprintSHA256(tc.key), err, tc.ok)
		}
	}
	e, _ := book.Authorize("bob", fromFile)
	if len(e.Options) != 1 || e.Options[0] != "no-pty" || e.Source != file {
		t.Errorf("entry: %+v", e)
	}

	// Key files are read at each login: an edit takes effect at once.
	os.WriteFile(file, []byte(line(shared)+"\n"), 0o644)
	if _, err := book.Authorize("bob", fromFile); err == nil {
		t.Error("a key removed from the file still logs in")
	}
}

func TestReadFileReportsBadLinesAndKeepsGoodOnes(t *testing.T) {
	k := newKey(t)
	path := filepath.Join(t.TempDir(), "keys")
	os.WriteFile(path, []byte("garbage here\n"+line(k)+"\n"), 0o644)
	entries, err := ReadFile(path)
	if len(entries) != 1 || err == nil || !strings.Contains(err.Error(), path+":1") {
		t.Fatalf("entries %d, err %v", len(entries), err)
	}
}

func TestParseOptions(t *testing.T) {
	for _, tc := range []struct {
		opts []string
		want Options
		err  string
	}{
		{nil, Options{}, ""},
		{[]string{"restrict"}, Options{NoPTY: true, NoForwards: true, NoAgent: true}, ""},
		{[]string{"restrict", "pty"}, Options{NoForwards: true, NoAgent: true}, ""},
		{[]string{"no-pty", "no-agent-forwarding"}, Options{NoPTY: true, NoAgent: true}, ""},
		{[]string{`command="echo \"hi\"; id"`}, Options{Command: `echo "hi"; id`}, ""},
		{[]string{"command=echo"}, Options{}, "command="},
		{[]string{`from="10.0.0.0/8,!10.1.2.3,192.168.*"`}, Options{From: []string{"10.0.0.0/8", "!10.1.2.3", "192.168.*"}}, ""},
		{[]string{`from="10.0.0.0/33"`}, Options{}, "not an address/prefix"},
		{[]string{`from=""`}, Options{}, "empty pattern"},
		{[]string{`from="10.1.[2-3].*"`}, Options{}, "only * and ?"},
		{[]string{`permitopen="localhost:80"`, `permitopen="*:8080"`}, Options{PermitOpen: []string{"localhost:80", "*:8080"}}, ""},
		{[]string{`permitopen="80"`}, Options{}, "host:port"},
		{[]string{`permitopen="h:http"`}, Options{}, "not a port"},
		{[]string{`permitlisten="8080"`}, Options{PermitListen: []string{"8080"}}, ""},
		{[]string{`expiry-time="20300101"`}, Options{Expiry: time.Date(2030, 1, 1, 0, 0, 0, 0, time.Local)}, ""},
		{[]string{`expiry-time="203001011230Z"`}, Options{Expiry: time.Date(2030, 1, 1, 12, 30, 0, 0, time.UTC)}, ""},
		{[]string{`expiry-time="tomorrow"`}, Options{}, "YYYYMMDD"},
		{[]string{`environment="LAB=vision"`}, Options{Env: []string{"LAB=vision"}}, ""},
		{[]string{`environment="=x"`}, Options{}, "NAME=value"},
		{[]string{"cert-authority"}, Options{}, "not supported"},
		{[]string{"verify-required"}, Options{}, "not supported"},
	} {
		got, err := ParseOptions(tc.opts)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err %v, want %q", tc.opts, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: got %+v, %v; want %+v", tc.opts, got, err, tc.want)
		}
	}
}

func TestOptionsAdmitBySourceAndTime(t *testing.T) {
	addr := func(s string) net.Addr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		opts   []string
		source string
		want   error
	}{
		{nil, "203.0.113.9:5000", nil},
		{[]string{`from="10.0.0.0/8"`}, "10.2.3.4:5000", nil},
		{[]string{`from="10.0.0.0/8"`}, "203.0.113.9:5000", ErrNotFrom},
		{[]string{`from="10.0.0.0/8,!10.1.2.3"`}, "10.1.2.3:5000", ErrNotFrom},
		{[]string{`from="192.168.1.*"`}, "192.168.1.77:5000", nil},
		{[]string{`from="192.168.1.?"`}, "192.168.1.77:5000", ErrNotFrom},
		{[]string{`from="192.168.1.??"`}, "192.168.1.77:5000", nil},
		{[]string{`from="*,!192.168.*.77"`}, "192.168.1.77:5000", ErrNotFrom},
		{[]string{`from="127.0.0.1"`}, "[::ffff:127.0.0.1]:5000", nil},
		{[]string{`from="laptop.example.org"`}, "10.2.3.4:5000", ErrNotFrom},
		{[]string{`expiry-time="20261128"`}, "10.2.3.4:5000", ErrExpired},
		{[]string{`expiry-time="20261129Z"`}, "10.2.3.4:5000", nil},
	} {
		o, err := ParseOptions(tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := o.Admit(addr(tc.source), now); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%q from %s: %v, want %v", tc.opts, tc.source, err, tc.want)
		}
	}
}

func TestPermitOpenAndListen(t *testing.T) {
	o, err := ParseOptions([]string{`permitopen="localhost:8888"`, `permitopen="*:6006"`, `permitlisten="9000"`, `permitlisten="0.0.0.0:*"`})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		open   bool
		net    string
		addr   string
		permit bool
	}{
		{true, "tcp", "localhost:8888", true},
		{true, "tcp", "LOCALHOST:8888", true},
		{true, "tcp", "127.0.0.1:8888", false}, // names are not resolved, as in sshd
		{true, "tcp", "10.0.0.5:6006", true},
		{true, "tcp", "localhost:22", false},
		{true, "unix", "/run/user/docker.sock", false},
		{false, "tcp", "localhost:9000", true},
		{false, "tcp", ":9000", true},
		{false, "tcp", "10.0.0.1:9000", false},
		{false, "tcp", "0.0.0.0:1234", true},
		{false, "unix", "/tmp/s", false},
	} {
		got := o.AllowsListen(tc.net, tc.addr)
		if tc.open {
			got = o.AllowsOpen(tc.net, tc.addr)
		}
		if got != tc.permit {
			t.Errorf("open %v %s %s: %v, want %v", tc.open, tc.net, tc.addr, got, tc.permit)
		}
	}
	if none := (Options{}); !none.AllowsOpen("unix", "/x") || !none.AllowsListen("tcp", "0.0.0.0:1") {
		t.Error("no permitopen or permitlisten must allow everything")
	}
}

func TestKeysDirAddTakesEffectAtTheNextLogin(t *testing.T) {
	dir := t.TempDir()
	cfg, err := config.Decode(strings.NewReader("keys_dir: "+dir+"/keys\nusers:\n  - name: carol\n"), dir)
	if err != nil {
		t.Fatal(err)
	}
	book := New(cfg)
	k := newKey(t)
	if _, err := book.Authorize("carol", k); err == nil {
		t.Fatal("a key not added yet logs in")
	}
	if _, err := book.Add("carol", line(k)+" carol@laptop"); err != nil {
		t.Fatal(err)
	}
	if e, err := book.Authorize("carol", k); err != nil || e.Source != filepath.Join(dir, "keys", "carol") {
		t.Fatalf("after add: %+v %v", e, err)
	}
	for _, bad := range []struct{ user, line, want string }{
		{"carol", line(k), "already there"},
		{"carol", "ssh-ed25519 garbage", "not an authorized_keys line"},
		{"carol", `tunnel="0" ` + line(newKey(t)), "not supported"},
		{"dave", line(newKey(t)), "not a configured user"},
	} {
		if _, err := book.Add(bad.user, bad.line); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("Add(%s, %.30q): %v, want %q", bad.user, bad.line, err, bad.want)
		}
	}
	// Removing the line stops the next login with that key.
	os.WriteFile(filepath.Join(dir, "keys", "carol"), nil, 0o644)
	if _, err := book.Authorize("carol", k); err == nil {
		t.Fatal("a removed key still logs in")
	}
}
