package verbs

import (
	"fmt"

	"github.com/berth-ssh/berth/config"
)

// sshConfig prints a ~/.ssh/config stanza that reaches this gateway as
// the caller, with the keepalives VS Code Remote-SSH likes.
func (c *call) sshConfig() int {
	alias := "berth"
	switch {
	case len(c.args) == 1 && config.ValidName(c.args[0]):
		alias = c.args[0]
	case len(c.args) > 0:
		return c.misuse("NAME is a host alias such as gpu")
	}
	fmt.Fprintf(c.Out, `# berth: add this to ~/.ssh/config, then: ssh %[1]s (or pick %[1]s in VS Code)
Host %[1]s
    HostName %[2]s
    Port %[3]s
    User %[4]s
    ServerAliveInterval 15
    ServerAliveCountMax 4
`, alias, c.caller.Host, c.caller.Port, c.caller.Ref.Login())
	return exitOK
}
