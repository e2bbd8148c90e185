package e2e

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// offeredSigner offers one user's public key but signs with another's
// private key, as a client that holds only the second one would. signed
// records that the server accepted the offer: x/crypto's client signs only
// after the server answered the unsigned query with PK_OK.
type offeredSigner struct {
	offered ssh.PublicKey
	real    ssh.Signer
	signed  *atomic.Bool
}

func (s offeredSigner) PublicKey() ssh.PublicKey { return s.offered }

func (s offeredSigner) Sign(rand io.Reader, data []byte) (*ssh.Signature, error) {
	s.signed.Store(true)
	return s.real.Sign(rand, data)
}

func (s offeredSigner) SignWithAlgorithm(rand io.Reader, data []byte, algorithm string) (*ssh.Signature, error) {
	s.signed.Store(true)
	return s.real.(ssh.AlgorithmSigner).SignWithAlgorithm(rand, data, algorithm)
}

// Identity comes only from a key the client proved it holds.
func TestOfferingAnotherUsersKeyDoesNotLogYouIn(t *testing.T) {
	t.Parallel()
	alice, bob := newUser(t, "alice"), newUser(t, "bob")
	g := startGateway(t, options{}, alice, bob)

	dial := func(login string, auth ...ssh.AuthMethod) error {
		c, err := ssh.Dial("tcp", g.addr, &ssh.ClientConfig{
			User: login, Auth: auth, HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second,
		})
		if err == nil {
			c.Close()
		}
		return err
	}

	// Offer alice's public key without being able to sign for it; the
	// server accepts the query. Then sign with bob's key.
	var queried atomic.Bool
	fake := offeredSigner{offered: alice.signer.PublicKey(), real: bob.signer, signed: &queried}
	err := dial(alice.name, ssh.PublicKeys(fake), ssh.PublicKeys(bob.signer))
	if !queried.Load() {
		t.Fatal("the server refused the unsigned query for alice's key; the test proves nothing")
	}
	if err == nil {
		t.Fatal("logged in as alice after offering her key and signing with bob's")
	}

	// Bob's own key works for bob, and bob is who he is inside.
	if out := g.runOK(bob, "id -un"); strings.TrimSpace(out) != bob.name {
		t.Fatalf("bob logged in as %q", out)
	}
}

func TestUnknownUserAndWrongKeyAreRefusedAlike(t *testing.T) {
	t.Parallel()
	alice, mallory := newUser(t, "alice"), newUser(t, "mallory")
	g := startGateway(t, options{}, alice)

	wrongKey := mallory
	wrongKey.name = alice.name
	unknown := run(t, g.ssh(mallory, nil, "true"), "")
	wrong := run(t, g.ssh(wrongKey, nil, "true"), "")
	for _, r := range []result{unknown, wrong} {
		if r.code != 255 || !strings.Contains(r.stderr, "Permission denied (publickey)") {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
	}
	if unknown.stderr != strings.ReplaceAll(wrong.stderr, alice.name, mallory.name) {
		t.Fatalf("refusals differ:\n%q\n%q", unknown.stderr, wrong.stderr)
	}
	fp := ssh.FingerprintSHA256(mallory.signer.PublicKey())
	if g.logs.count("key refused", "user="+alice.name, fp, "source=127.0.0.1") == 0 ||
		g.logs.count("key refused", "user="+mallory.name, fp, "source=127.0.0.1") == 0 {
		t.Fatalf("refusals not logged with user, key and source:\n%s", g.logs)
	}
	// Nobody got a container out of it.
	if _, err := docker.ContainerInspect(t.Context(), "berth-"+mallory.name, client.ContainerInspectOptions{}); err == nil {
		t.Fatal("a refused user got a container")
	}
}

func TestInvalidLoginNamesAreRefusedBeforeAnythingElse(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	for _, name := range []string{"../etc", "Alice", "a b", "x;reboot", strings.Repeat("a", 33)} {
		u := alice
		u.name = name
		if r := run(t, g.ssh(u, nil, "true"), ""); r.code != 255 {
			t.Fatalf("login as %q: exit %d", name, r.code)
		}
	}
	if n := g.logs.count("invalid login name"); n == 0 {
		t.Fatalf("invalid names not logged:\n%s", g.logs)
	}
}

func TestHostKeysAreStableAcrossRestarts(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	state := shortTempDir(t)
	hostKey := func() string {
		g := startGateway(t, options{stateDir: state}, alice)
		var fp string
		c, err := ssh.Dial("tcp", g.addr, &ssh.ClientConfig{
			User: alice.name, Auth: []ssh.AuthMethod{ssh.PublicKeys(alice.signer)},
			HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
				fp = ssh.FingerprintSHA256(key)
				return nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		return fp
	}
	if a, b := hostKey(), hostKey(); a != b || a == "" {
		t.Fatalf("host key changed across restarts: %s then %s", a, b)
	}
}

func TestForcedCommandWinsOverVerbsAndRequests(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	alice.pub = `command="echo forced:${SSH_ORIGINAL_COMMAND-none}" ` + alice.pub
	g := startGateway(t, options{}, alice)
	for remote, want := range map[string]string{"status": "forced:status", "id -un": "forced:id -un", "": "forced:none"} {
		var r result
		if remote == "" {
			r = run(t, g.ssh(alice, []string{"-T"}), "")
		} else {
			r = run(t, g.ssh(alice, nil, remote), "")
		}
		if r.code != 0 || !strings.HasSuffix(r.stdout, want+"\n") {
			t.Errorf("ssh %q: exit %d, stdout %q, stderr %q; want %q", remote, r.code, r.stdout, r.stderr, want)
		}
	}
}

func TestRestrictedKeyGetsNoTerminalAndNoForwarding(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	alice.pub = "restrict " + alice.pub
	g := startGateway(t, options{}, alice)
	// An explicit -tt fails when the terminal is refused, as with sshd.
	r := run(t, g.ssh(alice, []string{"-tt"}, "tty"), "")
	if r.code == 0 || !strings.Contains(r.stderr, "PTY allocation request failed") {
		t.Fatalf("restrict and -tt: exit %d, stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	c := g.dial(alice)
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.RequestAgentForwarding(s); err == nil {
		t.Fatal("restrict allowed agent forwarding")
	}
	s.Close()
	if _, err := c.Dial("tcp", "127.0.0.1:22"); err == nil || !strings.Contains(err.Error(), "prohibited") {
		t.Fatalf("restrict allowed -L: %v", err)
	}
}

func TestAKeyWithAnOptionBerthCannotEnforceIsRefused(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	alice.pub = `tunnel="0" ` + alice.pub
	g := startGateway(t, options{}, alice)
	if r := run(t, g.ssh(alice, nil, "true"), ""); r.code != 255 || !strings.Contains(r.stderr, "Permission denied") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if g.logs.count("key refused: its options", "not supported") == 0 {
		t.Fatalf("no log line:\n%s", g.logs)
	}
}

func TestAWrongKeyEarnsItsSourceAPenaltyButAProbeDoesNot(t *testing.T) {
	t.Parallel()
	alice, mallory := newUser(t, "alice"), newUser(t, "mallory")
	g := startGateway(t, options{penalties: true, extra: "penalty: 2s\n"}, alice)
	// A port probe, as a health check makes, is no failed login.
	if c, err := net.Dial("tcp", g.addr); err == nil {
		c.Close()
	}
	g.runOK(alice, "true")

	if r := run(t, g.ssh(mallory, nil, "true"), ""); r.code != 255 {
		t.Fatal("an unknown user got in")
	}
	r := run(t, g.ssh(alice, nil, "true"), "")
	if r.code != 255 || strings.Contains(r.stderr, "Permission denied") {
		t.Fatalf("right after a wrong key, the source was not turned away: exit %d %q", r.code, r.stderr)
	}
	if g.logs.count("connection turned away", "penalised for failed logins") == 0 {
		t.Fatalf("no log line for the penalty:\n%s", g.logs)
	}
	waitFor(t, "the penalty to pass", 15*time.Second, func() bool {
		return run(t, g.ssh(alice, nil, "true"), "").code == 0
	})
}

func TestMaxStartupsCapsConnectionsThatHaveNotLoggedIn(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{extra: "max_startups: \"2\"\n"}, alice)
	g.runOK(alice, "true")
	var idle []net.Conn
	for range 2 { // connections that never say a word
		c, err := net.Dial("tcp", g.addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	waitFor(t, "the idle connections to count", 10*time.Second, func() bool {
		return run(t, g.ssh(alice, nil, "true"), "").code == 255 && g.logs.count("max_startups full") > 0
	})
	for _, c := range idle {
		c.Close()
	}
	waitFor(t, "room again", 10*time.Second, func() bool {
		return run(t, g.ssh(alice, nil, "true"), "").code == 0
	})
}

// withOptions is u with authorized_keys options in front of its key.
func withOptions(u user, opts string) user {
	u.pub = opts + " " + u.pub
	return u
}

// from= and expiry-time= decide whether the key works at all: from
// loopback, a key limited to another network is refused, as is a key
// whose time has passed; each refusal is logged with its reason.
func TestFromAndExpiryTimeLimitWhenAndWhereAKeyWorks(t *testing.T) {
	t.Parallel()
	here := withOptions(newUser(t, "here"), `from="127.0.0.0/8,!127.0.0.2"`)
	elsewhere := withOptions(newUser(t, "away"), `from="10.0.0.0/8"`)
	current := withOptions(newUser(t, "cur"), `expiry-time="`+time.Now().Add(24*time.Hour).UTC().Format("20060102")+`Z"`)
	expired := withOptions(newUser(t, "exp"), `expiry-time="20200101"`)
	g := startGateway(t, options{}, here, elsewhere, current, expired)
	for _, u := range []user{here, current} {
		g.runOK(u, "true")
	}
	for _, u := range []user{elsewhere, expired} {
		if r := run(t, g.ssh(u, nil, "true"), ""); r.code != 255 || !strings.Contains(r.stderr, "Permission denied") {
			t.Fatalf("%s: exit %d %q", u.name, r.code, r.stderr)
		}
	}
	if g.logs.count("key refused: its options", "user="+elsewhere.name, "from= does not allow this address: 127.0.0.1") == 0 ||
		g.logs.count("key refused: its options", "user="+expired.name, "expiry-time has passed") == 0 {
		t.Fatalf("refusals not logged with their reasons:\n%s", g.logs)
	}
}

// permitopen= limits where ssh -L and -D go, and permitlisten= where ssh
// -R listens, inside the container; everything else is refused.
func TestPermitOpenAndPermitListenLimitForwards(t *testing.T) {
	t.Parallel()
	alice := withOptions(newUser(t, "alice"), `permitopen="localhost:8127",permitlisten="9127"`)
	g := startGateway(t, options{}, alice)
	want := g.serveHTTPInside(alice, 8127)
	c := g.dial(alice)
	conn, err := c.Dial("tcp", "localhost:8127")
	if err != nil {
		t.Fatalf("the permitted forward: %v", err)
	}
	fmt.Fprintf(conn, "GET /index.txt HTTP/1.0\r\n\r\n")
	body, _ := io.ReadAll(conn)
	conn.Close()
	if !strings.HasSuffix(string(body), want) {
		t.Fatalf("through the permitted forward: %q", body)
	}
	for _, dest := range []string{"127.0.0.1:8127", "localhost:22"} {
		if _, err := c.Dial("tcp", dest); err == nil || !strings.Contains(err.Error(), "permitopen") {
			t.Fatalf("forward to %s: %v", dest, err)
		}
	}
	l, err := c.Listen("tcp", "127.0.0.1:9127")
	if err != nil {
		t.Fatalf("the permitted listen: %v", err)
	}
	l.Close()
	if _, err := c.Listen("tcp", "127.0.0.1:9128"); err == nil {
		t.Fatal("a listen permitlisten does not name was allowed")
	}
	if g.logs.count("forward refused: the key's permitopen", "localhost:22") == 0 || g.logs.count("remote forward refused", "9128") == 0 {
		t.Fatalf("refusals not logged:\n%s", g.logs)
	}
}

// environment= applies only where the operator allows it, as sshd's
// PermitUserEnvironment; it never replaces berth's own SSH_ variables.
func TestEnvironmentOptionOnlyWhereAllowed(t *testing.T) {
	t.Parallel()
	alice := withOptions(newUser(t, "alice"), `environment="LAB=vision",environment="SSH_CONNECTION=forged"`)
	shared := options{stateDir: shortTempDir(t), dataRoot: t.TempDir()}
	off := startGateway(t, shared, alice)
	if out := off.runOK(alice, "echo ${LAB:-unset}"); out != "unset\n" {
		t.Fatalf("without permit_user_environment: %q", out)
	}
	shared.extra = "permit_user_environment: true\n"
	on := startGateway(t, shared, alice)
	if out := on.runOK(alice, "echo $LAB; echo $SSH_CONNECTION"); !strings.HasPrefix(out, "vision\n127.0.0.1 ") {
		t.Fatalf("with permit_user_environment: %q", out)
	}
}
