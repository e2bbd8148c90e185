package agent

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// accountFiles names the account databases. provision takes them as an
// argument so that its tests can use a scratch directory.
type accountFiles struct {
	passwd, group, shadow, sudoers, skel, profile, pipConf string
	// homes is where home directories are.
	homes string
}

var etc = accountFiles{
	passwd:  "/etc/passwd",
	group:   "/etc/group",
	shadow:  "/etc/shadow",
	sudoers: "/etc/sudoers.d",
	skel:    "/etc/skel",
	profile: "/etc/profile.d",
	pipConf: pipConfPath,
	homes:   "/home",
}

// Provision makes the account exist in the container: its group, its
// passwd and shadow entries, its sudo rule and a populated home. It edits
// the files directly, so images without useradd or sudo work, and it is
// idempotent, so a restarted container is provisioned again harmlessly.
// It returns the account's shell: bash when the image has it, else sh.
func Provision(a Account, env []string) (shell string, err error) {
	return provision(etc, a, env)
}

func provision(f accountFiles, a Account, env []string) (string, error) {
	shell := "/bin/sh"
	if _, err := os.Stat("/bin/bash"); err == nil {
		shell = "/bin/bash"
	}
	if err := ensureGroup(f.group, a); err != nil {
		return "", err
	}
	entry := fmt.Sprintf("%s:x:%d:%d:%s:%s:%s", a.Name, a.UID, a.GID, a.Name, a.Home(), shell)
	if err := replaceEntries(f.passwd, entry, func(fields []string) bool {
		return fields[0] == a.Name || (len(fields) > 2 && fields[2] == strconv.Itoa(a.UID))
	}); err != nil {
		return "", err
	}
	if _, err := os.Stat(f.shadow); err == nil {
		if err := replaceEntries(f.shadow, a.Name+":*:19000:0:99999:7:::", func(fields []string) bool {
			return fields[0] == a.Name
		}); err != nil {
			return "", err
		}
	}
	if err := writeSudoRule(f.sudoers, a); err != nil {
		return "", err
	}
	if err := writeVenvProfile(f.profile); err != nil {
		return "", err
	}
	if err := writePipConf(f.pipConf, env); err != nil {
		return "", err
	}
	if err := writeProfile(f.profile, env); err != nil {
		return "", err
	}
	if err := populateHome(f.skel, filepath.Join(f.homes, a.Name), a); err != nil {
		return "", err
	}
	return shell, nil
}

// ensureGroup makes a group with the account's gid exist. An existing
// group with that gid is kept under its own name.
func ensureGroup(path string, a Account) error {
	lines, err := readLines(path)
	if err != nil {
		return err
	}
	gid := strconv.Itoa(a.GID)
	for _, l := range lines {
		if fields := strings.Split(l, ":"); len(fields) > 2 && fields[2] == gid {
			return nil
		}
	}
	return replaceEntries(path, fmt.Sprintf("%s:x:%d:", a.Name, a.GID), func(fields []string) bool {
		return fields[0] == a.Name
	})
}

// replaceEntries rewrites a colon-separated database with the entries that
// match drop removed and entry added first, so that lookups by uid find it
// before any other. The file is replaced atomically, keeping its mode.
func replaceEntries(path, entry string, drop func(fields []string) bool) error {
	lines, err := readLines(path)
	if err != nil {
		return err
	}
	out := []string{}
	inserted := false
	for _, l := range lines {
		fields := strings.Split(l, ":")
		if l != "" && drop(fields) {
			continue
		}
		// Keep root and the other system accounts first, then ours.
		if !inserted && !isSystemEntry(fields) {
			out = append(out, entry)
			inserted = true
		}
		out = append(out, l)
	}
	if !inserted {
		out = append(out, entry)
	}
	return writeFileAtomic(path, []byte(strings.Join(out, "\n")+"\n"))
}

func isSystemEntry(fields []string) bool {
	if len(fields) < 3 {
		return true
	}
	id, err := strconv.Atoi(fields[2])
	return err == nil && id < 1000
}

func readLines(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if l := sc.Text(); l != "" {
			lines = append(lines, l)
		}
	}
	return lines, sc.Err()
}

func writeFileAtomic(path string, data []byte) error {
	mode := fs.FileMode(0o644)
	if st, err := os.Stat(path); err == nil {
		mode = st.Mode().Perm()
	}
	tmp := path + ".berth-tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// writeSudoRule gives the account passwordless sudo, or takes it away.
func writeSudoRule(dir string, a Account) error {
	path := filepath.Join(dir, "berth")
	if !a.Sudo {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	if _, err := os.Stat(dir); err != nil {
		return nil // no sudo in this image
	}
	return writeFileAtomic(path, []byte(a.Name+" ALL=(ALL:ALL) NOPASSWD: ALL\n"))
}

// writeProfile keeps the image's PATH for login shells. Debian's and
// Ubuntu's /etc/profile reset PATH, which would hide e.g. CUDA's tools that
// an nvidia/cuda image puts on it.
func writeProfile(dir string, env []string) error {
	if _, err := os.Stat(dir); err != nil {
		return nil
	}
	path := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	if path == "" || strings.ContainsAny(path, "'\n") {
		return nil
	}
	return writeFileAtomic(filepath.Join(dir, "00-berth-path.sh"),
		[]byte("# Written by berth: keep the image's PATH in login shells.\nexport PATH='"+path+"'\n"))
}

// writeVenvProfile activates the user's ~/.venv in login shells.
func writeVenvProfile(dir string) error {
	if _, err := os.Stat(dir); err != nil {
		return nil
	}
	return writeFileAtomic(filepath.Join(dir, "zz-berth-venv.sh"), []byte(venvProfile))
}

// populateHome gives a new home the image's skeleton files (.bashrc and
// friends), owned by the account. An existing file is never overwritten:
// the home is the user's persistent data.
func populateHome(skel, home string, a Account) error {
	if err := os.MkdirAll(home, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(skel)
	if err != nil {
		return nil
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		dst := filepath.Join(home, e.Name())
		if _, err := os.Lstat(dst); err == nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(skel, e.Name()))
		if err != nil {
			continue
		}
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			return err
		}
		if err := os.Lchown(dst, a.UID, a.GID); err != nil {
			return err
		}
	}
	return nil
}

// supplementaryGroups lists the gids of the groups that name the user as a
// member, plus gid itself.
func supplementaryGroups(name string, gid int) []uint32 {
	return supplementaryGroupsFrom(etc.group, name, gid)
}

func supplementaryGroupsFrom(path, name string, gid int) []uint32 {
	groups := []uint32{uint32(gid)}
	lines, _ := readLines(path)
	for _, l := range lines {
		fields := strings.Split(l, ":")
		if len(fields) < 4 {
			continue
		}
		for _, m := range strings.Split(fields[3], ",") {
			if m == name {
				if id, err := strconv.Atoi(fields[2]); err == nil && id != gid {
					groups = append(groups, uint32(id))
				}
			}
		}
	}
	return groups
}
