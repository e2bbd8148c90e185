package containers

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/build"
	"github.com/moby/moby/api/types/image"
	"github.com/moby/moby/api/types/jsonstream"
	"github.com/moby/moby/client"

	"github.com/berth-ssh/berth/audit"
	"github.com/berth-ssh/berth/environment"
)

// ensureImage builds env's image unless it exists. A prebuilt image must
// exist already: there is no registry to pull it from.
func (m *Manager) ensureImage(ctx context.Context, env *environment.Environment, progress io.Writer) error {
	if _, err := m.docker.ImageInspect(ctx, env.Tag()); err == nil {
		return nil
	} else if !cerrdefs.IsNotFound(err) {
		return m.dockerFailure(ctx, "berth could not look up the environment image", err)
	}
	return m.buildShared(ctx, env, false, progress)
}

// buildShared builds env's image; concurrent callers share one build and
// all see its output. A prebuilt image is only checked.
func (m *Manager) buildShared(ctx context.Context, env *environment.Environment, noCache bool, progress io.Writer) error {
	if env.Image != "" {
		if _, err := m.docker.ImageInspect(ctx, env.Image); err != nil {
			return &Failure{Msg: "the image " + env.Image + " your configuration names is not on this host", Err: err}
		}
		return nil
	}
	return m.builds.do(ctx, m.base, env.Tag(), "build", progress, func(ctx context.Context, progress io.Writer) error {
		return m.build(ctx, env, noCache, progress)
	})
}

// build builds env's image, streaming Docker's build output to progress
// as plain lines. noCache rebuilds every layer.
func (m *Manager) build(ctx context.Context, env *environment.Environment, noCache bool, progress io.Writer) error {
	tag := env.Tag()
	begin := time.Now()
	fmt.Fprintf(progress, "berth: building %s as %s; the first build takes a few minutes\n", env, tag)
	m.log.Info("image build started", "image", tag, "environment", env.Name, "no_cache", noCache)
	res, err := m.docker.ImageBuild(ctx, env.Context(), client.ImageBuildOptions{
		Tags:        []string{tag},
		NoCache:     noCache,
		Dockerfile:  env.Dockerfile,
		BuildArgs:   env.BuildArgs(),
		Remove:      true,
		ForceRemove: true,
		Version:     build.BuilderV1,
		Labels:      map[string]string{LabelImage: tag, LabelEnvironment: env.Lineage()},
	})
	if err != nil {
		m.met.Build(false, time.Since(begin))
		return m.dockerFailure(ctx, "the environment image could not be built", err)
	}
	defer res.Body.Close()
	if err := streamBuild(res.Body, progress); err != nil {
		m.met.Build(false, time.Since(begin))
		m.log.Error("image build failed", "image", tag, "err", err)
		return &Failure{Msg: "the environment image failed to build (the build output above says why)", Err: err}
	}
	// The stream ends without an error when the daemon dies mid-build; only
	// an image that exists counts.
	if _, err := m.docker.ImageInspect(ctx, tag); err != nil {
		m.met.Build(false, time.Since(begin))
		return m.dockerFailure(ctx, "the environment image build did not finish", err)
	}
	m.met.Build(true, time.Since(begin))
	m.removeOldImages(ctx, env)
	m.log.Info("image built", audit.Event("image"), "image", tag, "took", since(begin))
	fmt.Fprintf(progress, "berth: built %s in %s\n", tag, since(begin))
	return nil
}

// removeOldImages removes the builds of env's lineage (see
// environment.Lineage) that are neither the current one, nor the one
// before it, nor used by any container. A rollback's previous-<container>
// tag keeps its image, since only berth-env:<hash> tags are removed.
func (m *Manager) removeOldImages(ctx context.Context, env *environment.Environment) {
	res, err := m.docker.ImageList(ctx, client.ImageListOptions{
		Filters: make(client.Filters).Add("label", LabelEnvironment+"="+env.Lineage()),
	})
	if err != nil {
		m.log.Warn("listing old images", "environment", env.Name, "err", err)
		return
	}
	inUse, err := m.imagesInUse(ctx)
	if err != nil {
		m.log.Warn("listing containers", "err", err)
		return
	}
	images := res.Items
	slices.SortFunc(images, func(a, b image.Summary) int { return cmp.Compare(b.Created, a.Created) })
	previous := false
	for _, img := range images {
		switch {
		case slices.Contains(img.RepoTags, env.Tag()): // the current build
		case !previous: // the one before
			previous = true
		case inUse[img.ID]:
		default:
			for _, tag := range img.RepoTags {
				if !strings.HasPrefix(tag, environment.Repository+":") || strings.HasPrefix(tag, prevTag("")) {
					continue
				}
				if _, err := m.docker.ImageRemove(ctx, tag, client.ImageRemoveOptions{}); err != nil {
					m.log.Warn("old image not removed", "image", tag, "err", err)
					continue
				}
				m.log.Info("old image removed", audit.Event("image"), "image", tag, "environment", env.Name)
			}
		}
	}
}

// streamBuild copies a classic builder's JSON stream to w as text and
// returns the build's error, if it reports one.
func streamBuild(r io.Reader, w io.Writer) error {
	dec := json.NewDecoder(r)
	for {
		var msg jsonstream.Message
		if err := dec.Decode(&msg); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read build output: %w", err)
		}
		if msg.Error != nil {
			fmt.Fprintf(w, "%s\n", strings.TrimSpace(msg.Error.Message))
			return errors.New(msg.Error.Message)
		}
		switch {
		case msg.Stream != "":
			io.WriteString(w, msg.Stream)
		case msg.Status != "" && msg.Progress == nil:
			fmt.Fprintf(w, "%s %s\n", msg.ID, msg.Status)
		}
	}
}
