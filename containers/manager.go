// Package containers is berth's use of Docker: the environment image, each
// user's persistent container, and the way into it.
//
// Every user has a container, berth-<user> (and berth-<user>-NAME for a
// login alice+NAME), made from an environment image and kept between
// connections. Its main process is berth's agent (see package agent) under
// Docker's init; Open returns a connection to that agent, building the
// image and creating or starting the container first when needed. The
// lifecycle verbs (Start, Stop, Rebuild, Rollback, Prune, ...) and the GPU
// leases live here too.
//
//	m, err := containers.New(cfg, gpus.Open(nvml.New(), logger), metrics.New(), logger)
//	conn, err := m.Open(ctx, containers.Ref{User: user}, progress)
package containers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	units "github.com/docker/go-units"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"

	"github.com/berth-ssh/berth/agent"
	"github.com/berth-ssh/berth/audit"
	"github.com/berth-ssh/berth/config"
	"github.com/berth-ssh/berth/environment"
	"github.com/berth-ssh/berth/gpus"
	"github.com/berth-ssh/berth/metrics"
)

// Labels berth puts on what it creates.
const (
	LabelUser     = "berth.user"
	LabelInstance = "berth.instance"
	LabelImage    = "berth.image"
	LabelConfig   = "berth.config"
	// LabelPrevious is the image ID a container had before its last
	// rebuild, for rollback.
	LabelPrevious = "berth.previous-image"
	// LabelEnvironment is on images: the environment they were built
	// for, so that older builds of it can be found and removed.
	LabelEnvironment = "berth.environment"
	// LabelDiskQuota is "unsupported" on a container whose disk_quota the
	// storage driver could not enforce.
	LabelDiskQuota = "berth.disk-quota"
)

// NetworkName is the bridge network user containers sit on. Its
// inter-container traffic is off, so users cannot reach each other.
const NetworkName = "berth"

// agentWait bounds how long a starting container may take to answer.
const agentWait = 60 * time.Second

// Manager makes sure users' containers exist and are running.
type Manager struct {
	docker *client.Client
	cfg    *config.Config
	env    *environment.Environment            // the default
	envs   map[string]*environment.Environment // named, for alice+NAME
	gpus   *gpus.Inventory
	met    *metrics.Metrics
	log    *slog.Logger
	// base outlives sessions: builds and starts shared by several
	// sessions run on it. It ends when the Manager is closed.
	base   context.Context
	cancel context.CancelFunc

	accounts accounts
	builds   flights // by image tag
	starts   flights // by container name

	// gpuMu makes choosing GPUs and starting the container that leases
	// them one step, so two containers never take the same GPU.
	gpuMu sync.Mutex
	mu    sync.Mutex        // guards known, env and envs
	known map[string]*known // by container name
}

// known is what berth remembers of a container between sessions.
type known struct {
	ready    bool   // its agent answered
	pidNS    string // its PID namespace, to check who answers its socket
	prepared bool   // a session since its start has run Prepare
	fresh    bool   // its last start created it
}

// remember returns what berth knows of name. The caller holds mu.
func (m *Manager) remember(name string) *known {
	k, ok := m.known[name]
	if !ok {
		k = &known{}
		m.known[name] = k
	}
	return k
}

// New checks the environment and the agent binary, and connects to Docker.
// It does not need Docker to be up: a Docker engine that is down is
// reported to each connecting user until it comes back. inv is the host's
// GPUs (one with no driver gives CPU-only containers); met may be nil.
func New(cfg *config.Config, inv *gpus.Inventory, met *metrics.Metrics, log *slog.Logger) (*Manager, error) {
	env, err := environment.Load(cfg.Environment.Dockerfile, cfg.Environment.BuildArgs)
	if err != nil {
		return nil, err
	}
	envs := map[string]*environment.Environment{}
	for name, e := range cfg.Environments {
		if envs[name], err = environment.Load(e.Dockerfile, e.BuildArgs); err != nil {
			return nil, fmt.Errorf("environments.%s: %w", name, err)
		}
	}
	for _, u := range cfg.Users {
		switch {
		case u.Image != "":
			envs["user:"+u.Name] = environment.Prebuilt(u.Image)
		case u.Environment != nil:
			if envs["user:"+u.Name], err = environment.Load(u.Environment.Dockerfile, u.Environment.BuildArgs); err != nil {
				return nil, fmt.Errorf("users %s: environment: %w", u.Name, err)
			}
		}
	}
	opts := []client.Opt{client.FromEnv}
	if cfg.DockerHost != "" {
		opts = append(opts, client.WithHost(cfg.DockerHost))
	}
	docker, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	m := &Manager{
		docker:   docker,
		cfg:      cfg,
		env:      env,
		envs:     envs,
		gpus:     inv,
		met:      met,
		log:      log,
		accounts: accounts{path: filepath.Join(cfg.StateDir, "uids.json")},
		known:    map[string]*known{},
	}
	m.base, m.cancel = context.WithCancel(context.Background())
	if err := m.installAgent(); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// Ping reports whether the Docker engine answers now.
func (m *Manager) Ping(ctx context.Context) error {
	_, err := m.docker.Ping(ctx, client.PingOptions{})
	return err
}

// Close cancels shared work in flight and closes the Docker client.
func (m *Manager) Close() error {
	m.cancel()
	return m.docker.Close()
}

// Ref names one of a user's containers: their default one, or the
// instance of a login name such as alice+exp.
type Ref struct {
	User     config.User
	Instance string
}

// Name is the container's name: berth-alice, or berth-alice-exp for
// alice+exp.
func (r Ref) Name() string {
	if r.Instance == "" {
		return Name(r.User.Name)
	}
	return Name(r.User.Name) + "-" + r.Instance
}

// Login is the login name that reaches the container.
func (r Ref) Login() string {
	if r.Instance == "" {
		return r.User.Name
	}
	return r.User.Name + "+" + r.Instance
}

// Name is the container name of user's default container.
func Name(user string) string { return "berth-" + user }

// environment is the environment ref's container is made from: the one
// named like its instance, else the user's repo's .berth/Dockerfile when
// they opted in and it is there, else the user's own, else the default.
func (m *Manager) environment(r Ref) *environment.Environment {
	key, _, _, _ := m.envSource(r)
	m.mu.Lock()
	e, ok := m.envs[key]
	m.mu.Unlock()
	switch {
	case ok:
		return e
	case strings.HasPrefix(key, repoKey):
		// Read when first needed: the repo may have been cloned since.
		e, err := m.reloadEnvironment(r)
		if err == nil {
			return e
		}
		// Until rebuild reads it again, the configured one stands in, so
		// that a repo too big to use is not read at every turn.
		m.log.Warn("the repo's Dockerfile cannot be used; the configured environment stands in until a rebuild", "user", r.User.Name, "err", err)
		e = m.configured(r)
		m.mu.Lock()
		m.envs[key] = e
		m.mu.Unlock()
		return e
	}
	return m.env
}

// repoKey prefixes the key of a user's repo environment in m.envs.
const repoKey = "repo:"

// configured is the environment r would have without a repo Dockerfile.
func (m *Manager) configured(r Ref) *environment.Environment {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.envs["user:"+r.User.Name]; ok {
		return e
	}
	return m.env
}

// envSource says where r's environment comes from: its key in m.envs
// ("" for the default), and the config that makes it, a prebuilt image,
// or a repo directory on the host holding .berth/Dockerfile.
func (m *Manager) envSource(r Ref) (key string, conf config.Environment, image, repo string) {
	if e, ok := m.cfg.Environments[r.Instance]; ok && r.Instance != "" {
		return r.Instance, e, "", ""
	}
	conf = m.cfg.Environment
	if r.User.Environment != nil {
		conf = *r.User.Environment
	}
	if dir := m.repoDir(r.User); r.Instance == "" && r.User.RepoDockerfile && dir != "" {
		// A first look only; environment.LoadRepo reads the tree safely.
		d, derr := os.Lstat(filepath.Join(dir, ".berth"))
		f, ferr := os.Lstat(filepath.Join(dir, ".berth", "Dockerfile"))
		if derr == nil && ferr == nil && d.IsDir() && f.Mode().IsRegular() {
			return repoKey + r.User.Name, conf, "", dir
		}
	}
	switch {
	case r.User.Image != "":
		return "user:" + r.User.Name, config.Environment{}, r.User.Image, ""
	case r.User.Environment != nil:
		return "user:" + r.User.Name, conf, "", ""
	}
	return "", conf, "", ""
}

// loadEnvironment reads r's environment from disk.
func (m *Manager) loadEnvironment(r Ref) (string, *environment.Environment, error) {
	key, conf, image, repo := m.envSource(r)
	switch {
	case image != "":
		return key, environment.Prebuilt(image), nil
	case repo != "":
		a, err := m.account(r.User)
		if err != nil {
			return key, nil, err
		}
		env, err := environment.LoadRepo(repo, a.UID, conf.BuildArgs)
		return key, env, err
	}
	env, err := environment.Load(conf.Dockerfile, conf.BuildArgs)
	return key, env, err
}

// reloadEnvironment reads r's environment from disk again, so that a
// rebuild picks up an edited Dockerfile; containers made later use it too.
func (m *Manager) reloadEnvironment(r Ref) (*environment.Environment, error) {
	key, env, err := m.loadEnvironment(r)
	if err != nil {
		return nil, &Failure{Msg: "the environment's Dockerfile cannot be read", Err: err}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if key == "" {
		m.env = env
	} else {
		m.envs[key] = env
	}
	return env, nil
}

// Open returns a connection to the agent in r's container, building the
// image and creating or starting the container when needed. Progress for
// the user goes to progress. On the warm path it makes no Docker call at
// all: a container whose agent answers is ready.
func (m *Manager) Open(ctx context.Context, r Ref, progress io.Writer) (*net.UnixConn, error) {
	name := r.Name()
	if m.isReady(name) {
		c, err := m.connect(ctx, name)
		if err == nil {
			return c, nil
		}
		if errors.Is(err, errForeignAgent) {
			return nil, err
		}
		m.setReady(name, false)
	}
	err := m.starts.do(ctx, m.base, name, "start", progress, func(ctx context.Context, progress io.Writer) error {
		did, err := m.ensure(ctx, r, progress)
		if err == nil && did != wasRunning {
			m.forget(name, did == wasCreated)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	c, err := m.connect(ctx, name)
	var f *Failure
	if errors.As(err, &f) {
		return nil, err
	}
	if err != nil {
		return nil, &Failure{Msg: "your container is running but berth's agent in it does not answer", Err: err}
	}
	m.setReady(name, true)
	return c, nil
}

func (m *Manager) isReady(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.remember(name).ready
}

// setReady records whether name's agent answers. A container that stops
// answering may be replaced, so its namespace is looked up again.
func (m *Manager) setReady(name string, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := m.remember(name)
	k.ready = ok
	if !ok {
		k.pidNS = ""
	}
}

// What ensure found and did.
const (
	wasRunning = "was already running"
	wasStarted = "started"
	wasCreated = "created and started"
)

// ensure makes r's container exist and run, with its agent answering, and
// says which of that it had to do.
func (m *Manager) ensure(ctx context.Context, r Ref, progress io.Writer) (string, error) {
	name := r.Name()
	acct, err := m.account(r.User)
	if err != nil {
		return "", &Failure{Msg: "berth could not work out your account", Err: err}
	}
	want := m.spec(r, acct)
	inspect, err := m.docker.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
	switch {
	case cerrdefs.IsNotFound(err):
		if err := m.checkLimit(ctx, r); err != nil {
			return "", err
		}
		if err := m.ensureImage(ctx, m.environment(r), progress); err != nil {
			return "", err
		}
		m.gpuMu.Lock()
		defer m.gpuMu.Unlock()
		if err := m.create(ctx, r, acct, want, want.Image, "", nil, progress); err != nil {
			return "", err
		}
		return wasCreated, m.start(ctx, name, progress)
	case err != nil:
		return "", m.dockerFailure(ctx, "berth could not look up your container", err)
	}
	c := inspect.Container
	if err := m.owns(c, r); err != nil {
		return "", err
	}
	if c.Config.Labels[LabelConfig] != want.hash() {
		m.log.Warn("container differs from the current config; keeping it", "container", name,
			"has", c.Config.Labels[LabelConfig], "want", want.hash())
		fmt.Fprintf(progress, "berth: your container was made from an older configuration or image; it is kept as it is until `rebuild` recreates it.\n")
	}
	if c.State != nil && c.State.Running {
		// Known now, so checking the agent's socket needs no second look.
		m.mu.Lock()
		m.remember(name).pidNS = pidNamespace(c.State.Pid)
		m.mu.Unlock()
		return wasRunning, m.waitAgent(ctx, name, progress, false)
	}
	m.gpuMu.Lock()
	defer m.gpuMu.Unlock()
	taken, err := m.gpusTaken(ctx, r, c)
	if err != nil {
		return "", err
	}
	if taken {
		// Docker fixes a container's GPUs at creation: another set means
		// another container.
		fmt.Fprintf(progress, "berth: your GPUs were taken while your container was stopped; it is recreated on free ones. Your home and projects are kept; system packages installed outside them are not.\n")
		return wasCreated, m.recreateLocked(ctx, r, c.Image, progress)
	}
	return wasStarted, m.start(ctx, name, progress)
}

// owns checks that c is r's container, made by this berth: another
// user's container can share its name (user alice-exp's berth-alice-exp
// and alice+exp), and one made under another state_dir has its agent
// elsewhere.
func (m *Manager) owns(c container.InspectResponse, r Ref) error {
	name := r.Name()
	if c.Config == nil || c.Config.Labels[LabelUser] != r.User.Name || c.Config.Labels[LabelInstance] != r.Instance {
		return &Failure{
			Msg: "the container name " + name + " is taken by another user's container",
			Err: fmt.Errorf("container %s has labels %v, want user %s instance %q", name, labels(c), r.User.Name, r.Instance),
		}
	}
	if !m.ownRunDir(c, name) {
		return &Failure{
			Msg: "a container named " + name + " exists that another berth installation made; an admin must remove it",
			Err: fmt.Errorf("container %s does not mount %s at %s", name, m.runDir(name), agent.RunDir),
		}
	}
	return nil
}

func labels(c container.InspectResponse) map[string]string {
	if c.Config == nil {
		return nil
	}
	return c.Config.Labels
}

// checkLimit refuses a new container past the user's max_containers.
func (m *Manager) checkLimit(ctx context.Context, r Ref) error {
	list, err := m.list(ctx, r.User.Name)
	if err != nil {
		return m.dockerFailure(ctx, "berth could not count your containers", err)
	}
	if max := m.cfg.MaxContainersFor(r.User); len(list) >= max {
		return &Failure{
			Msg: fmt.Sprintf("you already have %d containers, your limit; remove one with `ssh %s+NAME@host prune`", len(list), r.User.Name),
			Err: fmt.Errorf("max_containers %d reached for %s", max, r.User.Name),
		}
	}
	return nil
}

// list returns every container of user's, running or not.
func (m *Manager) list(ctx context.Context, user string) ([]container.Summary, error) {
	res, err := m.docker.ContainerList(ctx, client.ContainerListOptions{
		All: true, Filters: make(client.Filters).Add("label", LabelUser+"="+user),
	})
	return res.Items, err
}

// ownRunDir reports whether c mounts this berth's agent directory, that
// is, whether this berth (this state_dir) made it.
func (m *Manager) ownRunDir(c container.InspectResponse, name string) bool {
	for _, mt := range c.Mounts {
		if mt.Destination == agent.RunDir {
			return mt.Source == m.runDir(name)
		}
	}
	return false
}

// start starts the container and waits for its agent.
func (m *Manager) start(ctx context.Context, name string, progress io.Writer) error {
	begin := time.Now()
	fmt.Fprintf(progress, "berth: starting your container %s\n", name)
	// A socket left by the previous run must not be mistaken for the new
	// agent's. start --keep lasts until the container stops, however it
	// stopped, so a starting container is not kept.
	os.Remove(m.socketPath(name))
	os.Remove(m.keepPath(name))
	if _, err := m.docker.ContainerStart(ctx, name, client.ContainerStartOptions{}); err != nil {
		if noNVIDIARuntime(err) {
			return &Failure{Msg: "your container is to get GPUs, but this Docker engine has no NVIDIA runtime; an admin must install the NVIDIA Container Toolkit", Err: err}
		}
		return m.dockerFailure(ctx, "your container failed to start", err)
	}
	if err := m.waitAgent(ctx, name, progress, true); err != nil {
		return err
	}
	fmt.Fprintf(progress, "berth: container ready in %s\n", since(begin))
	m.log.Info("container started", audit.Event("container"), "container", name, "took", since(begin))
	return nil
}

// waitAgent polls the agent socket until it answers, the container stops,
// or agentWait passes.
func (m *Manager) waitAgent(ctx context.Context, name string, progress io.Writer, starting bool) error {
	sock := m.socketPath(name)
	deadline := time.Now().Add(agentWait)
	delay := 5 * time.Millisecond
	for polls := 0; ; polls++ {
		c, err := agent.Connect(ctx, sock)
		if err == nil {
			c.Close()
			return nil
		}
		if polls%20 == 19 || time.Now().After(deadline) {
			inspect, ierr := m.docker.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
			if ierr != nil {
				return m.dockerFailure(ctx, "berth lost track of your container while it started", ierr)
			}
			if st := inspect.Container.State; st != nil && !st.Running {
				return &Failure{
					Msg: "your container stopped while starting",
					Err: fmt.Errorf("container %s exited with %d: %s", name, st.ExitCode, m.logTail(ctx, name)),
				}
			}
			if time.Now().After(deadline) {
				return &Failure{Msg: "your container started but berth's agent in it does not answer",
					Err: fmt.Errorf("no agent after %s: %w", agentWait, err)}
			}
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(delay):
		}
		delay = min(delay*2, 100*time.Millisecond)
	}
}

// logTail returns the last lines of a container's log, for error details.
func (m *Manager) logTail(ctx context.Context, name string) string {
	logs, err := m.docker.ContainerLogs(ctx, name, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Tail: "10"})
	if err != nil {
		return err.Error()
	}
	defer logs.Close()
	b, _ := io.ReadAll(io.LimitReader(logs, 8192))
	return string(stripStreamHeaders(b))
}

// stripStreamHeaders removes Docker's 8-byte multiplexing headers from a
// non-TTY log stream, leaving the text.
func stripStreamHeaders(b []byte) []byte {
	var out []byte
	for len(b) >= 8 && (b[0] == 1 || b[0] == 2) {
		n := int(b[4])<<24 | int(b[5])<<16 | int(b[6])<<8 | int(b[7])
		b = b[8:]
		n = min(n, len(b))
		out = append(out, b[:n]...)
		b = b[n:]
	}
	return append(out, b...)
}

// installAgent copies the agent binary into state_dir, where containers
// mount it from. Copying (not mounting the original) keeps containers
// independent of where berth was run from; replacing by rename keeps a
// running container's mounted copy intact.
func (m *Manager) installAgent() error {
	src, err := findAgent(m.cfg.AgentPath)
	if err != nil {
		return err
	}
	dst := m.agentPath()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("agent_path: %w", err)
	}
	if old, err := os.ReadFile(dst); err == nil && string(old) == string(data) {
		return nil
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, data, 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// findAgent locates the berth-agent binary: the configured path, else
// beside the running executable, else on PATH.
func findAgent(configured string) (string, error) {
	if configured != "" {
		if _, err := os.Stat(configured); err != nil {
			return "", fmt.Errorf("agent_path: %w", err)
		}
		return configured, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "berth-agent")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("berth-agent"); err == nil {
		return p, nil
	}
	return "", errors.New("berth-agent not found beside berth or on PATH; build it with `make` or set agent_path")
}

func (m *Manager) agentPath() string { return filepath.Join(m.cfg.StateDir, "bin", "berth-agent") }

func (m *Manager) runDir(name string) string { return filepath.Join(m.cfg.StateDir, "run", name) }

func (m *Manager) socketPath(name string) string {
	return filepath.Join(m.runDir(name), agent.SocketName)
}

// spec is everything a container is created from. Its hash is kept in a
// label, so berth can tell when the config has moved on.
type spec struct {
	Image     string           `json:"image"` // the environment's tag
	Account   agent.Account    `json:"account"`
	DataRoot  string           `json:"data_root"`
	Mounts    []config.Mount   `json:"mounts"`
	Resources config.Resources `json:"resources"`
	Layout    int              `json:"layout"` // berth's own mounts and paths
	// Env is pip's configuration (agent.EnvPythonIndex, EnvTorchIndex).
	Env []string `json:"env,omitempty"`
}

// layoutVersion changes whenever create changes what it makes.
const layoutVersion = 2

func (m *Manager) spec(r Ref, a agent.Account) spec {
	return spec{
		Image:     m.environment(r).Tag(),
		Account:   a,
		DataRoot:  m.cfg.DataRoot,
		Mounts:    m.cfg.MountsFor(r.User),
		Resources: m.cfg.ResourcesFor(r.User),
		Layout:    layoutVersion,
		Env:       m.pipEnv(),
	}
}

// pipEnv tells the agent where pip finds packages; it writes pip's
// configuration from it at each start (see agent.EnvTorchIndex).
func (m *Manager) pipEnv() []string {
	var env []string
	if m.cfg.PythonIndex != "" {
		env = append(env, agent.EnvPythonIndex+"="+m.cfg.PythonIndex)
	}
	if m.cfg.TorchIndex != "" {
		env = append(env, agent.EnvTorchIndex+"="+m.cfg.TorchIndex)
	}
	return env
}

func (s spec) hash() string {
	b, _ := json.Marshal(s)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// create makes the user's data directories and r's container from image
// (the environment's tag, or an older image's ID for rollback). previous
// is the image to record for a later rollback, and prevGPUs the GPUs to
// prefer. Everything that Docker fixes at creation (mounts, init, network,
// labels, GPUs) is final here. The caller holds gpuMu.
func (m *Manager) create(ctx context.Context, r Ref, a agent.Account, s spec, image, previous string, prevGPUs []string, progress io.Writer) error {
	name := r.Name()
	gpuIDs, cuda, err := m.allocateGPUs(ctx, r, prevGPUs, progress)
	if err != nil {
		return err
	}
	gpuEnv, devices := gpuRequest(gpuIDs, cuda)
	fmt.Fprintf(progress, "berth: creating your container %s from %s with %s\n", name, s.Image, gpuWords(gpuIDs))
	data, err := m.prepareData(a)
	if err != nil {
		return &Failure{Msg: "berth could not prepare your data directories", Err: err}
	}
	if err := os.MkdirAll(m.runDir(name), 0o700); err != nil {
		return &Failure{Msg: "berth could not prepare your container", Err: err}
	}
	if err := m.ensureNetwork(ctx); err != nil {
		return err
	}
	home := a.Home()
	bind := func(src, dst string, ro bool) mount.Mount {
		return mount.Mount{Type: mount.TypeBind, Source: src, Target: dst, ReadOnly: ro}
	}
	var extra []mount.Mount
	for _, mt := range s.Mounts {
		extra = append(extra, bind(mt.Source, mt.Target, mt.ReadOnly))
	}
	res := limits(s.Resources)
	init := true
	opts := client.ContainerCreateOptions{
		Name: name,
		Config: &container.Config{
			Image:    image,
			Hostname: name,
			Entrypoint: []string{agent.BinaryPath, "init",
				"--user", a.Name, "--uid", strconv.Itoa(a.UID), "--gid", strconv.Itoa(a.GID),
				"--sudo=" + strconv.FormatBool(a.Sudo)},
			WorkingDir: "/",
			Env:        append(gpuEnv, s.Env...),
			Labels: map[string]string{
				LabelGPUs:     strings.Join(gpuIDs, ","),
				LabelUser:     a.Name,
				LabelInstance: r.Instance,
				LabelImage:    s.Image,
				LabelConfig:   s.hash(),
				LabelPrevious: previous,
			},
		},
		HostConfig: &container.HostConfig{
			Init:        &init,
			NetworkMode: container.NetworkMode(NetworkName),
			// Docker's default set, less what neither the seed's tools nor
			// berth's agent use. sudo needs setuid; without sudo nothing
			// in the container may gain privileges at all.
			CapDrop:     []string{"MKNOD", "NET_RAW", "SYS_CHROOT", "SETPCAP"},
			SecurityOpt: securityOpts(a.Sudo),
			ShmSize:     res.shm,
			Resources: container.Resources{
				DeviceRequests: devices,
				Memory:         res.memory,
				NanoCPUs:       res.nanoCPUs,
				PidsLimit:      &res.pids,
				Ulimits:        res.ulimits,
			},
			Mounts: append([]mount.Mount{
				bind(data.home, home, false),
				bind(data.projects, home+"/projects", false),
				bind(data.vscode, home+"/.vscode-server", false),
				bind(m.agentPath(), agent.BinaryPath, true),
				bind(m.runDir(name), agent.RunDir, false),
			}, extra...),
		},
	}
	if res.disk > 0 {
		opts.HostConfig.StorageOpt = map[string]string{"size": strconv.FormatInt(res.disk, 10)}
	}
	_, err = m.docker.ContainerCreate(ctx, opts)
	if err != nil && res.disk > 0 && strings.Contains(err.Error(), "storage-opt") {
		// Only some storage drivers can cap a container's disk; where this
		// one cannot, the container is made without it, and says so.
		m.log.Warn("disk_quota not enforced: the Docker storage driver cannot", "container", name, "err", err)
		fmt.Fprintf(progress, "berth: note: your disk_quota is not enforced: this Docker engine's storage driver cannot cap a container's disk (overlay2 on XFS with pquota, btrfs and zfs can).\n")
		opts.HostConfig.StorageOpt = nil
		opts.Config.Labels[LabelDiskQuota] = "unsupported"
		_, err = m.docker.ContainerCreate(ctx, opts)
	}
	if cerrdefs.IsConflict(err) {
		// Made meanwhile outside this berth; ensure looks at it next time.
		return &Failure{Msg: "your container was being made by someone else at the same moment; try again", Err: err}
	}
	if err != nil {
		return m.dockerFailure(ctx, "berth could not create your container", err)
	}
	m.mu.Lock()
	m.remember(name).pidNS = "" // a new container, a new namespace
	m.mu.Unlock()
	m.log.Info("container created", audit.Event("container"), "container", name, "image", s.Image, "uid", a.UID, "gid", a.GID)
	return nil
}

// ensureNetwork creates berth's network unless it exists.
func (m *Manager) ensureNetwork(ctx context.Context) error {
	if _, err := m.docker.NetworkInspect(ctx, NetworkName, client.NetworkInspectOptions{}); err == nil {
		return nil
	} else if !cerrdefs.IsNotFound(err) {
		return m.dockerFailure(ctx, "berth could not set up the container network", err)
	}
	_, err := m.docker.NetworkCreate(ctx, NetworkName, client.NetworkCreateOptions{
		Driver:  "bridge",
		Options: map[string]string{"com.docker.network.bridge.enable_icc": "false"},
		Labels:  map[string]string{"berth.network": "users"},
	})
	if err != nil && !cerrdefs.IsConflict(err) {
		return m.dockerFailure(ctx, "berth could not set up the container network", err)
	}
	return nil
}

func securityOpts(sudo bool) []string {
	if sudo {
		return nil
	}
	return []string{"no-new-privileges:true"}
}

// dockerLimits are config.Resources in Docker's units.
type dockerLimits struct {
	shm, memory, nanoCPUs, pids, disk int64
	ulimits                           []*container.Ulimit
}

// limits converts validated resources; config validation has already
// refused sizes that do not parse.
func limits(r config.Resources) dockerLimits {
	var l dockerLimits
	l.shm, _ = units.RAMInBytes(r.ShmSize)
	if r.Memory != "" {
		l.memory, _ = units.RAMInBytes(r.Memory)
	}
	l.nanoCPUs = int64(r.CPUs * 1e9)
	l.pids = r.PidsLimit
	if r.DiskQuota != "" {
		l.disk, _ = units.RAMInBytes(r.DiskQuota)
	}
	if r.Memlock != "" {
		n := int64(-1) // unlimited
		if r.Memlock != "unlimited" {
			n, _ = units.RAMInBytes(r.Memlock)
		}
		l.ulimits = []*container.Ulimit{{Name: "memlock", Soft: n, Hard: n}}
	}
	return l
}

// Failure is an error with one sentence for the user; Err has the detail
// for the log.
type Failure struct {
	Msg string
	Err error
}

func (f *Failure) Error() string { return f.Msg + ": " + f.Err.Error() }
func (f *Failure) Unwrap() error { return f.Err }

// dockerDown is the user's sentence when the engine cannot be reached.
const dockerDown = "the Docker engine is not reachable right now; try again in a minute, and tell your admin if it lasts"

// dockerFailure wraps a failed Docker call. When the engine itself is
// unreachable that, not the call, is what the user is told.
func (m *Manager) dockerFailure(ctx context.Context, msg string, err error) error {
	if client.IsErrConnectionFailed(err) {
		return &Failure{Msg: dockerDown, Err: err}
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if _, perr := m.docker.Ping(pctx, client.PingOptions{}); perr != nil {
		return &Failure{Msg: dockerDown, Err: errors.Join(err, perr)}
	}
	return &Failure{Msg: msg, Err: err}
}

func gpuWords(ids []string) string {
	switch len(ids) {
	case 0:
		return "no GPU"
	case 1:
		return "1 GPU"
	}
	return fmt.Sprintf("%d GPUs", len(ids))
}

func since(t time.Time) time.Duration { return time.Since(t).Round(100 * time.Millisecond) }
