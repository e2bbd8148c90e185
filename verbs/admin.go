package verbs

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berth-ssh/berth/audit"
	"github.com/berth-ssh/berth/config"
	"github.com/berth-ssh/berth/containers"
)

// admin runs an operator verb: `admin users`, `admin who`, `admin stop
// USER[+NAME]`, `admin restart ...`, `admin rebuild ...` and `admin prune
// --all-stopped`. Only users listed in admins may.
func (c *call) admin() int {
	if !c.cfg.IsAdmin(c.caller.Ref.User.Name) {
		c.log.Warn("admin verb refused", audit.Event("verb"), "result", "refused", "user", c.caller.Ref.Login(), "key", c.caller.Key, "args", c.args)
		fmt.Fprintln(c.Err, "berth: admin: permission denied.")
		return exitFailed
	}
	if len(c.args) == 0 {
		return c.misuse("which admin command?")
	}
	sub, args := c.args[0], c.args[1:]
	switch sub {
	case "users":
		if len(args) != 0 {
			return c.misuse("admin users takes no arguments")
		}
		return c.adminUsers()
	case "who":
		if len(args) != 0 {
			return c.misuse("admin who takes no arguments")
		}
		return c.adminWho()
	case "stop", "restart", "rebuild":
		if len(args) != 1 {
			return c.misuse("admin " + sub + " needs USER[+NAME]")
		}
		ref, ok := c.target(args[0])
		if !ok {
			return c.misuse(fmt.Sprintf("%q is not a configured user", args[0]))
		}
		var err error
		switch sub {
		case "stop":
			err = c.m.Stop(c.ctx, ref, false)
		case "restart":
			err = c.m.Restart(c.ctx, ref, c.Err)
		case "rebuild":
			err = c.m.Rebuild(c.ctx, ref, false, c.Err)
		}
		if err != nil {
			return c.fail(err)
		}
		fmt.Fprintf(c.Out, "%s: %s done\n", ref.Name(), sub)
		return exitOK
	case "prune":
		if len(args) != 1 || args[0] != "--all-stopped" {
			return c.misuse("admin prune needs --all-stopped")
		}
		return c.adminPrune()
	}
	return c.misuse(fmt.Sprintf("unknown admin command %q", sub))
}

// target resolves an admin's USER[+NAME] argument.
func (c *call) target(login string) (containers.Ref, bool) {
	name, instance, ok := config.SplitLogin(login)
	if !ok {
		return containers.Ref{}, false
	}
	u, ok := c.cfg.User(name)
	return containers.Ref{User: u, Instance: instance}, ok
}

func (c *call) adminUsers() int {
	tw := tabwriter.NewWriter(c.Out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "USER\tCONTAINER\tSTATE\tGPUS\tSESSIONS\tLAST ACTIVITY")
	for _, u := range c.cfg.Users {
		list, err := c.m.StatusAll(c.ctx, containers.Ref{User: u})
		if err != nil {
			return c.fail(err)
		}
		for _, st := range list {
			last := "-"
			if n := c.registry.Active(st.Name); n > 0 {
				last = "now"
			} else if t := c.registry.LastActive(st.Name); !t.IsZero() {
				last = time.Since(t).Round(time.Second).String() + " ago"
			}
			gpus := "-"
			if len(st.GPUs) > 0 {
				gpus = strings.Join(st.GPUs, ",")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", u.Name, st.Name, st.State, gpus, c.registry.Active(st.Name), last)
		}
	}
	tw.Flush()
	return exitOK
}

func (c *call) adminWho() int {
	tw := tabwriter.NewWriter(c.Out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LOGIN\tCONTAINER\tSOURCE\tSINCE\tCOMMAND")
	for _, s := range c.registry.List() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Login, s.Container, s.Source, s.Since.Local().Format("15:04:05"), s.Command)
	}
	tw.Flush()
	return exitOK
}

func (c *call) adminPrune() int {
	n := 0
	for _, u := range c.cfg.Users {
		list, err := c.m.StatusAll(c.ctx, containers.Ref{User: u})
		if err != nil {
			return c.fail(err)
		}
		for _, st := range list {
			if st.State == "running" || st.State == "absent" {
				continue
			}
			_, instance, _ := config.SplitLogin(st.Login)
			removed, err := c.m.Prune(c.ctx, containers.Ref{User: u, Instance: instance}, false)
			if err != nil {
				return c.fail(err)
			}
			for _, r := range removed {
				fmt.Fprintf(c.Out, "removed %s\n", r)
			}
			n++
		}
	}
	fmt.Fprintf(c.Out, "%d stopped containers pruned; users' data is kept\n", n)
	return exitOK
}
