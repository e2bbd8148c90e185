package gpus

import (
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
)

// dgx is go-nvml's mock DGX A100 (eight GPUs), with the calls the mock
// leaves unset filled in: utilization, and a process on GPU 0.
func dgx() *dgxa100.Server {
	s := dgxa100.New()
	for i, d := range s.Devices {
		dev := d.(*dgxa100.Device)
		dev.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
			return nvml.Utilization{Gpu: uint32(10 * i)}, nvml.SUCCESS
		}
		dev.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
			if i == 0 {
				return []nvml.ProcessInfo{{Pid: 4242, UsedGpuMemory: 1 << 30}}, nvml.SUCCESS
			}
			return nil, nvml.SUCCESS
		}
	}
	return s
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestInventoryReadsTheMockDGX(t *testing.T) {
	inv := Open(dgx(), quiet)
	defer inv.Close()
	s, err := inv.Read()
	if err != nil {
		t.Fatal(err)
	}
	if !s.Available || len(s.GPUs) != 8 || s.Driver != "550.54.15" || s.CUDA != "12.4" {
		t.Fatalf("snapshot: %+v", s)
	}
	g := s.GPUs[3]
	if g.Index != 3 || g.UUID == "" || !strings.Contains(g.Name, "A100") || g.MemoryTotal == 0 || g.Utilization != 30 || g.MIG {
		t.Fatalf("GPU 3: %+v", g)
	}
	if p := s.GPUs[0].Processes; len(p) != 1 || p[0].PID != 4242 {
		t.Fatalf("GPU 0 processes: %+v", p)
	}
}

func TestNoDriverMeansCPUOnlyAndNoMoreNVMLCalls(t *testing.T) {
	calls := 0
	lib := &mock.Interface{
		InitFunc: func() nvml.Return { calls++; return nvml.ERROR_LIBRARY_NOT_FOUND },
	}
	inv := Open(lib, quiet)
	s, err := inv.Read()
	if err != nil || s.Available || len(s.GPUs) != 0 {
		t.Fatalf("snapshot %+v, err %v", s, err)
	}
	inv.Close()
	if calls != 1 {
		t.Fatalf("%d NVML calls after a failed Init", calls)
	}
}

func TestAllocate(t *testing.T) {
	s, _ := Open(dgx(), quiet).Read()
	uuid := func(i int) string { return s.GPUs[i].UUID }
	since := time.Date(2026, 11, 28, 9, 30, 0, 0, time.UTC)
	bob := Lease{Container: "berth-bob", User: "bob", UUIDs: []string{uuid(0), uuid(1), uuid(2), uuid(3), uuid(4), uuid(5)}, Since: since}
	for _, tc := range []struct {
		name     string
		policy   Policy
		leases   []Lease
		previous []string
		want     []string
		err      string
		fallback bool
	}{
		{name: "none", policy: Policy{Count: 0}, want: nil},
		{name: "shared all", policy: Policy{Count: All}, leases: []Lease{bob}, want: []string{uuid(0), uuid(1), uuid(2), uuid(3), uuid(4), uuid(5), uuid(6), uuid(7)}},
		{name: "shared two ignores leases", policy: Policy{Count: 2}, leases: []Lease{bob}, want: []string{uuid(0), uuid(1)}},
		{name: "exclusive takes free ones", policy: Policy{Count: 2, Exclusive: true}, leases: []Lease{bob}, want: []string{uuid(6), uuid(7)}},
		{name: "exclusive prefers its own", policy: Policy{Count: 2, Exclusive: true}, previous: []string{uuid(7), uuid(2)}, want: []string{uuid(2), uuid(7)}},
		{name: "its own taken: other free ones", policy: Policy{Count: 1, Exclusive: true}, leases: []Lease{bob}, previous: []string{uuid(0)}, want: []string{uuid(6)}},
		{name: "not enough names the holder", policy: Policy{Count: 3, Exclusive: true}, leases: []Lease{bob}, err: "you asked for 3 GPUs and 2 are free: bob (berth-bob) holds 6 since"},
		{name: "all exclusive when one is leased", policy: Policy{Count: All, Exclusive: true}, leases: []Lease{bob}, err: "you asked for 8 GPUs and 2 are free"},
		{name: "fallback to CPU", policy: Policy{Count: 4, Exclusive: true, FallbackCPU: true}, leases: []Lease{bob}, fallback: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Allocate(s, tc.leases, tc.policy, tc.previous)
			var ne *NotEnough
			switch {
			case tc.fallback:
				if got != nil || !errors.As(err, &ne) || !ne.CPUFallback {
					t.Fatalf("got %v, %v; want a CPU fallback", got, err)
				}
			case tc.err != "":
				if err == nil || !strings.Contains(err.Error(), tc.err) || (errors.As(err, &ne) && ne.CPUFallback) {
					t.Fatalf("got %v, %v; want %q", got, err, tc.err)
				}
			default:
				if err != nil || !slices.Equal(got, tc.want) {
					t.Fatalf("got %v, %v; want %v", got, err, tc.want)
				}
			}
		})
	}
	// No GPUs on the host: CPU-only, whatever the policy.
	if got, err := Allocate(Snapshot{}, nil, Policy{Count: All, Exclusive: true}, nil); got != nil || err != nil {
		t.Fatalf("no GPUs: %v %v", got, err)
	}
}

func TestContainerOfCgroup(t *testing.T) {
	id := "3f1c1f7a0d9c4e5b8a2f6d7e9c0b1a2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b"
	for name, content := range map[string]string{
		"v1 cgroupfs": "12:memory:/docker/" + id + "\n11:devices:/docker/" + id + "\n1:name=systemd:/docker/" + id + "\n",
		"v1 systemd":  "5:pids:/system.slice/docker-" + id + ".scope\n0::/system.slice/docker-" + id + ".scope\n",
		"v2 cgroupfs": "0::/docker/" + id + "\n",
		"v2 systemd":  "0::/system.slice/docker-" + id + ".scope\n",
		"v2 nested":   "0::/berth.slice/docker-" + id + ".scope/init\n",
	} {
		if got := ContainerOfCgroup(strings.NewReader(content)); got != id {
			t.Errorf("%s: got %q", name, got)
		}
	}
	for name, content := range map[string]string{
		"host process": "0::/user.slice/user-1000.slice/session-2.scope\n",
		"v1 host":      "12:memory:/\n11:devices:/user.slice\n",
		"short id":     "0::/docker/abc123\n",
	} {
		if got := ContainerOfCgroup(strings.NewReader(content)); got != "" {
			t.Errorf("%s: got %q, want none", name, got)
		}
	}
}

func TestTorchVariantFollowsTheDriver(t *testing.T) {
	for _, tc := range []struct {
		cuda string
		gpus int
		want string
	}{
		{"13.0", 1, "cu128"}, {"12.8", 1, "cu128"}, {"12.7", 2, "cu126"}, {"12.4", 1, "cu124"},
		{"12.2", 1, "cu121"}, {"12.0", 1, "cu118"}, {"11.8", 1, "cu118"}, {"11.4", 1, "cpu"},
		{"12.4", 0, "cpu"}, {"", 1, "cpu"},
	} {
		if got := TorchVariant(tc.cuda, tc.gpus); got != tc.want {
			t.Errorf("TorchVariant(%q, %d) = %s, want %s", tc.cuda, tc.gpus, got, tc.want)
		}
	}
}
