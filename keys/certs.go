package keys

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Certificate refusals, each for its own log line.
var (
	ErrUntrustedCA = errors.New("not signed by a trusted CA")
	ErrRevoked     = errors.New("revoked")
)

// supportedCritical are the critical options of OpenSSH user
// certificates that berth honours; any other refuses the certificate, as
// PROTOCOL.certkeys requires. Of the extensions, permit-pty,
// permit-port-forwarding and permit-agent-forwarding count.
var supportedCritical = []string{"force-command", "source-address"}

// AuthorizeCert decides whether cert lets its holder log in as user from
// source: signed by a CA in trusted_user_ca_keys, neither it nor its CA in
// revoked_keys, valid now, with user among its principals, and source
// allowed by its source-address. It returns the options the certificate
// grants and its CA's fingerprint. Both files are read at each call, so
// edits apply at the next login.
func (b *Book) AuthorizeCert(user string, cert *ssh.Certificate, source net.Addr) (Options, string, error) {
	ca := ssh.FingerprintSHA256(cert.SignatureKey)
	if _, ok := b.cfg.User(user); !ok {
		return Options{}, ca, ErrDenied
	}
	if cert.CertType != ssh.UserCert {
		return Options{}, ca, errors.New("a host certificate, not a user certificate")
	}
	trusted, err := b.readKeys(b.cfg.TrustedUserCAKeys)
	if err != nil {
		return Options{}, ca, fmt.Errorf("trusted_user_ca_keys: %w", err)
	}
	if !contains(trusted, cert.SignatureKey) {
		return Options{}, ca, ErrUntrustedCA
	}
	if err := b.checkRevoked(cert.Key, cert.SignatureKey); err != nil {
		return Options{}, ca, err
	}
	checker := ssh.CertChecker{SupportedCriticalOptions: supportedCritical}
	if err := checker.CheckCert(user, cert); err != nil {
		return Options{}, ca, errors.New(strings.TrimPrefix(err.Error(), "ssh: "))
	}
	if list, ok := cert.CriticalOptions["source-address"]; ok && !sourceAllowed(source, list) {
		return Options{}, ca, fmt.Errorf("its source-address %q does not allow %s", list, addrIP(source))
	}
	o := Options{
		Command:    cert.CriticalOptions["force-command"],
		NoPTY:      !has(cert.Extensions, "permit-pty"),
		NoForwards: !has(cert.Extensions, "permit-port-forwarding"),
		NoAgent:    !has(cert.Extensions, "permit-agent-forwarding"),
	}
	return o, ca, nil
}

// checkRevoked fails when any of keys is in revoked_keys. A revoked_keys
// that cannot be read refuses everyone, as sshd does: a missing
// revocation list must not let revoked keys back in.
func (b *Book) checkRevoked(keys ...ssh.PublicKey) error {
	if b.cfg.RevokedKeys == "" {
		return nil
	}
	revoked, err := b.readKeys(b.cfg.RevokedKeys)
	if err != nil {
		return fmt.Errorf("revoked_keys: %w", err)
	}
	for _, k := range keys {
		if contains(revoked, k) {
			return fmt.Errorf("%w: %s is in revoked_keys", ErrRevoked, ssh.FingerprintSHA256(k))
		}
	}
	return nil
}

// readKeys reads a file of public keys (or certificates, which stand for
// their keys), one per line, in authorized_keys form. A line that does not parse is an error: a list of CAs or
// revocations must be read whole.
func (b *Book) readKeys(path string) ([]ssh.PublicKey, error) {
	if path == "" {
		return nil, fs.ErrNotExist
	}
	entries, err := ReadFile(b.cfg.Path(path))
	if err != nil {
		return nil, err
	}
	out := make([]ssh.PublicKey, len(entries))
	for i, e := range entries {
		// A certificate line stands for its key, as sshd reads it.
		if cert, ok := e.Key.(*ssh.Certificate); ok {
			out[i] = cert.Key
		} else {
			out[i] = e.Key
		}
	}
	return out, nil
}

func contains(list []ssh.PublicKey, k ssh.PublicKey) bool {
	want := k.Marshal()
	for _, x := range list {
		if bytes.Equal(x.Marshal(), want) {
			return true
		}
	}
	return false
}

func has(m map[string]string, k string) bool {
	_, ok := m[k]
	return ok
}

// sourceAllowed matches an address against a certificate's
// source-address: addresses and CIDR prefixes, comma-separated.
func sourceAllowed(source net.Addr, list string) bool {
	ip := addrIP(source)
	for p := range strings.SplitSeq(list, ",") {
		p = strings.TrimSpace(p)
		if prefix, err := netip.ParsePrefix(p); err == nil && prefix.Contains(ip) {
			return true
		}
		if a, err := netip.ParseAddr(p); err == nil && a.Unmap() == ip {
			return true
		}
	}
	return false
}

// CertValidity describes a certificate's validity window for the log.
func CertValidity(c *ssh.Certificate) string {
	at := func(t uint64) string { return time.Unix(int64(t), 0).UTC().Format(time.RFC3339) }
	if c.ValidBefore == ssh.CertTimeInfinity {
		return "from " + at(c.ValidAfter) + ", forever"
	}
	return at(c.ValidAfter) + " to " + at(c.ValidBefore)
}
