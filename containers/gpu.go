package containers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/berth-ssh/berth/gpus"
)

// LabelGPUs lists the UUIDs of a container's GPUs. In exclusive mode a
// running container's label is its lease: leases live in Docker, so they
// survive a restart of berth.
const LabelGPUs = "berth.gpus"

// Leases reads the running containers' GPU leases from their labels,
// leaving out the container named except.
func (m *Manager) Leases(ctx context.Context, except string) ([]gpus.Lease, error) {
	res, err := m.docker.ContainerList(ctx, client.ContainerListOptions{
		Filters: make(client.Filters).Add("label", LabelGPUs).Add("status", "running"),
	})
	if err != nil {
		return nil, err
	}
	var leases []gpus.Lease
	for _, c := range res.Items {
		ids := splitIDs(c.Labels[LabelGPUs])
		if len(c.Names) == 0 || c.Names[0][1:] == except || len(ids) == 0 {
			continue
		}
		l := gpus.Lease{Container: c.Names[0][1:], User: c.Labels[LabelUser], UUIDs: ids, Since: time.Unix(c.Created, 0)}
		if in, err := m.docker.ContainerInspect(ctx, c.ID, client.ContainerInspectOptions{}); err == nil {
			l.Since, _ = time.Parse(time.RFC3339Nano, in.Container.State.StartedAt)
		}
		leases = append(leases, l)
	}
	return leases, nil
}

func splitIDs(label string) []string {
	if label == "" {
		return nil
	}
	return strings.Split(label, ",")
}

// allocateGPUs picks the GPUs r's container gets under its user's
// policy, preferring previous. Too few free GPUs is a Failure naming who
// holds them, or, with gpu_fallback: cpu, a warning and none. It also
// returns the driver's CUDA version, from the same snapshot.
func (m *Manager) allocateGPUs(ctx context.Context, r Ref, previous []string, progress io.Writer) (ids []string, cuda string, err error) {
	snap, err := m.gpus.Read()
	if err != nil {
		return nil, "", &Failure{Msg: "berth could not read the GPUs", Err: err}
	}
	count, exclusive, fallback := m.cfg.GPUPolicy(r.User)
	var leases []gpus.Lease
	if exclusive && count != 0 && snap.Available {
		if leases, err = m.Leases(ctx, r.Name()); err != nil {
			return nil, "", m.dockerFailure(ctx, "berth could not read the GPU leases", err)
		}
	}
	ids, err = gpus.Allocate(snap, leases, gpus.Policy{Count: count, Exclusive: exclusive, FallbackCPU: fallback}, previous)
	var short *gpus.NotEnough
	if errors.As(err, &short) {
		if short.CPUFallback {
			fmt.Fprintf(progress, "berth: warning: %s; starting without GPUs (gpu_fallback: cpu).\n", short)
			return nil, snap.CUDA, nil
		}
		return nil, "", &Failure{Msg: "not enough free GPUs: " + short.Error(), Err: err}
	}
	return ids, snap.CUDA, err
}

// gpuRequest is what a container's GPUs add to its create request. The
// variable NVIDIA_VISIBLE_DEVICES is forced to match, so that an image
// cannot widen its own access (nvidia/cuda images set it to "all"); a
// CPU-only container gets "void". BERTH_TORCH_VARIANT (cu118 ... cu128, or
// cpu) tells provisioning which PyTorch wheels match the host's driver;
// it is set per container, never baked into the image.
func gpuRequest(ids []string, cuda string) (env []string, requests []container.DeviceRequest) {
	env = []string{"BERTH_TORCH_VARIANT=" + gpus.TorchVariant(cuda, len(ids))}
	if cuda != "" {
		env = append(env, "BERTH_CUDA_DRIVER="+cuda)
	}
	if len(ids) == 0 {
		return append(env, "NVIDIA_VISIBLE_DEVICES=void"), nil
	}
	return append(env, "NVIDIA_VISIBLE_DEVICES="+strings.Join(ids, ",")),
		[]container.DeviceRequest{{
			Driver:       "nvidia",
			DeviceIDs:    ids,
			Capabilities: [][]string{{"gpu", "compute", "utility"}},
		}}
}

// gpusTaken reports whether another running container now leases one of
// c's GPUs: then c cannot start on them again (exclusive mode only).
func (m *Manager) gpusTaken(ctx context.Context, r Ref, c container.InspectResponse) (bool, error) {
	_, exclusive, _ := m.cfg.GPUPolicy(r.User)
	mine := splitIDs(c.Config.Labels[LabelGPUs])
	if !exclusive || len(mine) == 0 {
		return false, nil
	}
	leases, err := m.Leases(ctx, r.Name())
	if err != nil {
		return false, m.dockerFailure(ctx, "berth could not read the GPU leases", err)
	}
	for _, l := range leases {
		for _, id := range l.UUIDs {
			if slices.Contains(mine, id) {
				return true, nil
			}
		}
	}
	return false, nil
}

// noNVIDIARuntime recognises the engine's refusal to start a GPU
// container without the NVIDIA Container Toolkit.
func noNVIDIARuntime(err error) bool {
	return err != nil && strings.Contains(err.Error(), `could not select device driver "nvidia"`)
}

// GPUReport is the host's GPUs with who holds each: the running berth
// containers given it (a lease in exclusive mode, a share otherwise), and
// the container of each GPU process.
func (m *Manager) GPUReport(ctx context.Context) (gpus.Snapshot, map[string][]gpus.Holder, error) {
	snap, err := m.gpus.Read()
	if err != nil || !snap.Available {
		return snap, nil, err
	}
	res, err := m.docker.ContainerList(ctx, client.ContainerListOptions{
		Filters: make(client.Filters).Add("status", "running"),
	})
	if err != nil {
		return snap, nil, m.dockerFailure(ctx, "berth could not list containers", err)
	}
	names := map[string]string{}
	holders := map[string][]gpus.Holder{}
	for _, c := range res.Items {
		if len(c.Names) == 0 {
			continue
		}
		name := c.Names[0][1:]
		names[c.ID] = name
		for _, id := range splitIDs(c.Labels[LabelGPUs]) {
			holders[id] = append(holders[id], gpus.Holder{
				User: c.Labels[LabelUser], Container: name,
				Since: time.Unix(c.Created, 0).Local().Format("Jan 2 15:04"),
			})
		}
	}
	for i := range snap.GPUs {
		for j, p := range snap.GPUs[i].Processes {
			snap.GPUs[i].Processes[j].Container = names[gpus.ContainerOfPID("/proc", p.PID)]
		}
	}
	return snap, holders, nil
}
