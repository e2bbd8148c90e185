// Package verbs is berth's own commands, run by the gateway instead of in
// the container: `ssh host status`, `stop`, `rebuild`, ... and the
// operator's `ssh host admin ...`. A verb is recognised only as the exact
// first word of the SSH command, so `ssh host env prune` runs a program
// called prune inside the container, and VS Code's `sh` never collides.
//
//	h := verbs.New(cfg, manager, registry, logger)
//	if run, ok := h.For(caller).Lookup("status --json"); ok {
//		code := run(ctx, stdio)
//	}
package verbs

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/berth-ssh/berth/audit"
	"github.com/berth-ssh/berth/config"
	"github.com/berth-ssh/berth/containers"
	"github.com/berth-ssh/berth/sessions"
)

// Exit statuses of verbs.
const (
	exitOK     = 0
	exitFailed = 1 // the operation failed, or was not allowed
	exitUsage  = 2 // the verb was misused
)

// verb is one of berth's commands.
type verb struct {
	name, usage, help string
	run               func(c *call) int
}

// table lists every verb; help prints them in this order. (A function,
// not a variable, because help is in it and reads it.)
func table() []verb {
	return []verb{
		{"help", "help", "list berth's commands", (*call).help},
		{"config", "config [NAME]", "print a ~/.ssh/config stanza for this gateway (VS Code reads it too)", (*call).sshConfig},
		{"status", "status [--json] [--all]", "your container: state, image, uptime, GPUs, mounts, disk used", (*call).status},
		{"start", "start [--keep]", "build the image if needed, create and start your container (--keep: exempt it from the idle stop until it stops)", (*call).start},
		{"stop", "stop [--rm]", "stop your container, keeping everything in it (--rm: remove it too; your data stays)", (*call).stop},
		{"restart", "restart", "stop and start your container", (*call).restart},
		{"rebuild", "rebuild [--no-cache]", "rebuild the image and recreate your container on it; the previous image is kept", (*call).rebuild},
		{"rollback", "rollback", "recreate your container on the image it had before the last rebuild", (*call).rollback},
		{"prune", "prune [--data [--yes]]", "remove your container and images only it uses (--data: delete your files too)", (*call).prune},
		{"gpus", "gpus [--json]", "every GPU: memory, utilization, who holds it, its processes", (*call).gpus},
		{"logs", "logs [-f]", "your container's provisioning log and log (-f: follow)", (*call).logs},
		{"admin", "admin users|who|stop|restart|rebuild USER[+NAME]|prune --all-stopped", "operator commands, for admins", (*call).admin},
	}
}

// Handler runs verbs for the whole gateway.
type Handler struct {
	cfg      *config.Config
	m        *containers.Manager
	registry *sessions.Registry
	log      *slog.Logger
}

// New returns the gateway's verb handler.
func New(cfg *config.Config, m *containers.Manager, registry *sessions.Registry, log *slog.Logger) *Handler {
	return &Handler{cfg: cfg, m: m, registry: registry, log: log}
}

// Caller is who runs a verb: the container they logged in to, the key
// they proved (for the log), and the address they reached berth at.
type Caller struct {
	Ref        containers.Ref
	Key        string
	Host, Port string
}

// For returns the verbs as caller may run them; it satisfies
// sessions.Verbs.
func (h *Handler) For(caller Caller) Bound { return Bound{h: h, caller: caller} }

// Bound is a Handler for one caller.
type Bound struct {
	h      *Handler
	caller Caller
}

// Lookup returns the verb command names, if its first word is one.
func (b Bound) Lookup(command string) (func(context.Context, sessions.Stdio) int, bool) {
	args := strings.Fields(command)
	if len(args) == 0 {
		return nil, false
	}
	for _, v := range table() {
		if v.name == args[0] {
			return func(ctx context.Context, stdio sessions.Stdio) int {
				c := &call{Handler: b.h, ctx: ctx, caller: b.caller, verb: v, args: args[1:], Stdio: stdio}
				b.h.log.Info("verb", audit.Event("verb"), "user", b.caller.Ref.Login(), "key", b.caller.Key, "command", command)
				return v.run(c)
			}, true
		}
	}
	return nil, false
}

// call is one verb being run.
type call struct {
	*Handler
	sessions.Stdio
	ctx    context.Context
	caller Caller
	verb   verb
	args   []string
}

// flags parses the verb's flags; on misuse it has printed why.
func (c *call) flags(define func(fs *flag.FlagSet)) bool {
	fs := flag.NewFlagSet(c.verb.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	define(fs)
	if err := fs.Parse(c.args); err != nil || fs.NArg() > 0 {
		if err == nil {
			err = fmt.Errorf("unexpected argument %q", fs.Arg(0))
		}
		c.misuse(err.Error())
		return false
	}
	return true
}

func (c *call) misuse(why string) int {
	fmt.Fprintf(c.Err, "berth: %s: %s\nusage: ssh HOST %s\n", c.verb.name, why, c.verb.usage)
	return exitUsage
}

// fail reports a failed operation: one sentence for the user, the detail
// to the log.
func (c *call) fail(err error) int {
	msg := err.Error()
	var f *containers.Failure
	var none *containers.NoContainer
	switch {
	case errors.As(err, &f):
		msg = f.Msg
	case errors.As(err, &none) && none.Name == c.caller.Ref.Name():
		msg = "you have no container " + none.Name + " (`start` makes it)"
	case errors.As(err, &none):
		msg = "there is no container " + none.Name
	}
	c.log.Error("verb failed", "user", c.caller.Ref.Login(), "verb", c.verb.name, "err", err)
	fmt.Fprintf(c.Err, "berth: %s.\n", strings.TrimSuffix(msg, "."))
	return exitFailed
}

func (c *call) help() int {
	if !c.flags(func(*flag.FlagSet) {}) {
		return exitUsage
	}
	fmt.Fprintf(c.Out, "berth's commands, run as `ssh HOST COMMAND`; anything else runs in your container.\n\n")
	for _, v := range table() {
		fmt.Fprintf(c.Out, "  %-30s %s\n", v.usage, v.help)
	}
	fmt.Fprintf(c.Out, "\nLog in as %s+NAME for a second container with the same home.\n", c.caller.Ref.User.Name)
	return exitOK
}
