package agent

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// The container environment berth sets for pip (see containers), read at
// every start, so that the PyTorch index follows the GPUs the container has
// now rather than the image.
const (
	EnvPythonIndex  = "BERTH_PYTHON_INDEX"
	EnvTorchIndex   = "BERTH_TORCH_INDEX"
	EnvTorchVariant = "BERTH_TORCH_VARIANT"
)

// PackagesStatus is the state of the user's Python packages, kept in
// RunDir as PackagesFile, where berth reads it for `status`.
const PackagesFile = "packages.json"

// Packages asks the agent to install Python packages into the user's
// ~/.venv in the background.
type Packages struct {
	// Packages are pip requirements, such as "torch".
	Packages []string `json:"packages,omitempty"`
	// Requirements is a requirements.txt inside the container, installed
	// too when it exists.
	Requirements string `json:"requirements,omitempty"`
}

// PackagesStatus is what `status` shows of an install.
type PackagesStatus struct {
	// State is "installing", "installed" or "failed".
	State string `json:"state"`
	// Detail says why it failed, in pip's own words.
	Detail string    `json:"detail,omitempty"`
	Since  time.Time `json:"since"`
}

// venvDir is the virtualenv's place in the home directory, which is the
// user's persistent data, so it survives a recreated container.
const venvDir = ".venv"

// writePipConf points pip at the configured index and at the PyTorch
// wheel index for this container's GPUs. It is written at every start.
func writePipConf(path string, env []string) error {
	get := func(k string) string {
		for _, kv := range env {
			if v, ok := strings.CutPrefix(kv, k+"="); ok {
				return v
			}
		}
		return ""
	}
	index, torch, variant := get(EnvPythonIndex), get(EnvTorchIndex), get(EnvTorchVariant)
	if index == "" && torch == "" {
		return nil
	}
	var b strings.Builder
	b.WriteString("# Written by berth at container start.\n[global]\n")
	if index != "" {
		fmt.Fprintf(&b, "index-url = %s\n", index)
	}
	if torch != "" && variant != "" {
		fmt.Fprintf(&b, "extra-index-url = %s/%s\n", strings.TrimRight(torch, "/"), variant)
	}
	return writeFileAtomic(path, []byte(b.String()))
}

// venvProfile puts the user's virtualenv first on login shells' PATH.
const venvProfile = `# Written by berth: the user's virtualenv comes first.
if [ -d "$HOME/.venv/bin" ]; then
	VIRTUAL_ENV="$HOME/.venv"
	PATH="$VIRTUAL_ENV/bin:$PATH"
	export VIRTUAL_ENV PATH
fi
`

// venvEnv is the environment that activates the virtualenv for a command
// that no login shell starts, when the virtualenv exists.
func venvEnv(env []string, home string) []string {
	venv := filepath.Join(home, venvDir)
	if _, err := os.Stat(filepath.Join(venv, "bin")); err != nil {
		return nil
	}
	path := "/usr/local/bin:/usr/bin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	return []string{"VIRTUAL_ENV=" + venv, "PATH=" + venv + "/bin:" + path}
}

// installer runs one install at a time; a request while one runs is
// answered with the running one.
type installer struct {
	mu      sync.Mutex
	running bool
}

// install starts installing p into the user's virtualenv in the
// background, unless the same packages are already installed there. Its
// output goes to the provisioning log, its state to PackagesFile.
func (s *Server) install(p Packages) error {
	s.packages.mu.Lock()
	defer s.packages.mu.Unlock()
	if s.packages.running {
		return nil
	}
	home := s.Account.Home()
	venv := filepath.Join(home, venvDir)
	want := s.packagesDigest(p)
	if have, err := s.userCommand([]string{"cat", "--", filepath.Join(venv, ".berth-packages")}).Output(); err == nil && strings.TrimSpace(string(have)) == want {
		return nil
	}
	log, err := os.OpenFile(filepath.Join(RunDir, ProvisionLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	s.packages.running = true
	writePackagesStatus(PackagesStatus{State: "installing", Since: time.Now()})
	go func() {
		defer log.Close()
		st := PackagesStatus{State: "installed"}
		if detail, err := s.runInstall(p, venv, log); err != nil {
			st = PackagesStatus{State: "failed", Detail: detail}
			fmt.Fprintf(log, "--- python packages failed: %v\n", err)
		} else {
			// Written as the user: the home is theirs, and a file there
			// may be a symlink to one of root's.
			mark := s.userCommand([]string{"/bin/sh", "-c", `printf '%s\n' "$0" > "$1"`, want, filepath.Join(venv, ".berth-packages")})
			if err := mark.Run(); err != nil {
				fmt.Fprintf(log, "--- could not note the install in ~/%s: %v\n", venvDir, err)
			}
			fmt.Fprintln(log, "--- python packages installed")
		}
		st.Since = time.Now()
		writePackagesStatus(st)
		s.packages.mu.Lock()
		s.packages.running = false
		s.packages.mu.Unlock()
	}()
	return nil
}

// runInstall makes the virtualenv if it is missing and runs pip in it, as
// the user. On failure it returns pip's own reason.
func (s *Server) runInstall(p Packages, venv string, log io.Writer) (detail string, err error) {
	fmt.Fprintf(log, "--- %s python packages into ~/%s: %s\n", time.Now().Format(time.RFC3339), venvDir, strings.Join(p.Packages, " "))
	steps := [][]string{}
	if _, err := os.Stat(filepath.Join(venv, "bin", "python")); err != nil {
		steps = append(steps, []string{"python3", "-m", "venv", venv})
	}
	args := []string{filepath.Join(venv, "bin", "pip"), "install", "--disable-pip-version-check", "--no-input"}
	args = append(args, p.Packages...)
	if p.Requirements != "" {
		if _, err := os.Stat(p.Requirements); err == nil {
			args = append(args, "-r", p.Requirements)
		}
	}
	if len(args) > 4 {
		steps = append(steps, args)
	}
	for _, argv := range steps {
		out := &lastLines{}
		cmd := s.userCommand(argv)
		cmd.Stdout, cmd.Stderr = io.MultiWriter(log, out), io.MultiWriter(log, out)
		if err := cmd.Run(); err != nil {
			if why := out.reason(); why != "" {
				return why, err
			}
			return fmt.Sprintf("%s: %v", filepath.Base(argv[0]), err), err
		}
	}
	return "", nil
}

// userCommand runs argv as the account, from its home, with the
// environment its commands get.
func (s *Server) userCommand(argv []string) *exec.Cmd {
	like := s.command(&Spawn{Command: "true"})
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir, cmd.Env, cmd.SysProcAttr = like.Dir, like.Env, like.SysProcAttr
	return cmd
}

// packagesDigest names what an install would install: the packages, the
// requirements file's contents and pip's configuration.
func (s *Server) packagesDigest(p Packages) string {
	h := sha256.New()
	json.NewEncoder(h).Encode(p.Packages)
	// Read as the user: the agent is root, and the file is in their home,
	// where it may be a symlink to something only root may read.
	if p.Requirements != "" {
		if b, err := s.userCommand([]string{"cat", "--", p.Requirements}).Output(); err == nil {
			h.Write(b)
		}
	}
	if b, err := os.ReadFile(pipConfPath); err == nil {
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// pipConfPath is pip's system-wide configuration file.
const pipConfPath = "/etc/pip.conf"

func writePackagesStatus(st PackagesStatus) {
	b, _ := json.Marshal(st)
	writeFileAtomic(filepath.Join(RunDir, PackagesFile), b)
}

// lastLines keeps the end of a command's output, to say why it failed.
type lastLines struct {
	mu    sync.Mutex
	lines []string
	part  string
}

func (l *lastLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	sc := bufio.NewScanner(strings.NewReader(l.part + string(p)))
	l.part = ""
	for sc.Scan() {
		l.lines = append(l.lines, sc.Text())
	}
	if len(p) > 0 && p[len(p)-1] != '\n' && len(l.lines) > 0 {
		l.part = l.lines[len(l.lines)-1]
		l.lines = l.lines[:len(l.lines)-1]
	}
	if len(l.lines) > 200 {
		l.lines = l.lines[len(l.lines)-200:]
	}
	return len(p), nil
}

// reason is pip's explanation: its last ERROR line, and the last warning
// about the network before it, which says why nothing was found.
func (l *lastLines) reason() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	lines := append(l.lines, l.part)
	var why, network string
	for _, line := range lines {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "ERROR:") && why == "":
			why = line
		case strings.HasPrefix(line, "WARNING: Retrying") || strings.Contains(line, "NewConnectionError") || strings.Contains(line, "Could not fetch URL"):
			network = line
		}
	}
	if why == "" && len(lines) > 0 {
		for i := len(lines) - 1; i >= 0; i-- {
			if t := strings.TrimSpace(lines[i]); t != "" {
				why = t
				break
			}
		}
	}
	if network != "" {
		why += " (" + network + ")"
	}
	return why
}
