package gpus

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Holder is a container that holds or shares a GPU.
type Holder struct {
	User      string `json:"user"`
	Container string `json:"container"`
	Since     string `json:"since,omitempty"`
}

// WriteTable renders a snapshot as `ssh host gpus` shows it: one row per
// GPU with memory and utilization bars, who holds it, and its processes.
// holders maps a GPU's UUID to the containers that hold it; it may be nil.
func WriteTable(w io.Writer, s Snapshot, holders map[string][]Holder) {
	if !s.Available {
		fmt.Fprintln(w, "No GPUs were detected on this host (no NVIDIA driver, or no GPU); containers run CPU-only.")
		return
	}
	fmt.Fprintf(w, "NVIDIA driver %s, CUDA %s, %d GPUs\n\n", s.Driver, s.CUDA, len(s.GPUs))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "GPU\tNAME\tMEMORY\tUTIL\tHELD BY\tPROCESSES")
	for _, g := range s.GPUs {
		var held []string
		for _, h := range holders[g.UUID] {
			held = append(held, fmt.Sprintf("%s (%s)", h.User, h.Container)+sinceWord(h.Since))
		}
		if len(held) == 0 {
			held = []string{"free"}
		}
		var procs []string
		for _, p := range g.Processes {
			where := "host"
			if p.Container != "" {
				where = p.Container
			}
			procs = append(procs, fmt.Sprintf("%d in %s, %s", p.PID, where, gib(p.UsedMemory)))
		}
		if len(procs) == 0 {
			procs = []string{"-"}
		}
		util := "?"
		if g.Utilization >= 0 {
			util = fmt.Sprintf("%s %3d%%", bar(float64(g.Utilization)/100), g.Utilization)
		}
		mig := ""
		if g.MIG {
			mig = " (MIG)"
		}
		fmt.Fprintf(tw, "%d\t%s%s\t%s %s/%s\t%s\t%s\t%s\n", g.Index, g.Name, mig,
			bar(ratio(g.MemoryUsed, g.MemoryTotal)), gib(g.MemoryUsed), gib(g.MemoryTotal),
			util, strings.Join(held, "; "), strings.Join(procs, "; "))
	}
	tw.Flush()
}

func sinceWord(s string) string {
	if s == "" {
		return ""
	}
	return " since " + s
}

func ratio(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// bar draws a fraction as [####......].
func bar(f float64) string {
	const width = 10
	n := int(f*width + 0.5)
	n = min(max(n, 0), width)
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", width-n) + "]"
}

func gib(b uint64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }
