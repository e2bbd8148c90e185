// Package keys decides who may log in as whom: a login name and a public
// key are allowed when the key is in that user's authorized keys.
//
//	book := keys.New(cfg)
//	entry, err := book.Authorize("alice", key)
//	if errors.Is(err, keys.ErrDenied) { ... }
//
// Authorize is called for every key a client offers, whether or not the
// client can sign with it, so its answer must never be taken as the
// identity of a connection. Only the permissions that x/crypto/ssh hands
// back after a verified signature may be (see gateway).
package keys

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/berth-ssh/berth/config"
)

// ErrDenied is returned for an unknown user and for a key that is not
// theirs alike, so that names cannot be probed.
var ErrDenied = errors.New("permission denied")

// Entry is the authorized_keys line that allowed a key.
type Entry struct {
	Key     ssh.PublicKey
	Comment string
	// Options are the line's authorized_keys options, e.g. "no-pty".
	Options []string
	// Source is where the line came from: a file path, or "config".
	Source string
}

// Book answers Authorize from the users in a config. It holds no state of
// its own: inline keys come from the config and key files are read at each
// call, as OpenSSH's sshd does, so an edited file takes effect at once.
type Book struct {
	cfg *config.Config
}

// New returns a Book over cfg's users.
func New(cfg *config.Config) *Book { return &Book{cfg: cfg} }

// Authorize returns the entry that lets key log in as user, or ErrDenied.
// It looks in the user's authorized_keys entries and in keys_dir/<user>.
// Errors reading a key file are wrapped in the returned error alongside
// ErrDenied, so the caller can log them.
func (b *Book) Authorize(user string, key ssh.PublicKey) (Entry, error) {
	u, ok := b.cfg.User(user)
	if !ok {
		return Entry{}, ErrDenied
	}
	if err := b.checkRevoked(key); err != nil {
		return Entry{}, errors.Join(ErrDenied, err)
	}
	want := key.Marshal()
	var problems []error
	if entries, err := ReadFile(b.userFile(user)); err == nil || !errors.Is(err, fs.ErrNotExist) {
		if err != nil {
			problems = append(problems, err)
		}
		for _, e := range entries {
			if bytes.Equal(e.Key.Marshal(), want) {
				return e, nil
			}
		}
	}
	for _, line := range u.AuthorizedKeys {
		var entries []Entry
		if config.IsKeyPath(line) {
			path := b.cfg.Path(line)
			e, err := ReadFile(path)
			if err != nil {
				problems = append(problems, err)
			}
			entries = e
		} else {
			e, err := parseLine([]byte(line), "config")
			if err != nil {
				problems = append(problems, err)
				continue
			}
			entries = []Entry{e}
		}
		for _, e := range entries {
			if bytes.Equal(e.Key.Marshal(), want) {
				return e, nil
			}
		}
	}
	return Entry{}, errors.Join(append([]error{ErrDenied}, problems...)...)
}

// Check reads every user's keys, as the next logins will, and reports
// what fails to read or parse: a missing or unreadable key file, or a
// line that is not a key. A user with no file in keys_dir is fine.
// /readyz calls it, so a broken edit shows before someone is locked out.
func (b *Book) Check() error {
	var problems []error
	for _, f := range []struct{ key, path string }{{"trusted_user_ca_keys", b.cfg.TrustedUserCAKeys}, {"revoked_keys", b.cfg.RevokedKeys}} {
		if f.path == "" {
			continue
		}
		if _, err := b.readKeys(f.path); err != nil {
			problems = append(problems, fmt.Errorf("%s: %w", f.key, err))
		}
	}
	for _, u := range b.cfg.Users {
		if _, err := ReadFile(b.userFile(u.Name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			problems = append(problems, err)
		}
		for _, line := range u.AuthorizedKeys {
			var err error
			if config.IsKeyPath(line) {
				_, err = ReadFile(b.cfg.Path(line))
			} else if _, err = parseLine([]byte(line), "config"); err != nil {
				err = fmt.Errorf("users %s: authorized_keys: %w", u.Name, err)
			}
			if err != nil {
				problems = append(problems, err)
			}
		}
	}
	return errors.Join(problems...)
}

// userFile is the user's file in keys_dir. The name was validated as a
// login name before any call reaches here.
func (b *Book) userFile(user string) string { return filepath.Join(b.cfg.KeysDir, user) }

// Add appends an authorized_keys line to user's file in keys_dir, after
// checking that it parses and is not there yet. The file is replaced
// atomically, so a login never reads half of it; it counts at the next
// login, with no restart.
func (b *Book) Add(user, line string) (Entry, error) {
	if _, ok := b.cfg.User(user); !ok {
		return Entry{}, fmt.Errorf("%q is not a configured user", user)
	}
	line = strings.TrimSpace(line)
	e, err := parseLine([]byte(line), "")
	if err != nil {
		return Entry{}, fmt.Errorf("not an authorized_keys line: %w", err)
	}
	if _, err := ParseOptions(e.Options); err != nil {
		return Entry{}, err
	}
	path := b.userFile(user)
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Entry{}, err
	}
	existing, _ := ReadFile(path)
	for _, x := range existing {
		if bytes.Equal(x.Key.Marshal(), e.Key.Marshal()) {
			return Entry{}, fmt.Errorf("the key %s is already there", ssh.FingerprintSHA256(e.Key))
		}
	}
	if err := os.MkdirAll(b.cfg.KeysDir, 0o755); err != nil {
		return Entry{}, err
	}
	if len(old) > 0 && old[len(old)-1] != '\n' {
		old = append(old, '\n')
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(old, line+"\n"...), 0o644); err != nil {
		return Entry{}, err
	}
	e.Source = path
	return e, os.Rename(tmp, path)
}

// ReadFile parses an authorized_keys file. Blank lines and comments are
// skipped; a line that does not parse is reported, and the rest still count.
func ReadFile(path string) ([]Entry, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read keys: %w", err)
	}
	return parseFile(data, path)
}

// parseFile parses an authorized_keys file's contents; path names it in
// errors.
func parseFile(data []byte, path string) ([]Entry, error) {
	var entries []Entry
	var problems []error
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		e, err := parseLine(line, path)
		if err != nil {
			problems = append(problems, fmt.Errorf("%s:%d: %w", path, n, err))
			continue
		}
		entries = append(entries, e)
	}
	return entries, errors.Join(problems...)
}

func parseLine(line []byte, source string) (Entry, error) {
	key, comment, options, _, err := ssh.ParseAuthorizedKey(line)
	if err != nil {
		return Entry{}, err
	}
	return Entry{Key: key, Comment: comment, Options: options, Source: source}, nil
}
