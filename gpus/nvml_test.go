//go:build nvml

package gpus

import (
	"log/slog"
	"os"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// The real path, for a host with an NVIDIA GPU (scripts/gpu-check.sh):
// real NVML sees at least one GPU, with a UUID and memory.
func TestRealNVMLSeesAGPU(t *testing.T) {
	inv := Open(nvml.New(), slog.New(slog.NewTextHandler(os.Stderr, nil)))
	defer inv.Close()
	s, err := inv.Read()
	if err != nil {
		t.Fatal(err)
	}
	if !s.Available || len(s.GPUs) == 0 {
		t.Fatal("NVML found no GPU")
	}
	for _, g := range s.GPUs {
		if g.UUID == "" || g.MemoryTotal == 0 {
			t.Errorf("GPU %d: %+v", g.Index, g)
		}
		t.Logf("GPU %d: %s %s, %d MiB, %d%% busy, MIG %v, %d processes", g.Index, g.UUID, g.Name, g.MemoryTotal>>20, g.Utilization, g.MIG, len(g.Processes))
	}
	t.Logf("driver %s, CUDA %s, PyTorch variant %s", s.Driver, s.CUDA, TorchVariant(s.CUDA, len(s.GPUs)))
}
