package keys

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Any authorized_keys file parses without panicking; every entry it
// yields is a key, and a line's options either parse into something berth
// enforces or refuse the key.
func FuzzAuthorizedKeys(f *testing.F) {
	f.Add([]byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ3RdwGCKnYd1y3jzPzq0FFN0E8lpG3dQz8j5UvXMpZq alice@laptop\n"))
	f.Add([]byte(`restrict,command="echo \"hi\"",from="10.0.0.0/8,!10.1.2.3" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ3RdwGCKnYd1y3jzPzq0FFN0E8lpG3dQz8j5UvXMpZq` + "\n# comment\n\n"))
	f.Add([]byte(`permitopen="*:80",permitlisten="[::1]:9000",expiry-time="20300101Z",environment="A=b" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ3RdwGCKnYd1y3jzPzq0FFN0E8lpG3dQz8j5UvXMpZq`))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, _ := parseFile(data, "fuzz")
		source := net.TCPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.7:2222"))
		for _, e := range entries {
			if e.Key == nil {
				t.Fatal("an entry without a key")
			}
			o, err := ParseOptions(e.Options)
			if err != nil {
				continue
			}
			// Enforcing what parsed must not panic either.
			o.Admit(source, time.Now())
			o.AllowsOpen("tcp", "localhost:80")
			o.AllowsListen("tcp", "[::1]:9000")
		}
	})
}

// Options alone, as x/crypto/ssh hands them over: whatever parses must
// keep restrict's meaning (no pty, no forwarding, no agent) unless a
// later option turns one back on.
func FuzzParseOptions(f *testing.F) {
	f.Add("restrict,pty")
	f.Add(`command="ls -l",no-pty`)
	f.Add(`from="*.example.org,10.0.0.0/8"`)
	f.Add(`expiry-time="202601011200"`)
	f.Fuzz(func(t *testing.T, line string) {
		opts := strings.Split(line, ",")
		o, err := ParseOptions(opts)
		if err != nil {
			return
		}
		if opts[len(opts)-1] == "restrict" && (!o.NoPTY || !o.NoForwards || !o.NoAgent) {
			t.Fatalf("%q ends in restrict but grants %+v", line, o)
		}
	})
}
