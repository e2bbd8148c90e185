package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// OpenSSH user certificates made by ssh-keygen: one signed by a CA in
// trusted_user_ca_keys, valid now, naming the login among its principals,
// logs in without the key being in any authorized_keys; its critical
// options and extensions bind the session. Expired, wrong-principal,
// untrusted, out-of-network and revoked certificates are refused, each
// with a log line saying why. Revoking the CA revokes all it signed.
func TestUserCertificates(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, rogue := filepath.Join(dir, "ca"), filepath.Join(dir, "rogue")
	for _, k := range []string{ca, rogue} {
		mustOutput(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", filepath.Base(k), "-f", k)
	}
	caPub, _ := os.ReadFile(ca + ".pub")
	os.WriteFile(filepath.Join(dir, "trusted"), caPub, 0o644)
	revoked := filepath.Join(dir, "revoked")
	os.WriteFile(revoked, nil, 0o644)

	alice := newUser(t, "alice")
	configured := alice
	configured.pub = newUser(t, "decoy").pub // alice's own key is in no authorized_keys
	g := startGateway(t, options{extra: "trusted_user_ca_keys: " + filepath.Join(dir, "trusted") + "\nrevoked_keys: " + revoked + "\n"}, configured)

	// cert signs a copy of alice's key and returns alice holding only it.
	n := 0
	cert := func(signer string, args ...string) user {
		t.Helper()
		n++
		key := filepath.Join(dir, "alice"+string(rune('a'+n)))
		data, _ := os.ReadFile(alice.key)
		os.WriteFile(key, data, 0o600)
		os.WriteFile(key+".pub", []byte(alice.pub+"\n"), 0o644)
		mustOutput(t, "ssh-keygen", append([]string{"-q", "-s", signer, "-I", "alice-" + string(rune('a'+n))}, append(args, key+".pub")...)...)
		u := alice
		u.key = key
		certLine, _ := os.ReadFile(key + "-cert.pub")
		pub, _, _, _, err := ssh.ParseAuthorizedKey(certLine)
		if err != nil {
			t.Fatal(err)
		}
		if u.signer, err = ssh.NewCertSigner(pub.(*ssh.Certificate), alice.signer); err != nil {
			t.Fatal(err)
		}
		return u
	}
	refused := func(u user, logged string) {
		t.Helper()
		if r := run(t, g.ssh(u, nil, "true"), ""); r.code != 255 || !strings.Contains(r.stderr, "Permission denied") {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		if g.logs.count("certificate refused", logged) == 0 {
			t.Fatalf("no log line with %q:\n%s", logged, g.logs)
		}
	}

	good := cert(ca, "-n", alice.name, "-V", "-5m:+1h")
	if out := g.runOK(good, "id -un"); out != alice.name+"\n" {
		t.Fatalf("certificate login: %q", out)
	}
	if g.logs.count("authenticated", "ca=SHA256:", "cert_id=alice-") == 0 {
		t.Fatalf("the login does not name the CA and certificate:\n%s", g.logs)
	}
	if r := run(t, g.ssh(alice, nil, "true"), ""); r.code != 255 { // the key alone is not enough
		t.Fatalf("the bare key: exit %d", r.code)
	}
	refused(cert(ca, "-n", alice.name, "-V", "20200101:20200102"), "cert has expired")
	refused(cert(ca, "-n", "bob,"+alice.name+"x", "-V", "+1h"), "not in the set of valid principals")
	refused(cert(rogue, "-n", alice.name, "-V", "+1h"), "not signed by a trusted CA")
	refused(cert(ca, "-n", alice.name, "-V", "+1h", "-O", "source-address=10.0.0.0/8"), "source-address")

	// force-command and a missing permit-pty bind the session.
	forced := cert(ca, "-n", alice.name, "-V", "+1h", "-O", "force-command=echo forced: $SSH_ORIGINAL_COMMAND", "-O", "no-pty")
	if out := g.runOK(forced, "id"); out != "forced: id\n" {
		t.Fatalf("force-command: %q", out)
	}
	noPTY := cert(ca, "-n", alice.name, "-V", "+1h", "-O", "no-pty", "-O", "no-port-forwarding")
	if r := run(t, g.ssh(noPTY, []string{"-tt"}, "tty"), ""); r.code == 0 || !strings.Contains(r.stderr, "PTY allocation request failed") {
		t.Fatalf("without permit-pty: %q %q", r.stdout, r.stderr)
	}
	if _, err := g.dial(noPTY).Dial("tcp", "127.0.0.1:22"); err == nil || !strings.Contains(err.Error(), "prohibited") {
		t.Fatalf("without permit-port-forwarding: %v", err)
	}

	// Revoking a certificate (by its -cert.pub line, as sshd takes it),
	// then the CA itself.
	certLine, _ := os.ReadFile(good.key + "-cert.pub")
	os.WriteFile(revoked, certLine, 0o644)
	refused(good, "is in revoked_keys")
	fresh := cert(ca, "-n", alice.name, "-V", "+1h")
	os.WriteFile(revoked, caPub, 0o644)
	refused(fresh, "is in revoked_keys")
	if !regexp.MustCompile(`certificate refused.*ca=SHA256:`).MatchString(g.logs.String()) {
		t.Fatalf("refusals do not name the CA:\n%s", g.logs)
	}
}
