package verbs

import (
	"encoding/json"
	"flag"

	"github.com/berth-ssh/berth/gpus"
)

// gpusVerb shows every GPU, who holds it and what runs on it. Anyone may:
// it is how people see whether the box is free.
func (c *call) gpus() int {
	var asJSON bool
	if !c.flags(func(fs *flag.FlagSet) { fs.BoolVar(&asJSON, "json", false, "") }) {
		return exitUsage
	}
	snap, holders, err := c.m.GPUReport(c.ctx)
	if err != nil {
		return c.fail(err)
	}
	if asJSON {
		type gpu struct {
			gpus.GPU
			Holders []gpus.Holder `json:"holders"`
		}
		out := struct {
			gpus.Snapshot
			GPUs []gpu `json:"gpus"`
		}{Snapshot: snap, GPUs: []gpu{}}
		for _, g := range snap.GPUs {
			out.GPUs = append(out.GPUs, gpu{GPU: g, Holders: append([]gpus.Holder{}, holders[g.UUID]...)})
		}
		enc := json.NewEncoder(c.Out)
		enc.SetIndent("", "  ")
		enc.Encode(out)
		return exitOK
	}
	gpus.WriteTable(c.Out, snap, holders)
	return exitOK
}
