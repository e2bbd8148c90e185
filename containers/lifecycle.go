package containers

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/berth-ssh/berth/agent"
	"github.com/berth-ssh/berth/audit"
)

// The lifecycle of a user's container, as the verbs drive it. Each takes
// the container's start flight, so it never races a connection that is
// starting the same container.

// ErrNoContainer is returned for a verb on a container that does not
// exist.
var ErrNoContainer = errors.New("no such container")

// NoContainer is the ErrNoContainer of one container.
type NoContainer struct{ Name string }

func (e *NoContainer) Error() string { return "no container " + e.Name }

func (e *NoContainer) Is(target error) bool { return target == ErrNoContainer }

// Start makes r's container run, building and creating it as needed, and
// prepares it as a login would (without a forwarded agent for the clone).
// It says what it did. keep exempts it from the idle stop until it stops.
func (m *Manager) Start(ctx context.Context, r Ref, keep bool, progress io.Writer) (string, error) {
	what := "is running"
	err := m.starts.do(ctx, m.base, r.Name(), "start", progress, func(ctx context.Context, progress io.Writer) error {
		w, err := m.ensure(ctx, r, progress)
		if err == nil && w != wasRunning {
			m.forget(r.Name(), w == wasCreated)
		}
		what = w
		return err
	})
	if err != nil {
		return "", err
	}
	m.setReady(r.Name(), true)
	for m.Prepare(ctx, r, "", false, progress) {
		what = wasCreated
	}
	if keep {
		if err := os.MkdirAll(filepath.Dir(m.keepPath(r.Name())), 0o700); err != nil {
			return what, err
		}
		if err := os.WriteFile(m.keepPath(r.Name()), nil, 0o600); err != nil {
			return what, err
		}
	}
	return what, nil
}

// Stop stops r's container, keeping everything in it; with remove it also
// removes the container. Data under data_root stays either way.
func (m *Manager) Stop(ctx context.Context, r Ref, remove bool) error {
	kind := "stop"
	if remove {
		kind = "remove"
	}
	return m.starts.do(ctx, m.base, r.Name(), kind, io.Discard, func(ctx context.Context, _ io.Writer) error {
		if _, err := m.inspectOwn(ctx, r); err != nil {
			return err
		}
		return m.stop(ctx, r.Name(), remove)
	})
}

func (m *Manager) stop(ctx context.Context, name string, remove bool) error {
	m.setReady(name, false)
	os.Remove(m.keepPath(name))
	if _, err := m.docker.ContainerStop(ctx, name, client.ContainerStopOptions{}); err != nil && !cerrdefs.IsNotFound(err) {
		return m.dockerFailure(ctx, "berth could not stop your container", err)
	}
	if remove {
		if _, err := m.docker.ContainerRemove(ctx, name, client.ContainerRemoveOptions{}); err != nil && !cerrdefs.IsNotFound(err) {
			return m.dockerFailure(ctx, "berth could not remove your container", err)
		}
		m.log.Info("container removed", audit.Event("container"), "container", name)
	} else {
		m.log.Info("container stopped", audit.Event("container"), "container", name)
	}
	return nil
}

// Restart stops and starts r's container. The start is a login's: GPUs
// taken meanwhile in exclusive mode mean new ones, and the next session
// prepares the container again.
func (m *Manager) Restart(ctx context.Context, r Ref, progress io.Writer) error {
	err := m.starts.do(ctx, m.base, r.Name(), "restart", progress, func(ctx context.Context, progress io.Writer) error {
		if _, err := m.inspectOwn(ctx, r); err != nil {
			return err
		}
		if err := m.stop(ctx, r.Name(), false); err != nil {
			return err
		}
		did, err := m.ensure(ctx, r, progress)
		if err == nil {
			m.forget(r.Name(), did == wasCreated)
		}
		return err
	})
	if err == nil {
		m.setReady(r.Name(), true)
	}
	return err
}

// Rebuild builds r's environment image again, from the Dockerfile as it
// is now (every layer, with noCache), and recreates the container on it. The image the container had is kept
// for Rollback; the persistent home stays.
func (m *Manager) Rebuild(ctx context.Context, r Ref, noCache bool, progress io.Writer) error {
	env, err := m.reloadEnvironment(r)
	if err != nil {
		return err
	}
	if err := m.buildShared(ctx, env, noCache, progress); err != nil {
		return err
	}
	return m.recreate(ctx, r, env.Tag(), progress)
}

// Rollback recreates r's container on the image it had before the last
// rebuild that changed it. The persistent home stays.
func (m *Manager) Rollback(ctx context.Context, r Ref, progress io.Writer) error {
	c, err := m.inspectOwn(ctx, r)
	if err != nil {
		return err
	}
	prev := c.Config.Labels[LabelPrevious]
	if prev == "" {
		return &Failure{Msg: "there is nothing to roll back to: no rebuild has changed your image yet", Err: errors.New("no previous image")}
	}
	return m.recreate(ctx, r, prev, progress)
}

// recreate replaces r's container with one made from image. The image
// the old container ran becomes the new one's previous image (tagged, so
// that it is kept); if it is the same image, the old previous carries over.
func (m *Manager) recreate(ctx context.Context, r Ref, image string, progress io.Writer) error {
	name := r.Name()
	err := m.starts.do(ctx, m.base, name, "recreate "+image, progress, func(ctx context.Context, progress io.Writer) error {
		m.gpuMu.Lock()
		defer m.gpuMu.Unlock()
		return m.recreateLocked(ctx, r, image, progress)
	})
	if err == nil {
		m.forget(name, false)
		m.setReady(name, true)
	}
	return err
}

// recreateLocked is recreate for a caller in r's start flight, holding
// gpuMu.
func (m *Manager) recreateLocked(ctx context.Context, r Ref, image string, progress io.Writer) error {
	name := r.Name()
	want, err := m.docker.ImageInspect(ctx, image)
	if err != nil {
		return m.dockerFailure(ctx, "the image to recreate your container from is gone", err)
	}
	previous := ""
	var prevGPUs []string
	old, err := m.inspectOwn(ctx, r)
	switch {
	case errors.Is(err, ErrNoContainer):
		if err := m.checkLimit(ctx, r); err != nil {
			return err
		}
	case err != nil:
		return err
	case old.Image == want.ID:
		previous = old.Config.Labels[LabelPrevious]
		prevGPUs = splitIDs(old.Config.Labels[LabelGPUs])
	default:
		previous = old.Image
		prevGPUs = splitIDs(old.Config.Labels[LabelGPUs])
	}
	if previous != "" {
		// A tag keeps the previous image from being pruned as dangling.
		if _, err := m.docker.ImageTag(ctx, client.ImageTagOptions{Source: previous, Target: prevTag(name)}); err != nil {
			return m.dockerFailure(ctx, "berth could not keep your previous image", err)
		}
	}
	acct, err := m.account(r.User)
	if err != nil {
		return &Failure{Msg: "berth could not work out your account", Err: err}
	}
	if old.ID != "" {
		fmt.Fprintf(progress, "berth: replacing your container %s (your home and projects stay)\n", name)
		if err := m.stop(ctx, name, true); err != nil {
			return err
		}
	}
	s := m.spec(r, acct)
	if image != s.Image {
		s.Image = want.ID // a rollback: the label says what it runs
	}
	if err := m.create(ctx, r, acct, s, want.ID, previous, prevGPUs, progress); err != nil {
		return err
	}
	return m.start(ctx, name, progress)
}

// prevTag is the tag that keeps a container's previous image.
func prevTag(name string) string { return "berth-env:previous-" + name }

// inspectOwn inspects r's container and checks it is r's.
func (m *Manager) inspectOwn(ctx context.Context, r Ref) (container.InspectResponse, error) {
	res, err := m.docker.ContainerInspect(ctx, r.Name(), client.ContainerInspectOptions{})
	if cerrdefs.IsNotFound(err) {
		return container.InspectResponse{}, &NoContainer{Name: r.Name()}
	}
	if err != nil {
		return container.InspectResponse{}, m.dockerFailure(ctx, "berth could not look up your container", err)
	}
	return res.Container, m.owns(res.Container, r)
}

// Prune removes r's container and every image that only it uses: one
// that another container runs is never removed. With data it also
// deletes the user's home, projects and vscode-server, which it refuses
// while the user has another container. It returns what it removed.
func (m *Manager) Prune(ctx context.Context, r Ref, data bool) ([]string, error) {
	var removed []string
	err := m.starts.do(ctx, m.base, r.Name(), fmt.Sprintf("prune data=%v", data), io.Discard, func(ctx context.Context, _ io.Writer) error {
		name := r.Name()
		c, err := m.inspectOwn(ctx, r)
		if err != nil && !(errors.Is(err, ErrNoContainer) && data) {
			return err
		}
		if data {
			others, err := m.list(ctx, r.User.Name)
			if err != nil {
				return m.dockerFailure(ctx, "berth could not list your containers", err)
			}
			for _, o := range others {
				if o.ID != c.ID {
					return &Failure{Msg: "your data is shared by your other containers; prune them first", Err: fmt.Errorf("%s has other containers", r.User.Name)}
				}
			}
		}
		images := []string{}
		if c.ID != "" {
			images = append(images, c.Image)
			if err := m.stop(ctx, name, true); err != nil {
				return err
			}
			removed = append(removed, "container "+name)
		}
		if prev, err := m.docker.ImageInspect(ctx, prevTag(name)); err == nil {
			m.docker.ImageRemove(ctx, prevTag(name), client.ImageRemoveOptions{})
			images = append(images, prev.ID)
		}
		inUse, err := m.imagesInUse(ctx)
		if err != nil {
			return m.dockerFailure(ctx, "berth could not list containers", err)
		}
		for _, id := range images {
			if inUse[id] {
				continue
			}
			if _, err := m.docker.ImageRemove(ctx, id, client.ImageRemoveOptions{Force: true, PruneChildren: true}); err == nil {
				removed = append(removed, "image "+shortID(id))
				m.log.Info("image removed", audit.Event("image"), "image", id, "by", name)
			} else if !cerrdefs.IsNotFound(err) {
				m.log.Warn("image not removed", "image", id, "err", err)
			}
		}
		if data {
			dir := filepath.Join(m.cfg.DataRoot, r.User.Name)
			if err := os.RemoveAll(dir); err != nil {
				return &Failure{Msg: "berth could not delete all of your data", Err: err}
			}
			removed = append(removed, "data "+dir)
			m.log.Warn("user data deleted on request", "user", r.User.Name, "dir", dir)
		}
		return nil
	})
	return removed, err
}

// imagesInUse is the set of image IDs that any container uses.
func (m *Manager) imagesInUse(ctx context.Context) (map[string]bool, error) {
	res, err := m.docker.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	for _, c := range res.Items {
		used[c.ImageID] = true
	}
	return used, nil
}

func shortID(id string) string {
	if len(id) > 19 {
		return id[:19]
	}
	return id
}

// Status describes one container for `status`.
type Status struct {
	Name     string    `json:"name"`
	Login    string    `json:"login"`
	State    string    `json:"state"` // running, exited, created, or absent
	Image    string    `json:"image"`
	ImageID  string    `json:"image_id,omitempty"`
	Built    time.Time `json:"image_built,omitzero"`
	Created  time.Time `json:"created,omitzero"`
	Started  time.Time `json:"started,omitzero"`
	Previous string    `json:"previous_image,omitempty"`
	Keep     bool      `json:"keep_running"`
	GPUs     []string  `json:"gpus"`
	Mounts   []Mount   `json:"mounts"`
	Limits   Limits    `json:"limits"`
	// DiskUsed is the bytes under the user's data_root directory.
	DiskUsed int64 `json:"disk_used_bytes"`
	// Packages is the state of the Python packages in ~/.venv; nil before
	// the first install.
	Packages *agent.PackagesStatus `json:"python_packages,omitempty"`
	// Repo is the repository cloned into ~/projects, if any, and whether
	// it is there.
	Repo       string `json:"repo,omitempty"`
	RepoCloned bool   `json:"repo_cloned,omitempty"`
}

// Limits are a container's resource limits as Docker enforces them; 0 is
// none.
type Limits struct {
	ShmSize   int64   `json:"shm_size_bytes"`
	Memory    int64   `json:"memory_bytes"`
	CPUs      float64 `json:"cpus"`
	PidsLimit int64   `json:"pids_limit"`
	// DiskQuota caps the container's own filesystem (not data_root).
	DiskQuota int64 `json:"disk_quota_bytes"`
	// DiskQuotaUnsupported says a disk_quota was asked for and the
	// storage driver could not enforce it.
	DiskQuotaUnsupported bool `json:"disk_quota_unsupported,omitempty"`
}

// Mount is one of a container's mounts.
type Mount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only"`
}

// Status reports on r's container; a missing one is "absent".
func (m *Manager) Status(ctx context.Context, r Ref) (Status, error) {
	st := Status{Name: r.Name(), Login: r.Login(), State: "absent", Image: m.environment(r).Tag(), GPUs: []string{}, Mounts: []Mount{}}
	st.DiskUsed = diskUsed(ctx, filepath.Join(m.cfg.DataRoot, r.User.Name))
	if b, err := m.readRunFile(r.Name(), agent.PackagesFile, 64<<10); err == nil {
		var p agent.PackagesStatus
		if json.Unmarshal(b, &p) == nil {
			st.Packages = &p
		}
	}
	if repo := m.cfg.RepoFor(r.User); repo != nil {
		st.Repo = repo.URL
		_, err := os.Lstat(m.repoDir(r.User))
		st.RepoCloned = err == nil
	}
	c, err := m.inspectOwn(ctx, r)
	if errors.Is(err, ErrNoContainer) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	st.State = string(c.State.Status)
	st.Image = c.Config.Labels[LabelImage]
	st.ImageID = c.Image
	st.Previous = c.Config.Labels[LabelPrevious]
	if ids := splitIDs(c.Config.Labels[LabelGPUs]); len(ids) > 0 {
		st.GPUs = ids
	}
	st.Created, _ = time.Parse(time.RFC3339Nano, c.Created)
	if c.State.Running {
		st.Started, _ = time.Parse(time.RFC3339Nano, c.State.StartedAt)
	}
	if img, err := m.docker.ImageInspect(ctx, c.Image); err == nil {
		st.Built, _ = time.Parse(time.RFC3339Nano, img.Created)
	}
	_, err = os.Stat(m.keepPath(r.Name()))
	st.Keep = err == nil
	if hc := c.HostConfig; hc != nil {
		st.Limits = Limits{ShmSize: hc.ShmSize, Memory: hc.Memory, CPUs: float64(hc.NanoCPUs) / 1e9}
		if hc.PidsLimit != nil {
			st.Limits.PidsLimit = *hc.PidsLimit
		}
		st.Limits.DiskQuota, _ = strconv.ParseInt(hc.StorageOpt["size"], 10, 64)
		st.Limits.DiskQuotaUnsupported = c.Config.Labels[LabelDiskQuota] == "unsupported"
	}
	for _, mt := range c.Mounts {
		if mt.Destination == agent.BinaryPath || mt.Destination == agent.RunDir {
			continue // berth's own
		}
		st.Mounts = append(st.Mounts, Mount{Source: mt.Source, Target: mt.Destination, ReadOnly: !mt.RW})
	}
	return st, nil
}

// StatusAll reports on every container of user's.
func (m *Manager) StatusAll(ctx context.Context, u Ref) ([]Status, error) {
	list, err := m.list(ctx, u.User.Name)
	if err != nil {
		return nil, m.dockerFailure(ctx, "berth could not list your containers", err)
	}
	refs := []Ref{{User: u.User}}
	for _, c := range list {
		if inst := c.Labels[LabelInstance]; inst != "" {
			refs = append(refs, Ref{User: u.User, Instance: inst})
		}
	}
	slices.SortFunc(refs[1:], func(a, b Ref) int { return cmp.Compare(a.Instance, b.Instance) })
	var out []Status
	for _, r := range refs {
		st, err := m.Status(ctx, r)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// diskUsed adds up the space used under dir, giving up after a few
// seconds on a huge tree (the figure is then a lower bound).
func diskUsed(ctx context.Context, dir string) int64 {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var total int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if ctx.Err() != nil {
			return fs.SkipAll
		}
		if info, err := d.Info(); err == nil {
			total += info.Size()
		}
		return nil
	})
	return total
}

// Logs writes the provisioning log and then the container's log to w;
// with follow it goes on until ctx ends.
func (m *Manager) Logs(ctx context.Context, r Ref, follow bool, w io.Writer) error {
	if _, err := m.inspectOwn(ctx, r); err != nil {
		return err
	}
	if b, err := m.readRunFile(r.Name(), agent.ProvisionLog, 1<<20); err == nil {
		fmt.Fprintf(w, "== provisioning log ==\n%s", b)
	}
	fmt.Fprintf(w, "== container log ==\n")
	logs, err := m.docker.ContainerLogs(ctx, r.Name(), client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Follow: follow})
	if err != nil {
		return m.dockerFailure(ctx, "berth could not read your container's log", err)
	}
	defer logs.Close()
	context.AfterFunc(ctx, func() { logs.Close() })
	_, err = stdcopy.StdCopy(w, w, logs)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// keepPath marks a container started with --keep. It is in berth's own
// state, not the run directory the container can write.
func (m *Manager) keepPath(name string) string { return filepath.Join(m.cfg.StateDir, "keep", name) }
