package verbs

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berth-ssh/berth/containers"
)

func (c *call) start() int {
	var keep bool
	if !c.flags(func(fs *flag.FlagSet) { fs.BoolVar(&keep, "keep", false, "") }) {
		return exitUsage
	}
	begin := time.Now()
	what, err := c.m.Start(c.ctx, c.caller.Ref, keep, c.Err)
	if err != nil {
		return c.fail(err)
	}
	fmt.Fprintf(c.Out, "%s %s (%s)", c.caller.Ref.Name(), what, took(begin))
	if keep {
		fmt.Fprint(c.Out, "; kept running until it is stopped")
	}
	fmt.Fprintln(c.Out)
	return exitOK
}

func (c *call) stop() int {
	var rm bool
	if !c.flags(func(fs *flag.FlagSet) { fs.BoolVar(&rm, "rm", false, "") }) {
		return exitUsage
	}
	if err := c.m.Stop(c.ctx, c.caller.Ref, rm); err != nil {
		return c.fail(err)
	}
	if rm {
		fmt.Fprintf(c.Out, "%s stopped and removed; your home and projects are kept\n", c.caller.Ref.Name())
	} else {
		fmt.Fprintf(c.Out, "%s stopped; everything in it is kept, and your next login starts it\n", c.caller.Ref.Name())
	}
	return exitOK
}

func (c *call) restart() int {
	if !c.flags(func(*flag.FlagSet) {}) {
		return exitUsage
	}
	begin := time.Now()
	if err := c.m.Restart(c.ctx, c.caller.Ref, c.Err); err != nil {
		return c.fail(err)
	}
	fmt.Fprintf(c.Out, "%s restarted (%s)\n", c.caller.Ref.Name(), took(begin))
	return exitOK
}

func (c *call) rebuild() int {
	var noCache bool
	if !c.flags(func(fs *flag.FlagSet) { fs.BoolVar(&noCache, "no-cache", false, "") }) {
		return exitUsage
	}
	begin := time.Now()
	if err := c.m.Rebuild(c.ctx, c.caller.Ref, noCache, c.Err); err != nil {
		return c.fail(err)
	}
	fmt.Fprintf(c.Out, "%s rebuilt and recreated (%s); `rollback` returns to the previous image\n", c.caller.Ref.Name(), took(begin))
	return exitOK
}

func (c *call) rollback() int {
	if !c.flags(func(*flag.FlagSet) {}) {
		return exitUsage
	}
	if err := c.m.Rollback(c.ctx, c.caller.Ref, c.Err); err != nil {
		return c.fail(err)
	}
	fmt.Fprintf(c.Out, "%s recreated on its previous image; your home and projects are kept\n", c.caller.Ref.Name())
	return exitOK
}

func (c *call) prune() int {
	var data, yes bool
	if !c.flags(func(fs *flag.FlagSet) {
		fs.BoolVar(&data, "data", false, "")
		fs.BoolVar(&yes, "yes", false, "")
	}) {
		return exitUsage
	}
	if yes && !data {
		return c.misuse("--yes only confirms --data")
	}
	if data && !yes && !c.confirm() {
		return exitUsage
	}
	removed, err := c.m.Prune(c.ctx, c.caller.Ref, data)
	if err != nil {
		return c.fail(err)
	}
	if len(removed) == 0 {
		fmt.Fprintln(c.Out, "nothing to remove")
	}
	for _, r := range removed {
		fmt.Fprintf(c.Out, "removed %s\n", r)
	}
	return exitOK
}

// confirm asks, on a terminal, before data is deleted. Without one the
// caller must say --yes.
func (c *call) confirm() bool {
	if !c.TTY {
		c.misuse("--data deletes your home and projects; add --yes to confirm")
		return false
	}
	fmt.Fprintf(c.Err, "This deletes your home, projects and VS Code server data for good. Type %q to go on: ", c.caller.Ref.User.Name)
	line, _ := bufio.NewReader(c.In).ReadString('\n')
	if strings.TrimSpace(line) != c.caller.Ref.User.Name {
		fmt.Fprintln(c.Err, "\nberth: prune: not confirmed; nothing was removed.")
		return false
	}
	return true
}

func (c *call) status() int {
	var asJSON, all bool
	if !c.flags(func(fs *flag.FlagSet) {
		fs.BoolVar(&asJSON, "json", false, "")
		fs.BoolVar(&all, "all", false, "")
	}) {
		return exitUsage
	}
	var list []containers.Status
	if all {
		var err error
		if list, err = c.m.StatusAll(c.ctx, c.caller.Ref); err != nil {
			return c.fail(err)
		}
	} else {
		st, err := c.m.Status(c.ctx, c.caller.Ref)
		if err != nil {
			return c.fail(err)
		}
		list = []containers.Status{st}
	}
	if asJSON {
		enc := json.NewEncoder(c.Out)
		enc.SetIndent("", "  ")
		if all {
			enc.Encode(list)
		} else {
			enc.Encode(list[0])
		}
		return exitOK
	}
	for i, st := range list {
		if i > 0 {
			fmt.Fprintln(c.Out)
		}
		printStatus(c, st)
	}
	return exitOK
}

func printStatus(c *call, st containers.Status) {
	tw := tabwriter.NewWriter(c.Out, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, args...)...) }
	row("container", "%s (ssh %s@HOST)", st.Name, st.Login)
	row("state", "%s", st.State)
	if st.State != "absent" {
		row("image", "%s, built %s", st.Image, ago(st.Built))
		row("created", "%s", ago(st.Created))
		if !st.Started.IsZero() {
			row("uptime", "%s", time.Since(st.Started).Round(time.Second))
		}
		if st.Previous != "" {
			row("rollback to", "%s", short(st.Previous))
		}
		if st.Keep {
			row("keep running", "yes, until stopped")
		}
	}
	gpus := "none"
	if len(st.GPUs) > 0 {
		gpus = strings.Join(st.GPUs, ", ")
	}
	row("gpus", "%s", gpus)
	for i, m := range st.Mounts {
		k := ""
		if i == 0 {
			k = "mounts"
		}
		ro := ""
		if m.ReadOnly {
			ro = " (read-only)"
		}
		row(k, "%s → %s%s", m.Source, m.Target, ro)
	}
	if st.State != "absent" {
		l := st.Limits
		row("limits", "memory %s, cpus %s, /dev/shm %s, processes %s",
			orNone(l.Memory, bytes(l.Memory)), orNone(int64(l.CPUs*1000), fmt.Sprintf("%g", l.CPUs)),
			bytes(l.ShmSize), orNone(l.PidsLimit, fmt.Sprint(l.PidsLimit)))
	}
	row("disk used", "%s under your data directory (home, projects, VS Code)", bytes(st.DiskUsed))
	if l := st.Limits; l.DiskQuota > 0 {
		row("disk quota", "%s on the container's own files (system packages); not on your data directory", bytes(l.DiskQuota))
	} else if l.DiskQuotaUnsupported {
		row("disk quota", "not enforced: this Docker engine's storage driver cannot cap a container's disk")
	}
	if st.Repo != "" {
		cloned := "cloned in ~/projects"
		if !st.RepoCloned {
			cloned = "not cloned yet"
		}
		row("repo", "%s, %s", st.Repo, cloned)
	}
	if p := st.Packages; p != nil {
		detail := ""
		if p.Detail != "" {
			detail = ": " + p.Detail
		}
		row("python packages", "%s %s ago%s (ssh HOST logs has the output)", p.State, time.Since(p.Since).Round(time.Second), detail)
	}
	tw.Flush()
}

func (c *call) logs() int {
	var follow bool
	if !c.flags(func(fs *flag.FlagSet) { fs.BoolVar(&follow, "f", false, "") }) {
		return exitUsage
	}
	if err := c.m.Logs(c.ctx, c.caller.Ref, follow, c.Out); err != nil {
		return c.fail(err)
	}
	return exitOK
}

func orNone(n int64, s string) string {
	if n <= 0 {
		return "unlimited"
	}
	return s
}

func took(begin time.Time) time.Duration { return time.Since(begin).Round(100 * time.Millisecond) }

func ago(t time.Time) string {
	if t.IsZero() {
		return "unknown"
	}
	return fmt.Sprintf("%s (%s ago)", t.Local().Format("2006-01-02 15:04"), time.Since(t).Round(time.Second))
}

func short(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
