package containers

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/berth-ssh/berth/agent"
	"github.com/berth-ssh/berth/config"
)

// cloneTimeout bounds a clone, so that an unreachable host cannot hold a
// login for long.
const cloneTimeout = 10 * time.Minute

// repoDir is where u's repo lives on the host, or "" when u has none.
func (m *Manager) repoDir(u config.User) string {
	repo := m.cfg.RepoFor(u)
	if repo == nil {
		return ""
	}
	return filepath.Join(m.cfg.DataRoot, u.Name, "projects", repo.Dir())
}

// Prepare does what a session needs done in a started container before
// its program runs: it clones the user's repo when projects/<repo> is
// missing, applies the repo's .berth/Dockerfile on the container's first
// start when the user opted in, and starts installing the Python packages
// in the background. The first session after each start does all of it;
// later ones only retry a missing clone, and only for a login shell or a
// session that forwards an agent (which the clone may need), so that
// commands (scp, IDEs) never wait on a repository host.
//
// authSock is the client's forwarded agent inside the container, or "".
// Failures are warnings to progress: the session goes on. recreated
// reports that the container was replaced, so the caller must Open again.
func (m *Manager) Prepare(ctx context.Context, r Ref, authSock string, login bool, progress io.Writer) (recreated bool) {
	name := r.Name()
	m.mu.Lock()
	k := m.remember(name)
	first, fresh := !k.prepared, k.fresh
	k.prepared, k.fresh = true, false
	m.mu.Unlock()
	if !first && !login && authSock == "" {
		return false
	}
	// A session that hangs up halfway leaves the work to the next one.
	defer func() {
		if ctx.Err() != nil && first {
			m.forget(name, false)
		}
	}()
	if dir := m.repoDir(r.User); dir != "" {
		if _, err := os.Lstat(dir); os.IsNotExist(err) {
			m.clone(ctx, r, authSock, progress)
		}
	}
	if !first {
		return false
	}
	if r.Instance == "" && r.User.RepoDockerfile {
		// The new container is prepared afresh (recreate forgets it).
		if recreated = m.applyRepoDockerfile(ctx, r, fresh, progress); recreated {
			return true
		}
	}
	m.installPackages(ctx, r)
	return false
}

// forget makes the next session after a start prepare the container
// again; fresh says the start created it.
func (m *Manager) forget(name string, fresh bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := m.remember(name)
	k.prepared = false
	k.fresh = k.fresh || fresh
}

// clone clones the user's repo into ~/projects as the user, inside the
// container, with git's output going to progress as it comes.
func (m *Manager) clone(ctx context.Context, r Ref, authSock string, progress io.Writer) {
	repo := m.cfg.RepoFor(r.User)
	ctx, cancel := context.WithTimeout(ctx, cloneTimeout)
	defer cancel()
	fmt.Fprintf(progress, "berth: cloning %s into ~/projects/%s\n", repo.URL, repo.Dir())
	cmd := "command -v git >/dev/null || { echo 'git is not installed in this image' >&2; exit 127; }; exec git clone"
	if repo.Branch != "" {
		cmd += " --branch " + shellQuote(repo.Branch)
	}
	cmd += " -- " + shellQuote(repo.URL) + " " + shellQuote("projects/"+repo.Dir())
	env := []string{
		"GIT_TERMINAL_PROMPT=0", // a password prompt would wait forever
		// The first contact with the repository's host records its key;
		// a changed key still fails.
		"GIT_SSH_COMMAND=ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o ConnectTimeout=20",
	}
	if authSock != "" {
		env = append(env, "SSH_AUTH_SOCK="+authSock)
	}
	began := time.Now()
	tail, err := m.runQuiet(ctx, r, agent.Spawn{Command: cmd, Env: env}, progress)
	if err != nil {
		why := tail
		if why == "" {
			why = err.Error()
		}
		m.log.Warn("repo clone failed", "container", r.Name(), "repo", repo.URL, "err", err, "output", tail)
		fmt.Fprintf(progress, "berth: warning: could not clone %s: %s. Your session goes on without it; your next login shell, or ssh -A, tries again.\n", repo.URL, why)
		return
	}
	m.log.Info("repo cloned", "container", r.Name(), "repo", repo.URL, "took", since(began))
	fmt.Fprintf(progress, "berth: cloned %s in %s\n", repo.URL, since(began))
}

// runQuiet runs a command as the user in r's container with no input,
// copying its output to progress, and returns its last line of output.
func (m *Manager) runQuiet(ctx context.Context, r Ref, spec agent.Spawn, progress io.Writer) (last string, err error) {
	conn, err := m.Open(ctx, r, io.Discard)
	if err != nil {
		return "", err
	}
	stdin, err := os.Open(os.DevNull)
	if err != nil {
		conn.Close()
		return "", err
	}
	defer stdin.Close()
	rd, wr, err := os.Pipe()
	if err != nil {
		conn.Close()
		return "", err
	}
	defer rd.Close()
	proc, err := agent.Start(conn, spec, stdin, wr, wr)
	wr.Close()
	if err != nil {
		return "", err
	}
	defer proc.Close()
	stop := context.AfterFunc(ctx, func() { proc.Signal("KILL"); rd.Close() })
	defer stop()
	sc := bufio.NewScanner(rd)
	sc.Split(scanLinesOrCR)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line != "" {
			last = line
			fmt.Fprintf(progress, "  %s\n", line)
		}
	}
	st, err := proc.Wait()
	if err == nil && (st.Code != 0 || st.Signal != "") {
		err = fmt.Errorf("%s", st)
	}
	if err == nil {
		err = ctx.Err()
	}
	return last, err
}

// scanLinesOrCR splits at newlines and at carriage returns, which git's
// progress meters use to redraw a line.
func scanLinesOrCR(data []byte, atEOF bool) (advance int, token []byte, err error) {
	for i, b := range data {
		if b == '\n' || b == '\r' {
			return i + 1, data[:i], nil
		}
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// applyRepoDockerfile builds the image from the repo's .berth/Dockerfile
// when the container runs another image. On the container's first start
// (fresh) it recreates the container on it, so the Dockerfile applies from
// the very first session; later it only says that `rebuild` applies it.
func (m *Manager) applyRepoDockerfile(ctx context.Context, r Ref, fresh bool, progress io.Writer) bool {
	key, _, _, repo := m.envSource(r)
	if repo == "" || !strings.HasPrefix(key, repoKey) {
		return false
	}
	env, err := m.reloadEnvironment(r)
	if err != nil {
		m.log.Warn("the repo's Dockerfile cannot be read", "container", r.Name(), "err", err)
		fmt.Fprintf(progress, "berth: warning: your repo's .berth/Dockerfile cannot be used: %v\n", err)
		return false
	}
	c, err := m.inspectOwn(ctx, r)
	if err != nil || c.Config.Labels[LabelImage] == env.Tag() {
		return false
	}
	if !fresh {
		fmt.Fprintf(progress, "berth: your repo's .berth/Dockerfile has changed since your container was made; `rebuild` applies it.\n")
		return false
	}
	fmt.Fprintf(progress, "berth: your repo has .berth/Dockerfile; building your image from it\n")
	if err := m.buildShared(ctx, env, false, progress); err != nil {
		fmt.Fprintf(progress, "berth: warning: your repo's .berth/Dockerfile failed to build; you are on the configured environment until `rebuild` succeeds.\n")
		m.log.Warn("repo Dockerfile build failed", "container", r.Name(), "err", err)
		return false
	}
	if err := m.recreate(ctx, r, env.Tag(), progress); err != nil {
		fmt.Fprintf(progress, "berth: warning: your container could not be recreated on your repo's image: %v\n", err)
		m.log.Warn("recreate on the repo image failed", "container", r.Name(), "err", err)
	}
	return true
}

// installPackages asks r's agent to install the configured Python
// packages and the repo's requirements.txt into ~/.venv, in the
// background. It never blocks the session: the agent answers at once.
func (m *Manager) installPackages(ctx context.Context, r Ref) {
	p := agent.Packages{Packages: m.cfg.PythonPackagesFor(r.User)}
	if repo := m.cfg.RepoFor(r.User); repo != nil {
		p.Requirements = "/home/" + r.User.Name + "/projects/" + repo.Dir() + "/requirements.txt"
	}
	if len(p.Packages) == 0 {
		if _, err := os.Stat(filepath.Join(m.repoDir(r.User), "requirements.txt")); p.Requirements == "" || err != nil {
			return
		}
	}
	conn, err := m.Open(ctx, r, io.Discard)
	if err == nil {
		err = agent.Install(conn, p)
	}
	if err != nil {
		m.log.Warn("python packages not started", "container", r.Name(), "err", err)
	}
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
