package keys

import (
	"fmt"
	"strings"
)

// Options are the authorized_keys options berth enforces for the key that
// signed. x/crypto/ssh only parses them; acting on them is berth's job.
type Options struct {
	// Command is a forced command: it runs instead of whatever the client
	// asked for, verbs included, with the request in SSH_ORIGINAL_COMMAND.
	Command    string
	NoPTY      bool
	NoForwards bool // no port or socket forwarding
	NoAgent    bool
}

// ParseOptions reads an authorized_keys line's options. An option berth
// does not enforce is an error: a key whose restrictions would be ignored
// must not log in at all.
func ParseOptions(opts []string) (Options, error) {
	var o Options
	for _, opt := range opts {
		name, value, hasValue := strings.Cut(opt, "=")
		switch strings.ToLower(name) {
		case "restrict":
			o.NoPTY, o.NoForwards, o.NoAgent = true, true, true
		case "no-pty":
			o.NoPTY = true
		case "no-port-forwarding":
			o.NoForwards = true
		case "no-agent-forwarding":
			o.NoAgent = true
		case "pty":
			o.NoPTY = false
		case "port-forwarding":
			o.NoForwards = false
		case "agent-forwarding":
			o.NoAgent = false
		case "no-x11-forwarding", "no-user-rc", "x11-forwarding", "user-rc":
			// berth has neither X11 forwarding nor ~/.ssh/rc.
		case "command":
			cmd, err := unquote(value)
			if !hasValue || err != nil {
				return Options{}, fmt.Errorf("option %q: want command=\"...\"", opt)
			}
			o.Command = cmd
		default:
			return Options{}, fmt.Errorf("option %q is not supported by berth, so the key is refused", name)
		}
	}
	return o, nil
}

// unquote reads an option value in double quotes, where \" is a quote.
func unquote(v string) (string, error) {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return "", fmt.Errorf("not quoted")
	}
	return strings.ReplaceAll(v[1:len(v)-1], `\"`, `"`), nil
}
