package e2e

import (
	"slices"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/berth-ssh/berth/containers"
)

// mockDGX is go-nvml's mock eight-GPU DGX A100, with the calls the mock
// leaves unset filled in.
func mockDGX() *dgxa100.Server {
	s := dgxa100.New()
	for _, d := range s.Devices {
		dev := d.(*dgxa100.Device)
		dev.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{Gpu: 5}, nvml.SUCCESS }
		dev.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.SUCCESS }
	}
	return s
}

// leaseHolder runs a container that, by its labels, is u's berth
// container leasing ids: the GPU leases are nothing but such labels.
func leaseHolder(t *testing.T, u user, ids []string) {
	t.Helper()
	name := containers.Name(u.name)
	_, err := docker.ContainerCreate(t.Context(), client.ContainerCreateOptions{
		Name: name,
		Config: &container.Config{Image: baseImage, Entrypoint: []string{"sleep", "300"},
			Labels: map[string]string{containers.LabelUser: u.name, containers.LabelGPUs: strings.Join(ids, ",")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := docker.ContainerStart(t.Context(), name, client.ContainerStartOptions{}); err != nil {
		t.Fatal(err)
	}
}

func uuids(t *testing.T, s *dgxa100.Server, n int) []string {
	t.Helper()
	var ids []string
	for _, d := range s.Devices[:n] {
		id, _ := d.GetUUID()
		ids = append(ids, id)
	}
	return ids
}

// This machine has no GPU: berth says so, and containers run CPU-only
// with no way to widen their access.
func TestNoGPUMeansCPUOnlyContainers(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	if out := g.runOK(alice, "gpus"); !strings.Contains(out, "No GPUs were detected") {
		t.Fatalf("gpus: %q", out)
	}
	g.runOK(alice, "true")
	c := inspect(t, alice).Container
	if len(c.HostConfig.DeviceRequests) != 0 || !slices.Contains(c.Config.Env, "NVIDIA_VISIBLE_DEVICES=void") || !slices.Contains(c.Config.Env, "BERTH_TORCH_VARIANT=cpu") {
		t.Fatalf("a CPU-only container: requests %v, env %v", c.HostConfig.DeviceRequests, c.Config.Env)
	}
}

// With the mock DGX's inventory, berth's real path runs against the real
// engine. It has no NVIDIA runtime, so the container cannot start; what
// berth asked Docker for is checked instead.
func TestGPUsAreLeasedToContainersByUUID(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	dgx := mockDGX()
	g := startGateway(t, options{nvml: dgx, extra: "gpus: \"2\"\ngpu_mode: exclusive\n"}, alice)

	r := run(t, g.ssh(alice, nil, "true"), "")
	if r.code != 255 || !strings.Contains(r.stderr, "this Docker engine has no NVIDIA runtime") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	c := inspect(t, alice).Container
	want := uuids(t, dgx, 2)
	req := c.HostConfig.DeviceRequests
	if len(req) != 1 || req[0].Driver != "nvidia" || strings.Join(req[0].DeviceIDs, ",") != strings.Join(want, ",") ||
		strings.Join(req[0].Capabilities[0], ",") != "gpu,compute,utility" {
		t.Fatalf("device requests: %+v, want %v", req, want)
	}
	if !slices.Contains(c.Config.Env, "NVIDIA_VISIBLE_DEVICES="+strings.Join(want, ",")) || !slices.Contains(c.Config.Env, "BERTH_TORCH_VARIANT=cu124") || c.Config.Labels["berth.gpus"] != strings.Join(want, ",") {
		t.Fatalf("env %v, labels %v", c.Config.Env, c.Config.Labels)
	}
	out := g.runOK(alice, "gpus")
	if !strings.Contains(out, "NVIDIA driver 550.54.15, CUDA 12.4, 8 GPUs") || strings.Count(out, "A100") != 8 {
		t.Fatalf("gpus table:\n%s", out)
	}
}

// Leases live in the labels of running containers: a container that holds
// six of the eight GPUs leaves two, and the user is told who holds them,
// or, with gpu_fallback: cpu, starts without GPUs.
func TestTooFewFreeGPUsNamesTheHolder(t *testing.T) {
	t.Parallel()
	alice, carol, holder := newUser(t, "alice"), newUser(t, "carol"), newUser(t, "bob")
	dgx := mockDGX()
	g := startGateway(t, options{nvml: dgx, extra: "gpus: \"4\"\ngpu_mode: exclusive\n"}, alice)
	gc := startGateway(t, options{nvml: dgx, extra: "gpus: \"4\"\ngpu_mode: exclusive\ngpu_fallback: cpu\n"}, carol)

	// Another berth container, running, leases six GPUs.
	leaseHolder(t, holder, uuids(t, dgx, 6))

	r := run(t, g.ssh(alice, nil, "true"), "")
	if r.code != 255 || !strings.Contains(r.stderr, "not enough free GPUs: you asked for 4 GPUs and 2 are free: "+holder.name+" (berth-"+holder.name+") holds 6 since") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	r = run(t, gc.ssh(carol, nil, "echo cpu-only"), "")
	if r.code != 0 || r.stdout != "cpu-only\n" || !strings.Contains(r.stderr, "starting without GPUs (gpu_fallback: cpu)") {
		t.Fatalf("fallback: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if out := g.runOK(alice, "gpus"); !strings.Contains(out, holder.name+" (berth-"+holder.name+")") || !strings.Contains(out, "free") {
		t.Fatalf("gpus does not show the holder:\n%s", out)
	}
}

// A container whose GPUs another took while it was stopped is recreated
// on free ones, and the user is told; a stopped container holds no lease.
func TestGPUsTakenWhileStoppedAreReplacedAndStoppedContainersReleaseTheirs(t *testing.T) {
	t.Parallel()
	alice, holder := newUser(t, "alice"), newUser(t, "bob")
	dgx := mockDGX()
	all := uuids(t, dgx, 8)
	g := startGateway(t, options{nvml: dgx, extra: "gpus: \"2\"\ngpu_mode: exclusive\n"}, alice)
	run(t, g.ssh(alice, nil, "true"), "") // created on GPUs 0 and 1; no NVIDIA runtime to start it
	first := inspect(t, alice).Container
	if first.Config.Labels["berth.gpus"] != all[0]+","+all[1] {
		t.Fatalf("first GPUs: %q", first.Config.Labels["berth.gpus"])
	}

	// Meanwhile a running container leases GPUs 0 to 5.
	leaseHolder(t, holder, all[:6])
	r := run(t, g.ssh(alice, nil, "true"), "")
	if !strings.Contains(r.stderr, "your GPUs were taken while your container was stopped; it is recreated on free ones") {
		t.Fatalf("stderr %q", r.stderr)
	}
	second := inspect(t, alice).Container
	if second.ID == first.ID || second.Config.Labels["berth.gpus"] != all[6]+","+all[7] {
		t.Fatalf("not recreated on the free GPUs: %q", second.Config.Labels["berth.gpus"])
	}

	// Once the holder stops, its GPUs are free again.
	if _, err := docker.ContainerStop(t.Context(), "berth-"+holder.name, client.ContainerStopOptions{}); err != nil {
		t.Fatal(err)
	}
	g2 := startGateway(t, options{nvml: dgx, extra: "gpus: \"8\"\ngpu_mode: exclusive\n"}, holder)
	removeContainer("berth-" + holder.name)
	r = run(t, g2.ssh(holder, nil, "true"), "")
	if !strings.Contains(r.stderr, "no NVIDIA runtime") || inspect(t, holder).Container.Config.Labels["berth.gpus"] != strings.Join(all, ",") {
		t.Fatalf("a stopped container kept its lease: %q", r.stderr)
	}
}
