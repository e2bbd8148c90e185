package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// Identity comes only from a key the client proved it holds: a client
// that offers alice's key (accepted as a query) and then signs with bob's
// is not alice.
func TestOfferingAnotherUsersKeyDoesNotLogYouIn(t *testing.T) {
	t.Parallel()
	alice, bob := newUser(t, "alice"), newUser(t, "bob")
	g := startGateway(t, options{}, alice, bob)
	if r := g.offerThenSign(alice.name, alice.signer.PublicKey(), bob, "id -un"); r.code != 255 || r.stdout != "" {
		t.Fatalf("logged in as alice after offering her key and signing with bob's: exit %d %q", r.code, r.stdout)
	}
	// Bob's own key works for bob, and bob is who he is inside.
	if out := g.runOK(bob, "id -un"); strings.TrimSpace(out) != bob.name {
		t.Fatalf("bob logged in as %q", out)
	}
}

// halfAgent is an SSH agent that lists a key it cannot sign with before
// the one it can: what a client holding only one of the two looks like.
type halfAgent struct {
	agent.Agent // holds the key it can sign with
	offered     ssh.PublicKey
}

func (a halfAgent) List() ([]*agent.Key, error) {
	keys, err := a.Agent.List()
	return append([]*agent.Key{{Format: a.offered.Type(), Blob: a.offered.Marshal(), Comment: "offered only"}}, keys...), err
}

func (a halfAgent) Sign(key ssh.PublicKey, data []byte) (*ssh.Signature, error) {
	return a.SignWithFlags(key, data, 0)
}

func (a halfAgent) SignWithFlags(key ssh.PublicKey, data []byte, flags agent.SignatureFlags) (*ssh.Signature, error) {
	if bytes.Equal(key.Marshal(), a.offered.Marshal()) {
		return nil, errors.New("this agent cannot sign with that key")
	}
	return a.Agent.(agent.ExtendedAgent).SignWithFlags(key, data, flags)
}

// offerThenSign logs in as login with OpenSSH, whose agent offers the
// public key offered first, which it cannot sign with, and then holder's
// key, which it can: the client of CVE-2024-45337. It fails the test
// unless the server accepted the query for offered, without which the
// test would prove nothing.
func (g *gw) offerThenSign(login string, offered ssh.PublicKey, holder user, command string) result {
	t := g.t
	t.Helper()
	pemBytes, _ := os.ReadFile(holder.key)
	priv, err := ssh.ParseRawPrivateKey(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	ring := agent.NewKeyring()
	ring.Add(agent.AddedKey{PrivateKey: priv})
	sock := filepath.Join(shortTempDir(t), "agent")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go agent.ServeAgent(halfAgent{ring, offered}, c)
		}
	}()
	cmd := exec.Command("ssh", "-F", "none", "-v", "-p", g.port, "-o", "IdentityAgent="+sock, "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", login+"@127.0.0.1", command)
	r := run(t, cmd, "")
	fp := ssh.FingerprintSHA256(offered)
	if !regexp.MustCompile(`Server accepts key: offered only ED25519 ` + regexp.QuoteMeta(fp)).MatchString(r.stderr) {
		t.Fatalf("the server did not accept the query for the offered key; the test proves nothing:\n%s", r.stderr)
	}
	return r
}

// The CVE-2024-45337 pattern within one user: alice's K1 carries
// restrict and a forced command, her K2 nothing. A client holding only
// K1's private key offers K2 first; the server accepts the query; the
// client cannot sign with K2 and signs with K1. The session gets K1's
// restrictions, never K2's freedom.
func TestOfferingAnUnrestrictedKeyThenSigningWithARestrictedOneKeepsTheRestrictions(t *testing.T) {
	t.Parallel()
	k1, k2 := newUser(t, "alice"), newUser(t, "k2")
	g := startGateway(t, options{extra: "users:\n  - name: " + k1.name + "\n    uid: 3000\n    authorized_keys:\n" +
		"      - 'restrict,command=\"echo forced\" " + k1.pub + "'\n      - '" + k2.pub + "'\n"})

	r := g.offerThenSign(k1.name, k2.signer.PublicKey(), k1, "id -un")
	if r.stdout != "forced\n" {
		t.Fatalf("K1's forced command did not run (K2 would have run id): stdout %q\n%s", r.stdout, r.stderr)
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
