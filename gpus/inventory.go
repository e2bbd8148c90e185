// Package gpus is berth's view of the host's GPUs: an inventory read
// through NVML (github.com/NVIDIA/go-nvml), the mapping of GPU processes
// to containers, and the allocation of GPUs to containers by policy.
//
//	inv := gpus.Open(nvml.New(), logger) // logs once and goes CPU-only without a driver
//	snapshot, err := inv.Read()
//	uuids, err := gpus.Allocate(snapshot, leases, policy, previous)
package gpus

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// GPU is one device as NVML reports it.
type GPU struct {
	Index       int       `json:"index"`
	UUID        string    `json:"uuid"`
	Name        string    `json:"name"`
	MemoryTotal uint64    `json:"memory_total_bytes"`
	MemoryUsed  uint64    `json:"memory_used_bytes"`
	Utilization int       `json:"utilization_percent"` // -1 when unknown
	MIG         bool      `json:"mig"`
	Processes   []Process `json:"processes"`
}

// Process is a compute process on a GPU. PID is the host's.
type Process struct {
	PID        uint32 `json:"pid"`
	UsedMemory uint64 `json:"used_memory_bytes"`
	// Container is the berth container running it, when there is one.
	Container string `json:"container,omitempty"`
}

// Snapshot is the inventory at one moment.
type Snapshot struct {
	// Available is false when there is no driver or no GPU.
	Available bool   `json:"available"`
	Driver    string `json:"driver_version,omitempty"`
	// CUDA is the CUDA version the driver supports, e.g. "12.4".
	CUDA string `json:"cuda_driver_version,omitempty"`
	GPUs []GPU  `json:"gpus"`
}

// Inventory reads GPUs through NVML. If NVML cannot start (no driver, no
// GPU), it says so once in the log and then reports no GPUs, without
// calling NVML again. It is safe for concurrent use.
type Inventory struct {
	mu  sync.Mutex
	lib nvml.Interface
	ok  bool
}

// Open starts NVML through lib: nvml.New() on a real host, go-nvml's mock
// in tests.
func Open(lib nvml.Interface, log *slog.Logger) *Inventory {
	inv := &Inventory{lib: lib}
	if ret := safeInit(lib); ret != nvml.SUCCESS {
		log.Info("no NVIDIA GPU driver: containers run CPU-only", "nvml", nvmlError(ret))
		return inv
	}
	inv.ok = true
	return inv
}

// safeInit calls Init, treating a missing library (which go-nvml reports
// by panicking in some versions) like any other failure.
func safeInit(lib nvml.Interface) (ret nvml.Return) {
	defer func() {
		if recover() != nil {
			ret = nvml.ERROR_LIBRARY_NOT_FOUND
		}
	}()
	return lib.Init()
}

// Close shuts NVML down.
func (inv *Inventory) Close() {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if inv.ok {
		inv.lib.Shutdown()
		inv.ok = false
	}
}

// Read takes a snapshot: driver and CUDA versions, and every GPU with its
// memory, utilization, MIG mode and compute processes.
func (inv *Inventory) Read() (Snapshot, error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if !inv.ok {
		return Snapshot{GPUs: []GPU{}}, nil
	}
	s := Snapshot{Available: true, GPUs: []GPU{}}
	if v, ret := inv.lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		s.Driver = v
	}
	if v, ret := inv.lib.SystemGetCudaDriverVersion(); ret == nvml.SUCCESS {
		s.CUDA = fmt.Sprintf("%d.%d", v/1000, v%1000/10)
	}
	n, ret := inv.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return s, fmt.Errorf("count GPUs: %w", nvmlError(ret))
	}
	for i := range n {
		dev, ret := inv.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			return s, fmt.Errorf("GPU %d: %w", i, nvmlError(ret))
		}
		g, err := readGPU(i, dev)
		if err != nil {
			return s, err
		}
		s.GPUs = append(s.GPUs, g)
	}
	return s, nil
}

func readGPU(i int, dev nvml.Device) (GPU, error) {
	g := GPU{Index: i, Utilization: -1, Processes: []Process{}}
	var ret nvml.Return
	if g.UUID, ret = dev.GetUUID(); ret != nvml.SUCCESS {
		return g, fmt.Errorf("GPU %d UUID: %w", i, nvmlError(ret))
	}
	g.Name, _ = dev.GetName()
	if mem, ret := dev.GetMemoryInfo(); ret == nvml.SUCCESS {
		g.MemoryTotal, g.MemoryUsed = mem.Total, mem.Used
	}
	if u, ret := dev.GetUtilizationRates(); ret == nvml.SUCCESS {
		g.Utilization = int(u.Gpu)
	}
	if cur, _, ret := dev.GetMigMode(); ret == nvml.SUCCESS {
		g.MIG = cur == nvml.DEVICE_MIG_ENABLE
	}
	if procs, ret := dev.GetComputeRunningProcesses(); ret == nvml.SUCCESS {
		for _, p := range procs {
			g.Processes = append(g.Processes, Process{PID: p.Pid, UsedMemory: p.UsedGpuMemory})
		}
	}
	return g, nil
}

func nvmlError(ret nvml.Return) error {
	if ret == nvml.SUCCESS {
		return nil
	}
	return errors.New(nvml.ErrorString(ret))
}
