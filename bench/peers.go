package main

import (
	"context"
	"fmt"
	"os/exec"
	"path"
	"strconv"
	"strings"
)

// target is an SSH server the bench measures: berth or the peer sshd. Both
// are reached the same way, with the same client, options and key; only
// the fields below differ.
type target struct {
	name  string // "berth" or "sshd", as the table and progress say
	port  int    // on 127.0.0.1
	login string // the user to log in as
	// dir is where the bench's remote files go: "." (the home directory)
	// on berth, a temp dir on sshd. Commands run in the home directory on
	// both, so a relative dir means the home.
	dir string
}

// remote returns a path for a file named name in t's directory.
func (t target) remote(name string) string { return path.Join(t.dir, name) }

// clientOpts are the OpenSSH client options for both targets: no user
// config, no known_hosts, only the bench's key.
func (l *lab) clientOpts() []string {
	return []string{"-F", "none",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", l.key}
}

// ssh returns `ssh [options] [opts] login@127.0.0.1 [command]` for t.
func (l *lab) ssh(ctx context.Context, t target, opts []string, command ...string) *exec.Cmd {
	args := append(l.clientOpts(), "-p", strconv.Itoa(t.port))
	args = append(args, opts...)
	args = append(args, t.login+"@127.0.0.1")
	return exec.CommandContext(ctx, "ssh", append(args, command...)...)
}

// sftp returns `sftp -b - [options] login@127.0.0.1` for t: it reads its
// commands from stdin and fails if one fails.
func (l *lab) sftp(ctx context.Context, t target) *exec.Cmd {
	args := append([]string{"-b", "-"}, l.clientOpts()...)
	args = append(args, "-P", strconv.Itoa(t.port), t.login+"@127.0.0.1")
	return exec.CommandContext(ctx, "sftp", args...)
}

// dockerExec returns `docker exec berth-<user> true`: the way into the
// user's container that berth's warm connect is held against.
func (l *lab) dockerExec(ctx context.Context) *exec.Cmd {
	return exec.CommandContext(ctx, "docker", "exec", l.container, "true")
}

// sinkScript is the port-forward sink: it accepts connections one at a
// time on 127.0.0.1:argv[1], reads each to EOF, and replies with the
// number of bytes it read. It prints "ready" once it listens. (No single
// quotes: it travels inside a single-quoted shell word.)
const sinkScript = `
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(8)
print("ready", flush=True)
buf = bytearray(1 << 20)
while True:
    c, _ = s.accept()
    n = 0
    while True:
        k = c.recv_into(buf)
        if not k:
            break
        n += k
    c.sendall(b"%d" % n)
    c.close()
`

// Files the sink leaves in a target's directory.
const (
	sinkLog = "bench-sink.log"
	sinkPID = "bench-sink.pid"
)

// startSink starts the sink on t's loopback, through t itself: inside the
// container for berth (the container's python3), on the host for sshd
// (the host's python3). nohup keeps it past the session, as in the e2e
// tests; the command returns once the sink listens.
func (l *lab) startSink(ctx context.Context, t target) error {
	script := fmt.Sprintf(`cd %s || exit 1
nohup python3 -c '%s' %d </dev/null >%s 2>&1 &
echo $! >%s
for i in $(seq 100); do grep -q ready %s && exit 0; sleep 0.1; done
cat %s >&2; exit 1`, t.dir, sinkScript, l.sinkPort, sinkLog, sinkPID, sinkLog, sinkLog)
	return runQuiet(l.ssh(ctx, t, nil, script))
}

// stopSink kills the sink that startSink started on t.
func (l *lab) stopSink(ctx context.Context, t target) error {
	return runQuiet(l.ssh(ctx, t, nil, fmt.Sprintf("cd %s && kill $(cat %s)", t.dir, sinkPID)))
}

// ciphers returns, per target, the key exchange and the server-to-client
// cipher that the client negotiated with it, from `ssh -v`.
func (l *lab) ciphers(ctx context.Context) (map[string]string, error) {
	got := map[string]string{}
	for _, t := range l.targets() {
		var stderr strings.Builder
		cmd := l.ssh(ctx, t, []string{"-v"}, "true")
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("%s: ssh -v: %v\n%s", t.name, err, lastLines(stderr.String(), 20))
		}
		var kex, cipher string
		for line := range strings.Lines(stderr.String()) {
			if v, ok := cutAfter(line, "kex: algorithm: "); ok {
				kex = v
			}
			if v, ok := cutAfter(line, "kex: server->client cipher: "); ok {
				cipher = v
			}
		}
		got[t.name] = fmt.Sprintf("kex %s, server->client cipher %s", kex, cipher)
	}
	return got, nil
}

// cutAfter returns what follows sep in line, trimmed, if sep is there.
func cutAfter(line, sep string) (string, bool) {
	_, after, ok := strings.Cut(line, sep)
	return strings.TrimSpace(after), ok
}
