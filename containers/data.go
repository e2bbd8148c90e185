package containers

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/berth-ssh/berth/agent"
	"github.com/berth-ssh/berth/config"
)

// dataDirs are a user's persistent directories on the host.
type dataDirs struct {
	home, projects, vscode string
}

// prepareData makes <data_root>/<user>/{home,projects,vscode-server},
// owned by the user. data_root itself and each user's directory are root's
// and mode 0700, so setuid files made inside a container cannot help other
// users of the host. Existing directories are left as they are, content
// and all: this is the user's data.
func (m *Manager) prepareData(a agent.Account) (dataDirs, error) {
	root := m.cfg.DataRoot
	if err := mkdirOwned(root, 0o700, 0, 0); err != nil {
		return dataDirs{}, err
	}
	base := filepath.Join(root, a.Name)
	if err := mkdirOwned(base, 0o700, 0, 0); err != nil {
		return dataDirs{}, err
	}
	d := dataDirs{
		home:     filepath.Join(base, "home"),
		projects: filepath.Join(base, "projects"),
		vscode:   filepath.Join(base, "vscode-server"),
	}
	// The last two are mount points inside the home mount; made here,
	// Docker would make them root's.
	for _, dir := range []string{d.home, d.projects, d.vscode,
		filepath.Join(d.home, "projects"), filepath.Join(d.home, ".vscode-server")} {
		if err := mkdirOwned(dir, 0o755, a.UID, a.GID); err != nil {
			return dataDirs{}, err
		}
	}
	return d, nil
}

// mkdirOwned makes dir with mode and owner unless it exists. An existing
// directory keeps its owner; its mode is tightened when it is too loose
// for a root-owned one.
func mkdirOwned(dir string, mode fs.FileMode, uid, gid int) error {
	st, err := os.Lstat(dir)
	if err == nil {
		if !st.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", dir)
		}
		if uid == 0 && st.Mode().Perm() != mode {
			return os.Chmod(dir, mode)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Mkdir(dir, mode); err != nil {
		return err
	}
	if err := os.Chmod(dir, mode); err != nil { // past the umask
		return err
	}
	return os.Lchown(dir, uid, gid)
}

// account resolves a configured user to the account in their container.
func (m *Manager) account(u config.User) (agent.Account, error) {
	uid, gid, err := m.accounts.ids(u)
	if err != nil {
		return agent.Account{}, err
	}
	return agent.Account{Name: u.Name, UID: uid, GID: gid, Sudo: m.cfg.SudoFor(u)}, nil
}

// accounts finds a user's uid and gid: from the config, else the host's
// passwd entry for the name, else one berth allocated and kept in a file
// in state_dir, so it stays the same across restarts.
type accounts struct {
	path string
	mu   sync.Mutex
}

// firstAllocated is where berth's own uids start, clear of the host's
// usual range for people.
const firstAllocated = 20000

func (a *accounts) ids(u config.User) (uid, gid int, err error) {
	if u.UID != nil {
		uid = *u.UID
		gid = uid
		if u.GID != nil {
			gid = *u.GID
		}
		return uid, gid, nil
	}
	if h, err := user.Lookup(u.Name); err == nil {
		uid, err1 := strconv.Atoi(h.Uid)
		gid, err2 := strconv.Atoi(h.Gid)
		if err1 == nil && err2 == nil && uid >= config.MinUID {
			return uid, gid, nil
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	known := map[string]int{}
	data, err := os.ReadFile(a.path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, 0, err
	}
	if len(data) > 0 {
		if err := json.Unmarshal(data, &known); err != nil {
			return 0, 0, fmt.Errorf("%s: %w", a.path, err)
		}
	}
	if id, ok := known[u.Name]; ok {
		return id, id, nil
	}
	taken := map[int]bool{}
	for _, id := range known {
		taken[id] = true
	}
	id := firstAllocated
	for ; taken[id] || hostHasUID(id); id++ {
	}
	known[u.Name] = id
	out, _ := json.MarshalIndent(known, "", "  ")
	if err := os.MkdirAll(filepath.Dir(a.path), 0o755); err != nil {
		return 0, 0, err
	}
	tmp := a.path + ".tmp"
	if err := os.WriteFile(tmp, out, 0o644); err != nil {
		return 0, 0, err
	}
	if err := os.Rename(tmp, a.path); err != nil {
		return 0, 0, err
	}
	return id, id, nil
}

func hostHasUID(id int) bool {
	_, err := user.LookupId(strconv.Itoa(id))
	return err == nil
}
