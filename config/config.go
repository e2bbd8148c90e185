// Package config is berth's configuration: the schema, its defaults and its
// validation. Load decodes strictly, so an unknown key is an error that names
// it, fills in defaults, and validates.
//
//	cfg, err := config.Load("config.yaml")
//	if err != nil {
//		log.Fatal(err) // e.g. `config.yaml: users[0].name: "Bob" is not a valid login name`
//	}
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	units "github.com/docker/go-units"
	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/ssh"
)

// Config is the whole of berth's configuration file.
type Config struct {
	// Listen is the SSH listen address. Default ":2222".
	Listen string `yaml:"listen"`
	// StateDir holds the gateway's own state: host keys, allocated uids, the
	// agent binary and each container's agent socket. Default /var/lib/berth.
	StateDir string `yaml:"state_dir"`
	// DataRoot holds users' persistent data: <data_root>/<user>/home,
	// projects and vscode-server. It is kept mode 0700, owned by root.
	// Default /var/lib/berth/users.
	DataRoot string `yaml:"data_root"`
	// HTTPListen is the address of the operators' HTTP endpoint
	// (/healthz, /readyz, /metrics); empty turns it off, the default.
	HTTPListen string `yaml:"http_listen"`
	// DockerHost is the Docker Engine's address. Default: $DOCKER_HOST, else
	// unix:///var/run/docker.sock.
	DockerHost string `yaml:"docker_host"`
	// AgentPath is berth's in-container helper, a static binary. Default:
	// berth-agent beside the berth binary, else on $PATH.
	AgentPath string `yaml:"agent_path"`
	// KeysDir holds one authorized_keys file per user, named after the
	// user (`berth keys add` writes there). Read at each login, so added
	// and removed keys count at once. Default <state_dir>/keys.
	KeysDir string `yaml:"keys_dir"`
	// Environment is the image every user's container is made from.
	Environment Environment `yaml:"environment"`
	// Environments are named alternatives: logging in as alice+NAME uses
	// the one called NAME, when there is one, in a second container.
	Environments map[string]Environment `yaml:"environments"`
	// MaxContainers caps how many containers one user may have (their
	// default one and alice+NAME ones). Default 3; per user too.
	MaxContainers int `yaml:"max_containers"`
	// IdleStopAfter stops a container with no SSH session and no busy
	// process for this long; 0s (the default) never does. Per user too.
	IdleStopAfter Duration `yaml:"idle_stop_after"`
	// Sudo gives users passwordless sudo inside their container, as the
	// seed's image did. Default true; a user's own setting wins.
	Sudo *bool `yaml:"sudo"`
	// Resources are each container's limits; a user's own win.
	Resources `yaml:",inline"`
	// Mounts are extra bind mounts for every container, as
	// "SOURCE:TARGET[:ro]", e.g. a shared read-only /datasets. {user} is
	// replaced by the login name. A user's own mounts are added.
	Mounts []string `yaml:"mounts"`
	// GPUs is how many GPUs each container gets: "all", "none" or a
	// number. Default "all", as the seed's --gpus all. Per user too.
	GPUs string `yaml:"gpus"`
	// GPUMode is "shared" (any container may use any of its GPUs) or
	// "exclusive" (each GPU leased to one running container). Default
	// "shared".
	GPUMode string `yaml:"gpu_mode"`
	// GPUFallback "cpu" starts a container without GPUs, with a warning,
	// when too few are free; empty refuses it. Per user too.
	GPUFallback string `yaml:"gpu_fallback"`
	// Forwarding allows port, socket and agent forwarding (ssh -L, -R, -D,
	// -A), always dialled inside the user's own container. IDEs such as
	// VS Code need it. Default true; a user's own setting wins.
	Forwarding *bool `yaml:"forwarding"`
	// KeepaliveInterval is how often berth checks an idle client is still
	// there; 0s turns it off. Default 30s.
	KeepaliveInterval *Duration `yaml:"keepalive_interval"`
	// KeepaliveCountMax is how many unanswered checks drop a client.
	// Default 3.
	KeepaliveCountMax int `yaml:"keepalive_count_max"`
	// MaxStartups caps connections that have not logged in yet, as
	// OpenSSH's option of that name: "start:rate:full" drops rate% of new
	// ones past start, rising to all of them at full. Default "10:30:100".
	MaxStartups string `yaml:"max_startups"`
	// Penalty turns away a source whose connection offered a wrong key
	// and never logged in, for this long, doubling on each repeat up to
	// PenaltyMax; 0s turns penalties off. Default 5s and 10m.
	Penalty    *Duration `yaml:"penalty"`
	PenaltyMax Duration  `yaml:"penalty_max"`
	// PenaltyExempt are addresses or CIDR prefixes never penalised.
	PenaltyExempt []string `yaml:"penalty_exempt"`
	// TrustedUserCAKeys is a file of CA public keys, one per line, as
	// sshd's TrustedUserCAKeys: a user certificate one of them signed logs
	// in as any configured user among its principals. Read at each login.
	// Empty: certificates are not accepted.
	TrustedUserCAKeys string `yaml:"trusted_user_ca_keys"`
	// RevokedKeys is a file of public keys, one per line, as sshd's
	// RevokedKeys: none of them, and no certificate they signed, logs in.
	// Read at each login; one that cannot be read refuses every key.
	RevokedKeys string `yaml:"revoked_keys"`
	// PermitUserEnvironment applies authorized_keys environment="NAME=v"
	// options, as sshd's PermitUserEnvironment. Default false: they are
	// ignored.
	PermitUserEnvironment bool `yaml:"permit_user_environment"`
	// MaxSessions caps the SSH sessions (shells, commands, SFTP) one user
	// may have open at once, across connections; 0, the default, is no
	// cap. Per user too.
	MaxSessions int `yaml:"max_sessions"`
	// SessionIdleTimeout hangs up a session with no input and no output
	// for this long, as sshd's ChannelTimeout session=; 0s, the default,
	// never does. Forwards are not sessions and are never timed out.
	SessionIdleTimeout Duration `yaml:"session_idle_timeout"`
	// SessionMaxDuration hangs up a session this long after it started;
	// 0s, the default, never does.
	SessionMaxDuration Duration `yaml:"session_max_duration"`
	// ShutdownGrace is how long SIGTERM lets open sessions drain before
	// berth closes them. Containers keep running either way. Default 30s.
	ShutdownGrace Duration `yaml:"shutdown_grace"`
	// Repo is the project repository cloned into ~/projects/<name> when
	// that directory is missing, as the seed's run.sh did; empty, none.
	// Per user too.
	Repo *Repo `yaml:"repo"`
	// PythonPackages are installed with pip into each user's ~/.venv, in
	// the background, on the first start, together with the repo's
	// requirements.txt. Default torch and sentence-transformers, as the
	// seed's start.sh; [] installs nothing. Per user too.
	PythonPackages *[]string `yaml:"python_packages"`
	// PythonIndex is pip's index URL in every container; empty keeps
	// pip's default.
	PythonIndex string `yaml:"python_index"`
	// TorchIndex is the base URL of PyTorch's wheel index. berth adds
	// /<variant> (cu118, cu121, cu124, cu126, cu128 or cpu, from the host
	// driver's CUDA version) and gives it to pip as an extra index at each
	// container start. Empty: no extra index.
	TorchIndex string `yaml:"torch_index"`
	// RecordSessions records every terminal session's output as an
	// asciicast v2 file under <state_dir>/recordings/<user>/, playable with
	// asciinema play and listed by `berth recordings`. Input is not
	// recorded. Default false; per user too.
	RecordSessions bool `yaml:"record_sessions"`
	// AuditLog is the audit trail, JSON lines: connections, logins,
	// sessions, forwards, verbs and container events. Default
	// <state_dir>/audit.log; "off" turns it off.
	AuditLog string `yaml:"audit_log"`
	// AuditLogMaxSize rotates the audit log at this size, keeping five
	// old files (audit.log.1 to .5). Default 100m.
	AuditLogMaxSize string `yaml:"audit_log_max_size"`
	// Users are the people who may log in.
	Users []User `yaml:"users"`
	// Admins are users allowed the operator verbs.
	Admins []string `yaml:"admins"`

	// dir is the directory of the file the config came from; relative
	// paths in it are resolved against it.
	dir string
}

// Environment says how the environment image is built.
type Environment struct {
	// Dockerfile is a path to a Dockerfile; its directory is the build
	// context. Empty means berth's embedded default environment.
	Dockerfile string `yaml:"dockerfile"`
	// BuildArgs are passed to the build. The default environment reads
	// BASE_IMAGE (default an nvidia/cuda Ubuntu image) and TZ (default
	// Asia/Taipei).
	BuildArgs map[string]string `yaml:"build_args"`
}

// Repo is a git repository to clone.
type Repo struct {
	// URL is what git clone takes: https://, ssh://, git@host:path, or a
	// path. ssh:// and git@ URLs use the user's forwarded agent (ssh -A).
	URL string `yaml:"url"`
	// Branch to check out; empty, the repository's default.
	Branch string `yaml:"branch"`
}

// Dir is the directory the repo is cloned into under ~/projects: the
// URL's last element without ".git", as git clone names it.
func (r Repo) Dir() string {
	u := strings.TrimRight(r.URL, "/")
	if i := strings.LastIndexAny(u, "/:"); i >= 0 {
		u = u[i+1:]
	}
	return strings.TrimSuffix(u, ".git")
}

// User is one person who may log in.
type User struct {
	// Name is the login name, and the user's name inside the container.
	Name string `yaml:"name"`
	// AuthorizedKeys are inline authorized_keys lines, or paths to
	// authorized_keys files (entries starting with "/", "./" or "../";
	// relative paths are against the config file's directory). Files are
	// read at each login, so edits take effect at once.
	AuthorizedKeys []string `yaml:"authorized_keys"`
	// UID and GID are the user's ids in the container and on the host's
	// files. Default: the host's passwd entry for Name, else allocated by
	// berth and kept in state_dir.
	UID *int `yaml:"uid"`
	GID *int `yaml:"gid"`
	// Sudo overrides the global sudo setting for this user.
	Sudo *bool `yaml:"sudo"`
	// Forwarding overrides the global forwarding setting for this user.
	Forwarding *bool `yaml:"forwarding"`
	// Environment gives this user an environment of their own (a
	// Dockerfile and build args) instead of the global one.
	Environment *Environment `yaml:"environment"`
	// Image gives this user an existing local image, used as it is. It
	// needs /bin/sh and a writable /etc; bash and sudo are optional.
	Image string `yaml:"image"`
	// Resources override the global limits, field by field.
	Resources `yaml:",inline"`
	// Mounts are added to the global mounts.
	Mounts []string `yaml:"mounts"`
	// GPUs and GPUFallback override the global settings.
	GPUs        string `yaml:"gpus"`
	GPUFallback string `yaml:"gpu_fallback"`
	// MaxSessions overrides the global setting.
	MaxSessions int `yaml:"max_sessions"`
	// RecordSessions overrides the global setting.
	RecordSessions *bool `yaml:"record_sessions"`
	// MaxContainers and IdleStopAfter override the global settings.
	MaxContainers int       `yaml:"max_containers"`
	IdleStopAfter *Duration `yaml:"idle_stop_after"`
	// Repo and PythonPackages override the global settings.
	Repo           *Repo     `yaml:"repo"`
	PythonPackages *[]string `yaml:"python_packages"`
	// RepoDockerfile builds this user's image from the repo's
	// .berth/Dockerfile, with the repo as the build context, when the
	// repo has one. Off by default: it lets the repo decide what runs.
	RepoDockerfile bool `yaml:"repo_dockerfile"`
}

// Resources are a container's limits. Sizes are written like "8g" or
// "512m".
type Resources struct {
	// ShmSize is /dev/shm's size. Default 8g: Docker's 64m gives
	// PyTorch's data loaders "bus error".
	ShmSize string `yaml:"shm_size"`
	// Memory caps the container's memory; empty is no cap.
	Memory string `yaml:"memory"`
	// CPUs caps the CPUs it may use, e.g. 8 or 0.5; 0 is no cap.
	CPUs float64 `yaml:"cpus"`
	// PidsLimit caps its processes. Default 4096.
	PidsLimit int64 `yaml:"pids_limit"`
	// Memlock is the locked-memory ulimit, a size or "unlimited"; NCCL
	// wants unlimited. Empty keeps the engine's default, because an engine
	// whose own limit is lower cannot start containers with a higher one.
	Memlock string `yaml:"memlock"`
	// DiskQuota caps what the container writes to its own filesystem
	// (system packages and the like; not the home and projects, which
	// live under data_root), where Docker's storage driver supports it
	// (overlay2 on XFS with pquota, btrfs, zfs). Elsewhere it is not
	// enforced, and berth says so. Empty is no cap.
	DiskQuota string `yaml:"disk_quota"`
}

// Mount is a parsed entry of mounts.
type Mount struct {
	Source, Target string
	ReadOnly       bool
}

// ParseMount reads "SOURCE:TARGET[:ro|:rw]".
func ParseMount(s string) (Mount, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return Mount{}, fmt.Errorf("%q is not SOURCE:TARGET[:ro]", s)
	}
	m := Mount{Source: filepath.Clean(parts[0]), Target: filepath.Clean(parts[1])}
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			m.ReadOnly = true
		case "rw":
		default:
			return Mount{}, fmt.Errorf("%q: the mode must be ro or rw", s)
		}
	}
	if !filepath.IsAbs(m.Source) || !filepath.IsAbs(m.Target) {
		return Mount{}, fmt.Errorf("%q: both paths must be absolute", s)
	}
	return m, nil
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// checkMount refuses mounts that would hand a container the Docker
// socket, berth's own state, or other users' data, with {user} replaced
// by each name in users (a name can make a harmless-looking pattern
// point at berth's own directories).
func (c *Config) checkMount(entry string, users ...string) error {
	if len(users) == 0 {
		users = []string{"user"}
	}
	for _, name := range users {
		if err := c.checkMountAs(entry, name); err != nil {
			return err
		}
	}
	return nil
}

func (c *Config) checkMountAs(entry, user string) error {
	m, err := ParseMount(strings.ReplaceAll(entry, "{user}", user))
	if err != nil {
		return err
	}
	for _, sock := range []string{"/var/run/docker.sock", "/run/docker.sock"} {
		if within(sock, m.Source) {
			return fmt.Errorf("%q would expose the Docker socket", entry)
		}
	}
	if filepath.Base(m.Source) == "docker.sock" {
		return fmt.Errorf("%q would expose a Docker socket", entry)
	}
	for _, dir := range []string{c.DataRoot, c.StateDir} {
		if within(dir, m.Source) || within(m.Source, dir) {
			return fmt.Errorf("%q overlaps %s, which berth keeps for itself and users' data", entry, dir)
		}
	}
	if within(m.Target, "/.berth") {
		return fmt.Errorf("%q targets berth's own directory", entry)
	}
	return nil
}

// checkTrustFiles refuses a file berth trusts (keys, CAs, revocations,
// the audit log) inside data_root or a mount, where a user could write or
// read it from their container: with a CA key file in a shared mount,
// anyone with sudo could add a CA and sign themselves in as anyone.
func (c *Config) checkTrustFiles() error {
	type file struct{ key, path string }
	files := []file{{"keys_dir", c.KeysDir}, {"trusted_user_ca_keys", c.TrustedUserCAKeys}, {"revoked_keys", c.RevokedKeys}}
	if c.AuditLog != "off" {
		files = append(files, file{"audit_log", c.AuditLog})
	}
	for i, u := range c.Users {
		for j, entry := range u.AuthorizedKeys {
			if IsKeyPath(entry) {
				files = append(files, file{fmt.Sprintf("users[%d].authorized_keys[%d]", i, j), c.Path(entry)})
			}
		}
	}
	var sources []string
	for _, u := range c.Users {
		for _, m := range c.MountsFor(u) {
			sources = append(sources, m.Source)
		}
	}
	for _, entry := range c.Mounts {
		if m, err := ParseMount(strings.ReplaceAll(entry, "{user}", "user")); err == nil {
			sources = append(sources, m.Source)
		}
	}
	for _, f := range files {
		if f.path == "" {
			continue
		}
		if within(f.path, c.DataRoot) {
			return fmt.Errorf("%s: %q is inside data_root, where users can change it", f.key, f.path)
		}
		for _, src := range sources {
			if within(f.path, src) {
				return fmt.Errorf("%s: %q is inside %s, which is mounted into containers", f.key, f.path, src)
			}
		}
	}
	return nil
}

// ResourcesFor is u's limits: theirs where set, else the global ones.
func (c *Config) ResourcesFor(u User) Resources {
	r := c.Resources
	if u.ShmSize != "" {
		r.ShmSize = u.ShmSize
	}
	if u.Memory != "" {
		r.Memory = u.Memory
	}
	if u.CPUs != 0 {
		r.CPUs = u.CPUs
	}
	if u.PidsLimit != 0 {
		r.PidsLimit = u.PidsLimit
	}
	if u.Memlock != "" {
		r.Memlock = u.Memlock
	}
	if u.DiskQuota != "" {
		r.DiskQuota = u.DiskQuota
	}
	return r
}

// MountsFor is u's extra mounts, with {user} replaced.
func (c *Config) MountsFor(u User) []Mount {
	var out []Mount
	for _, entry := range append(append([]string{}, c.Mounts...), u.Mounts...) {
		if m, err := ParseMount(strings.ReplaceAll(entry, "{user}", u.Name)); err == nil {
			out = append(out, m)
		}
	}
	return out
}

func checkResources(key string, r Resources) error {
	for name, size := range map[string]string{"shm_size": r.ShmSize, "memory": r.Memory, "disk_quota": r.DiskQuota} {
		if size == "" {
			continue
		}
		if n, err := units.RAMInBytes(size); err != nil || n <= 0 {
			return fmt.Errorf("%s%s: %q is not a size like 8g or 512m", key, name, size)
		}
	}
	if r.CPUs < 0 {
		return fmt.Errorf("%scpus: must not be negative", key)
	}
	if r.Memlock != "" && r.Memlock != "unlimited" {
		if n, err := units.RAMInBytes(r.Memlock); err != nil || n <= 0 {
			return fmt.Errorf("%smemlock: %q is not a size or unlimited", key, r.Memlock)
		}
	}
	if r.PidsLimit < 0 {
		return fmt.Errorf("%spids_limit: must not be negative", key)
	}
	return nil
}

// ParseStartups reads max_startups: "start:rate:full", or one number.
func ParseStartups(spec string) (start, rate, full int, err error) {
	parts := strings.Split(spec, ":")
	nums := make([]int, len(parts))
	for i, p := range parts {
		if nums[i], err = strconv.Atoi(p); err != nil || nums[i] < 0 {
			return 0, 0, 0, fmt.Errorf("%q is not start:rate:full or a number", spec)
		}
	}
	switch {
	case len(nums) == 1 && nums[0] > 0:
		return nums[0], 100, nums[0], nil
	case len(nums) == 3 && nums[0] > 0 && nums[0] <= nums[2] && nums[1] <= 100:
		return nums[0], nums[1], nums[2], nil
	}
	return 0, 0, 0, fmt.Errorf("%q is not start:rate:full (0 < start <= full, rate <= 100) or a number", spec)
}

// ParsePrefix reads an address or a CIDR prefix.
func ParsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address or a CIDR prefix", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Duration is a time.Duration written as "30s" or "5m".
type Duration time.Duration

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration like 30s or 5m", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// loginName is the rule for login names: nothing else reaches a path or a
// Docker name.
var loginName = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

// ValidName reports whether name is an acceptable login name.
func ValidName(name string) bool { return loginName.MatchString(name) }

// instanceName is the rule for the NAME of a login alice+NAME.
var instanceName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,15}$`)

// ValidInstance reports whether name may follow the + of a login name.
func ValidInstance(name string) bool { return instanceName.MatchString(name) }

// SplitLogin splits a login name such as alice+exp into the user and the
// instance ("" for the user's default container). ok is false unless both
// parts are valid.
func SplitLogin(login string) (user, instance string, ok bool) {
	user, instance, plus := strings.Cut(login, "+")
	if !ValidName(user) || (plus && !ValidInstance(instance)) {
		return "", "", false
	}
	return user, instance, true
}

// MinUID is the lowest uid berth gives a user: below it are the system
// accounts of the images users run.
const MinUID = 1000

// MaxStateDir is the longest state_dir berth accepts: each container's
// agent socket lives at <state_dir>/run/berth-<user>/agent.sock, and a unix
// socket path has at most 107 bytes.
const MaxStateDir = 107 - len("/run/berth-") - 32 - len("/agent.sock")

// Load reads, decodes, completes and validates the config file at path.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	cfg, err := Decode(f, filepath.Dir(abs))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Decode decodes a config strictly from r, fills in defaults and
// validates. dir is where relative paths in it are resolved.
func Decode(r io.Reader, dir string) (*Config, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, friendlyYAMLError(err, data)
	}
	cfg.dir = dir
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// unknownField matches yaml.v3's "field x not found in type y".
var unknownField = regexp.MustCompile(`field (\S+) not found in type \S+`)

// lineNumber matches the "line N:" yaml.v3 starts its errors with.
var lineNumber = regexp.MustCompile(`line (\d+): `)

// friendlyYAMLError rewrites a decoding error so that it names the key,
// e.g. `users[0].uid: line 7: cannot unmarshal !!str "x" into int`.
func friendlyYAMLError(err error, data []byte) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.TrimPrefix(msg, "unmarshal errors:\n  ")
	msg = unknownField.ReplaceAllString(msg, `unknown key "$1"`)
	var root yaml.Node
	if m := lineNumber.FindStringSubmatch(msg); m != nil && yaml.Unmarshal(data, &root) == nil {
		line, _ := strconv.Atoi(m[1])
		if key := keyAt(&root, line, ""); key != "" && !strings.Contains(msg, "unknown key") {
			msg = key + ": " + msg
		}
	}
	return errors.New(msg)
}

// keyAt returns the path of the key whose value starts on line, such as
// "users[1].uid", or "" if there is none.
func keyAt(n *yaml.Node, line int, path string) string {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if k := keyAt(c, line, path); k != "" {
				return k
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			if v.Line == line && (v.Kind == yaml.ScalarNode || k.Line == line) {
				return p
			}
			if sub := keyAt(v, line, p); sub != "" {
				return sub
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			if k := keyAt(c, line, fmt.Sprintf("%s[%d]", path, i)); k != "" {
				return k
			}
		}
	}
	return ""
}

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = ":2222"
	}
	if c.StateDir == "" {
		c.StateDir = "/var/lib/berth"
	}
	if c.DataRoot == "" {
		c.DataRoot = filepath.Join(c.StateDir, "users")
	}
	if c.KeysDir == "" {
		c.KeysDir = filepath.Join(c.StateDir, "keys")
	}
	if c.AuditLog == "" {
		c.AuditLog = filepath.Join(c.StateDir, "audit.log")
	}
	if c.AuditLogMaxSize == "" {
		c.AuditLogMaxSize = "100m"
	}
	if c.AuditLog != "off" {
		c.AuditLog = c.Path(c.AuditLog)
	}
	for _, p := range []*string{&c.TrustedUserCAKeys, &c.RevokedKeys} {
		if *p != "" {
			*p = c.Path(*p)
		}
	}
	c.KeysDir = c.Path(c.KeysDir)
	c.StateDir = c.Path(c.StateDir)
	c.DataRoot = c.Path(c.DataRoot)
	if c.Environment.Dockerfile != "" {
		c.Environment.Dockerfile = c.Path(c.Environment.Dockerfile)
	}
	if c.DockerHost == "" {
		c.DockerHost = os.Getenv("DOCKER_HOST")
	}
	if c.AgentPath != "" {
		c.AgentPath = c.Path(c.AgentPath)
	}
	if c.Sudo == nil {
		c.Sudo = ptr(true)
	}
	if c.MaxContainers == 0 {
		c.MaxContainers = 3
	}
	if c.ShmSize == "" {
		c.ShmSize = "8g"
	}
	if c.PidsLimit == 0 {
		c.PidsLimit = 4096
	}
	if c.GPUs == "" {
		c.GPUs = "all"
	}
	if c.GPUMode == "" {
		c.GPUMode = "shared"
	}
	for name, env := range c.Environments {
		if env.Dockerfile != "" {
			env.Dockerfile = c.Path(env.Dockerfile)
			c.Environments[name] = env
		}
	}
	for i, u := range c.Users {
		if u.Environment != nil && u.Environment.Dockerfile != "" {
			u.Environment.Dockerfile = c.Path(u.Environment.Dockerfile)
			c.Users[i] = u
		}
	}
	if c.MaxStartups == "" {
		c.MaxStartups = "10:30:100"
	}
	if c.Penalty == nil {
		c.Penalty = ptr(Duration(5 * time.Second))
	}
	if c.PenaltyMax == 0 {
		c.PenaltyMax = Duration(10 * time.Minute)
	}
	if c.Forwarding == nil {
		c.Forwarding = ptr(true)
	}
	if c.KeepaliveInterval == nil {
		c.KeepaliveInterval = ptr(Duration(30 * time.Second))
	}
	if c.KeepaliveCountMax == 0 {
		c.KeepaliveCountMax = 3
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = Duration(30 * time.Second)
	}
	if c.PythonPackages == nil {
		c.PythonPackages = &[]string{"torch", "sentence-transformers"}
	}
}

// RecordingsDir is where recordings live: one directory per user.
func (c *Config) RecordingsDir() string { return filepath.Join(c.StateDir, "recordings") }

// RecordFor reports whether u's terminal sessions are recorded.
func (c *Config) RecordFor(u User) bool {
	if u.RecordSessions != nil {
		return *u.RecordSessions
	}
	return c.RecordSessions
}

// AuditLogBytes is audit_log_max_size in bytes.
func (c *Config) AuditLogBytes() int64 {
	n, _ := units.RAMInBytes(c.AuditLogMaxSize)
	return n
}

// MaxSessionsFor is how many sessions u may have open; 0 is no cap.
func (c *Config) MaxSessionsFor(u User) int {
	if u.MaxSessions > 0 {
		return u.MaxSessions
	}
	return c.MaxSessions
}

// RepoFor is u's repository, or nil for none.
func (c *Config) RepoFor(u User) *Repo {
	if u.Repo != nil {
		return u.Repo
	}
	return c.Repo
}

// PythonPackagesFor is what pip installs into u's ~/.venv.
func (c *Config) PythonPackagesFor(u User) []string {
	if u.PythonPackages != nil {
		return *u.PythonPackages
	}
	return *c.PythonPackages
}

// checkRepo refuses what git would take for an option or clone nowhere
// sensible.
func checkRepo(key string, r *Repo) error {
	if r == nil {
		return nil
	}
	switch {
	case r.URL == "":
		return fmt.Errorf("%s.url: required", key)
	case strings.HasPrefix(r.URL, "-") || strings.ContainsAny(r.URL, " \t\n"):
		return fmt.Errorf("%s.url: %q is not a repository URL", key, r.URL)
	case strings.HasPrefix(r.Branch, "-") || strings.ContainsAny(r.Branch, " \t\n"):
		return fmt.Errorf("%s.branch: %q is not a branch name", key, r.Branch)
	}
	if d := r.Dir(); d == "" || d == "." || d == ".." {
		return fmt.Errorf("%s.url: %q names no directory to clone into", key, r.URL)
	}
	return nil
}

// checkPackages refuses entries pip would take for options.
func checkPackages(key string, pkgs *[]string) error {
	if pkgs == nil {
		return nil
	}
	for i, p := range *pkgs {
		if p == "" || strings.HasPrefix(p, "-") || strings.ContainsAny(p, " \t\n") {
			return fmt.Errorf("%s[%d]: %q is not a package requirement", key, i, p)
		}
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// Path resolves p against the config file's directory.
func (c *Config) Path(p string) string {
	if filepath.IsAbs(p) || c.dir == "" {
		return p
	}
	return filepath.Join(c.dir, p)
}

// IsKeyPath reports whether an authorized_keys entry names a file rather
// than being an inline key line.
func IsKeyPath(entry string) bool {
	return strings.HasPrefix(entry, "/") || strings.HasPrefix(entry, "./") || strings.HasPrefix(entry, "../")
}

// Validate checks the config without touching the filesystem or Docker.
// Its error names the offending key.
func (c *Config) Validate() error {
	if _, port, err := net.SplitHostPort(c.Listen); err != nil || port == "" {
		return fmt.Errorf("listen: %q is not a host:port address", c.Listen)
	}
	if c.HTTPListen != "" {
		if _, _, err := net.SplitHostPort(c.HTTPListen); err != nil {
			return fmt.Errorf("http_listen: %q is not a host:port address", c.HTTPListen)
		}
	}
	if !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("state_dir: %q must be an absolute path", c.StateDir)
	}
	if len(c.StateDir) > MaxStateDir {
		return fmt.Errorf("state_dir: %q is %d bytes long; the unix sockets berth keeps under it allow at most %d", c.StateDir, len(c.StateDir), MaxStateDir)
	}
	if !filepath.IsAbs(c.DataRoot) || filepath.Clean(c.DataRoot) == "/" {
		return fmt.Errorf("data_root: %q must be an absolute path below /", c.DataRoot)
	}
	if *c.KeepaliveInterval < 0 {
		return errors.New("keepalive_interval: must not be negative (0 turns keepalives off)")
	}
	if c.ShutdownGrace < 0 {
		return errors.New("shutdown_grace: must not be negative")
	}
	if n, err := units.RAMInBytes(c.AuditLogMaxSize); err != nil || n <= 0 {
		return fmt.Errorf("audit_log_max_size: %q is not a size like 100m", c.AuditLogMaxSize)
	}
	if c.MaxSessions < 0 {
		return errors.New("max_sessions: must not be negative (0 is no cap)")
	}
	if c.SessionIdleTimeout < 0 || c.SessionMaxDuration < 0 {
		return errors.New("session_idle_timeout, session_max_duration: must not be negative (0s is none)")
	}
	if err := checkRepo("repo", c.Repo); err != nil {
		return err
	}
	if err := checkPackages("python_packages", c.PythonPackages); err != nil {
		return err
	}
	for _, idx := range []struct{ key, url string }{{"python_index", c.PythonIndex}, {"torch_index", c.TorchIndex}} {
		if strings.ContainsAny(idx.url, " \t\n") || (idx.url != "" && !strings.Contains(idx.url, "://")) {
			return fmt.Errorf("%s: %q is not a URL", idx.key, idx.url)
		}
	}
	if _, _, _, err := ParseStartups(c.MaxStartups); err != nil {
		return fmt.Errorf("max_startups: %w", err)
	}
	if *c.Penalty < 0 || c.PenaltyMax < 0 {
		return errors.New("penalty: must not be negative")
	}
	for i, e := range c.PenaltyExempt {
		if _, err := ParsePrefix(e); err != nil {
			return fmt.Errorf("penalty_exempt[%d]: %w", i, err)
		}
	}
	if c.KeepaliveCountMax < 1 {
		return fmt.Errorf("keepalive_count_max: %d must be at least 1", c.KeepaliveCountMax)
	}
	for k := range c.Environment.BuildArgs {
		if k == "" {
			return errors.New("environment.build_args: an argument has an empty name")
		}
	}
	for name := range c.Environments {
		if !ValidInstance(name) {
			return fmt.Errorf("environments.%s: not a valid container name (want [a-z0-9][a-z0-9-]{0,15})", name)
		}
	}
	if _, err := gpuCount(c.GPUs); err != nil {
		return fmt.Errorf("gpus: %w", err)
	}
	if err := checkResources("", c.Resources); err != nil {
		return err
	}
	names := make([]string, len(c.Users))
	for i, u := range c.Users {
		names[i] = u.Name
	}
	for i, m := range c.Mounts {
		if err := c.checkMount(m, names...); err != nil {
			return fmt.Errorf("mounts[%d]: %w", i, err)
		}
	}
	if c.GPUMode != "shared" && c.GPUMode != "exclusive" {
		return fmt.Errorf("gpu_mode: %q is neither shared nor exclusive", c.GPUMode)
	}
	if c.GPUFallback != "" && c.GPUFallback != "cpu" {
		return fmt.Errorf("gpu_fallback: %q is not cpu", c.GPUFallback)
	}
	if c.MaxContainers < 1 {
		return fmt.Errorf("max_containers: %d must be at least 1", c.MaxContainers)
	}
	if c.IdleStopAfter < 0 {
		return errors.New("idle_stop_after: must not be negative")
	}
	seen := map[string]bool{}
	for i, u := range c.Users {
		key := fmt.Sprintf("users[%d]", i)
		if !ValidName(u.Name) {
			return fmt.Errorf("%s.name: %q is not a valid login name (want [a-z_][a-z0-9_-]{0,31})", key, u.Name)
		}
		if seen[u.Name] {
			return fmt.Errorf("%s.name: %q is configured twice", key, u.Name)
		}
		seen[u.Name] = true
		// A user may have no keys in the config: keys_dir may hold them.
		for j, entry := range u.AuthorizedKeys {
			if IsKeyPath(entry) {
				continue
			}
			if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(entry)); err != nil {
				return fmt.Errorf("%s.authorized_keys[%d]: not an authorized_keys line: %v", key, j, err)
			}
		}
		if u.UID != nil && *u.UID < MinUID {
			return fmt.Errorf("%s.uid: %d is below %d, where the images' system accounts live", key, *u.UID, MinUID)
		}
		if u.GID != nil && *u.GID < 1 {
			return fmt.Errorf("%s.gid: %d must be positive", key, *u.GID)
		}
		if u.GID != nil && u.UID == nil {
			return fmt.Errorf("%s.gid: set uid too, or neither", key)
		}
		if u.Image != "" && u.Environment != nil {
			return fmt.Errorf("%s.image: set image or environment, not both", key)
		}
		if strings.ContainsAny(u.Image, " \t\n") {
			return fmt.Errorf("%s.image: %q is not an image name", key, u.Image)
		}
		if err := checkResources(key+".", u.Resources); err != nil {
			return err
		}
		for j, m := range u.Mounts {
			if err := c.checkMount(m, u.Name); err != nil {
				return fmt.Errorf("%s.mounts[%d]: %w", key, j, err)
			}
		}
		if _, err := gpuCount(u.GPUs); u.GPUs != "" && err != nil {
			return fmt.Errorf("%s.gpus: %w", key, err)
		}
		if u.GPUFallback != "" && u.GPUFallback != "cpu" {
			return fmt.Errorf("%s.gpu_fallback: %q is not cpu", key, u.GPUFallback)
		}
		if u.MaxSessions < 0 {
			return fmt.Errorf("%s.max_sessions: must not be negative (0 is the global value)", key)
		}
		if u.MaxContainers < 0 {
			return fmt.Errorf("%s.max_containers: %d must be at least 1", key, u.MaxContainers)
		}
		if u.IdleStopAfter != nil && *u.IdleStopAfter < 0 {
			return fmt.Errorf("%s.idle_stop_after: must not be negative", key)
		}
		if err := checkRepo(key+".repo", u.Repo); err != nil {
			return err
		}
		if err := checkPackages(key+".python_packages", u.PythonPackages); err != nil {
			return err
		}
		if u.RepoDockerfile && c.RepoFor(u) == nil {
			return fmt.Errorf("%s.repo_dockerfile: there is no repo to take it from", key)
		}
		if u.RepoDockerfile && u.Image != "" {
			return fmt.Errorf("%s.repo_dockerfile: set image or repo_dockerfile, not both", key)
		}
		// The image's start script runs as root, and with repo_dockerfile
		// the repo decides what it is: root in the container, as sudo.
		if u.RepoDockerfile && !c.SudoFor(u) {
			return fmt.Errorf("%s.repo_dockerfile: it makes the user root in their container (the repo's image runs its start script as root), so it needs sudo", key)
		}
	}
	if err := c.checkTrustFiles(); err != nil {
		return err
	}
	for i, a := range c.Admins {
		if !seen[a] {
			return fmt.Errorf("admins[%d]: %q is not a configured user", i, a)
		}
	}
	return nil
}

// User returns the configured user with that login name.
func (c *Config) User(name string) (User, bool) {
	for _, u := range c.Users {
		if u.Name == name {
			return u, true
		}
	}
	return User{}, false
}

// ForwardingFor reports whether u may forward ports, sockets and agents.
func (c *Config) ForwardingFor(u User) bool {
	if u.Forwarding != nil {
		return *u.Forwarding
	}
	return *c.Forwarding
}

// GPUPolicy is u's share of GPUs: a count (-1 for all, 0 for none), the
// mode, and whether to fall back to CPU.
func (c *Config) GPUPolicy(u User) (count int, exclusive, fallbackCPU bool) {
	spec := c.GPUs
	if u.GPUs != "" {
		spec = u.GPUs
	}
	count, _ = gpuCount(spec)
	fallback := c.GPUFallback
	if u.GPUFallback != "" {
		fallback = u.GPUFallback
	}
	return count, c.GPUMode == "exclusive", fallback == "cpu"
}

// gpuCount reads "all", "none" or a number of GPUs.
func gpuCount(spec string) (int, error) {
	switch spec {
	case "all":
		return -1, nil
	case "none":
		return 0, nil
	}
	n, err := strconv.Atoi(spec)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not all, none or a number of GPUs", spec)
	}
	return n, nil
}

// MaxContainersFor is u's container limit.
func (c *Config) MaxContainersFor(u User) int {
	if u.MaxContainers > 0 {
		return u.MaxContainers
	}
	return c.MaxContainers
}

// IdleStopFor is how long u's containers may sit idle; 0 is forever.
func (c *Config) IdleStopFor(u User) time.Duration {
	if u.IdleStopAfter != nil {
		return time.Duration(*u.IdleStopAfter)
	}
	return time.Duration(c.IdleStopAfter)
}

// IsAdmin reports whether the user may run operator verbs.
func (c *Config) IsAdmin(name string) bool {
	for _, a := range c.Admins {
		if a == name {
			return true
		}
	}
	return false
}

// SudoFor reports whether u gets passwordless sudo.
func (c *Config) SudoFor(u User) bool {
	if u.Sudo != nil {
		return *u.Sudo
	}
	return *c.Sudo
}
