package verbs

import (
	"fmt"

	"github.com/berth-ssh/berth/config"
)

// sshConfig prints a ~/.ssh/config stanza that reaches this gateway as
// the caller, with the keepalives VS Code Remote-SSH likes. It puts
// AES-GCM first: OpenSSH's client prefers ChaCha20-Poly1305, which Go has
// no assembly for on amd64, while its AES-GCM uses AES-NI
// (docs/benchmarks.md). The list is spelled out, not "^...", so that
// clients older than OpenSSH 8.7 read it too.
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
    Ciphers aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr
`, alias, c.caller.Host, c.caller.Port, c.caller.Ref.Login())
	return exitOK
}
