package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh/agent"
)

// background starts an ssh command that keeps running (a forward), and
// stops it when the test ends.
func background(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	cmd.Stdin = nil
	var stderr logBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%v stderr:\n%s", cmd.Args, stderr.String())
		}
	})
}

// localForward runs `ssh -N -L port:target` and waits for the port.
func (g *gw) localForward(u user, flag, target string) string {
	g.t.Helper()
	port := freePort(g.t)
	background(g.t, g.ssh(u, []string{"-N", "-o", "ExitOnForwardFailure=yes", flag, "127.0.0.1:" + port + target}))
	waitFor(g.t, "the forwarded port", 20*time.Second, func() bool {
		c, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return port
}

// httpGet fetches a URL through an optional SOCKS proxy with curl.
func httpGet(t *testing.T, url, socks string) string {
	t.Helper()
	args := []string{"-sS", "--max-time", "20", url}
	if socks != "" {
		args = append([]string{"--socks5-hostname", socks}, args...)
	}
	out, err := exec.Command("curl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// serveHTTPInside starts an HTTP server on the container's loopback,
// serving a file whose content it returns.
func (g *gw) serveHTTPInside(u user, port int) string {
	g.t.Helper()
	content := "served from inside " + nonce()
	g.runOK(u, fmt.Sprintf("mkdir -p ~/www && echo %q > ~/www/index.txt && "+
		"(nohup python3 -m http.server %d --bind 127.0.0.1 --directory ~/www >/dev/null 2>&1 &)", content, port))
	waitFor(g.t, "the server inside", 20*time.Second, func() bool {
		return run(g.t, g.ssh(u, nil, fmt.Sprintf("python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", %d))'", port)), "").code == 0
	})
	return content + "\n"
}

func TestLocalAndDynamicForwardsReachTheContainersLoopback(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	want := g.serveHTTPInside(alice, 8123)

	port := g.localForward(alice, "-L", ":127.0.0.1:8123")
	if got := httpGet(t, "http://127.0.0.1:"+port+"/index.txt", ""); got != want {
		t.Fatalf("ssh -L: %q, want %q", got, want)
	}
	// -D: the name is resolved inside the container, by its resolver.
	socks := freePort(t)
	background(t, g.ssh(alice, []string{"-N", "-D", "127.0.0.1:" + socks}))
	waitFor(t, "the SOCKS port", 20*time.Second, func() bool {
		c, err := net.Dial("tcp", "127.0.0.1:"+socks)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if got := httpGet(t, "http://localhost:8123/index.txt", "127.0.0.1:"+socks); got != want {
		t.Fatalf("ssh -D: %q, want %q", got, want)
	}
}

func TestForwardHalfCloseKeepsTheOtherDirection(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	// A server that reads to EOF, then answers: it needs the half-close.
	g.runOK(alice, `(nohup python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8124)); s.listen()
while True:
    c, _ = s.accept(); data = b""
    while True:
        b = c.recv(65536)
        if not b: break
        data += b
    c.sendall(b"got %d bytes" % len(data)); c.close()
' >/dev/null 2>&1 &)`)
	port := g.localForward(alice, "-L", ":127.0.0.1:8124")
	var reply []byte
	waitFor(t, "the half-closing server", 20*time.Second, func() bool {
		c, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err != nil {
			return false
		}
		defer c.Close()
		c.Write(bytes.Repeat([]byte("x"), 100000))
		c.(*net.TCPConn).CloseWrite()
		reply, _ = io.ReadAll(c)
		return len(reply) > 0
	})
	if string(reply) != "got 100000 bytes" {
		t.Fatalf("reply %q", reply)
	}
}

func TestRemoteForwardListensInsideTheContainer(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "from the client side")
	}))

	fetch := `python3 -c 'import urllib.request,sys; print(urllib.request.urlopen("http://127.0.0.1:%s/").read().decode())'`
	background(t, g.ssh(alice, []string{"-N", "-o", "ExitOnForwardFailure=yes", "-R", "9000:" + l.Addr().String()}))
	var out string
	waitFor(t, "the remote forward", 20*time.Second, func() bool {
		r := run(t, g.ssh(alice, nil, fmt.Sprintf(fetch, "9000")), "")
		out = r.stdout
		return r.code == 0
	})
	if strings.TrimSpace(out) != "from the client side" {
		t.Fatalf("got %q", out)
	}

	// Port 0: the client is told which port the container gave it. ssh
	// says so at LogLevel INFO; its first -o for an option wins.
	cmd := g.ssh(alice, []string{"-N", "-o", "ExitOnForwardFailure=yes", "-R", "0:" + l.Addr().String()})
	cmd.Args = append([]string{"ssh", "-o", "LogLevel=INFO"}, cmd.Args[1:]...)
	var stderr logBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	allocated := regexp.MustCompile(`Allocated port (\d+) for remote forward`)
	waitFor(t, "the allocated port", 20*time.Second, func() bool { return allocated.MatchString(stderr.String()) })
	m := allocated.FindStringSubmatch(stderr.String())
	if r := run(t, g.ssh(alice, nil, fmt.Sprintf(fetch, m[1])), ""); strings.TrimSpace(r.stdout) != "from the client side" {
		t.Fatalf("dynamic port %s: exit %d %q %q", m[1], r.code, r.stdout, r.stderr)
	}
	// When the client goes, so do the listeners inside.
	cmd.Process.Kill()
	cmd.Wait()
	waitFor(t, "the listen helper to exit", 20*time.Second, func() bool {
		return run(t, g.ssh(alice, nil, fmt.Sprintf(fetch, m[1])), "").code != 0
	})
}

// unixEcho starts a unix socket server in the container that answers
// "echo:" and what it got.
const unixEcho = `(nohup python3 -c '
import os, socket
p = os.path.expanduser("~/echo.sock")
if os.path.exists(p): os.remove(p)
s = socket.socket(socket.AF_UNIX); s.bind(p); s.listen()
while True:
    c, _ = s.accept(); c.sendall(b"echo:" + c.recv(1024)); c.close()
' >/dev/null 2>&1 &)`

func TestLocalForwardToAUnixSocketInsideTheContainer(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	g.runOK(alice, unixEcho)
	sock := "/home/" + alice.name + "/echo.sock"
	waitFor(t, "the socket", 20*time.Second, func() bool { return run(t, g.ssh(alice, nil, "test -S "+sock), "").code == 0 })
	port := g.localForward(alice, "-L", ":"+sock)
	c, err := net.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("ping"))
	got, _ := io.ReadAll(c)
	if string(got) != "echo:ping" {
		t.Fatalf("got %q", got)
	}
}

func TestAgentForwardingListsTheClientsKeys(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	sock := filepath.Join(shortTempDir(t), "agent")
	sshAgent := exec.Command("ssh-agent", "-D", "-a", sock)
	if err := sshAgent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sshAgent.Process.Kill(); sshAgent.Wait() })
	waitFor(t, "ssh-agent", 10*time.Second, func() bool { _, err := os.Stat(sock); return err == nil })
	add := exec.Command("ssh-add", alice.key)
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v %s", err, out)
	}

	cmd := g.ssh(alice, []string{"-A"}, `ssh-add -l && stat -c '%U %a' "$SSH_AUTH_SOCK" "$(dirname "$SSH_AUTH_SOCK")"`)
	cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
	r := run(t, cmd, "")
	if r.code != 0 {
		t.Fatalf("exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	fp := strings.Fields(string(mustOutput(t, "ssh-keygen", "-lf", alice.key)))[1]
	if !strings.Contains(r.stdout, fp) {
		t.Fatalf("the client's key %s is not listed:\n%s", fp, r.stdout)
	}
	// Only the user can use the socket: it and its directory are theirs,
	// mode 0700.
	if want := fmt.Sprintf("%s 700\n%s 700\n", alice.name, alice.name); !strings.HasSuffix(r.stdout, want) {
		t.Fatalf("socket and directory: got\n%s\nwant\n%s", r.stdout, want)
	}
	// Without -A there is no agent.
	if r := run(t, g.ssh(alice, nil, `test -z "$SSH_AUTH_SOCK"`), ""); r.code != 0 {
		t.Fatal("SSH_AUTH_SOCK set without -A")
	}
}

func mustOutput(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return out
}

// randomFile writes size random bytes to a file and returns its path and
// checksum.
func randomFile(t *testing.T, size int) (string, [32]byte) {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	path := filepath.Join(t.TempDir(), "upload.bin")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, sha256.Sum256(data)
}

func sumFile(t *testing.T, path string) [32]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(data)
}

func TestFileTransferWithSFTPScpAndRsync(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	g.runOK(alice, "true")
	src, sum := randomFile(t, 5<<20)
	projects := filepath.Join(g.cfg.DataRoot, alice.name, "projects")
	target := alice.name + "@127.0.0.1"
	sshCmd := "ssh " + strings.Join(g.sshArgs(alice), " ")

	check := func(name, hostPath string) {
		t.Helper()
		if sumFile(t, hostPath) != sum {
			t.Fatalf("%s: content differs", name)
		}
		if owner := fileOwner(t, hostPath); owner != 3000 {
			t.Fatalf("%s: owned by %d on the host, want the user's 3000", name, owner)
		}
	}
	copyArgs := g.copyArgs(alice) // sftp and scp spell the port -P

	t.Run("sftp", func(t *testing.T) {
		down := filepath.Join(t.TempDir(), "down")
		cmd := exec.Command("sftp", append(append([]string{"-b", "-"}, copyArgs...), target)...)
		cmd.Stdin = strings.NewReader(fmt.Sprintf("put %s projects/via-sftp\nget projects/via-sftp %s\n", src, down))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("sftp: %v\n%s", err, out)
		}
		check("sftp put", filepath.Join(projects, "via-sftp"))
		if sumFile(t, down) != sum {
			t.Fatal("sftp get: content differs")
		}
	})
	t.Run("scp", func(t *testing.T) {
		for _, legacy := range []bool{false, true} {
			args := copyArgs
			name := "via-scp"
			if legacy {
				args, name = append([]string{"-O"}, copyArgs...), "via-scp-legacy"
			}
			if out, err := exec.Command("scp", append(args, src, target+":projects/"+name)...).CombinedOutput(); err != nil {
				t.Fatalf("scp up (legacy %v): %v\n%s", legacy, err, out)
			}
			check(name, filepath.Join(projects, name))
			down := filepath.Join(t.TempDir(), "down")
			if out, err := exec.Command("scp", append(args, target+":projects/"+name, down)...).CombinedOutput(); err != nil {
				t.Fatalf("scp down (legacy %v): %v\n%s", legacy, err, out)
			}
			if sumFile(t, down) != sum {
				t.Fatalf("scp down (legacy %v): content differs", legacy)
			}
		}
	})
	t.Run("rsync", func(t *testing.T) {
		if out, err := exec.Command("rsync", "-e", sshCmd, src, target+":projects/via-rsync").CombinedOutput(); err != nil {
			t.Fatalf("rsync up: %v\n%s", err, out)
		}
		check("rsync", filepath.Join(projects, "via-rsync"))
		down := filepath.Join(t.TempDir(), "down")
		if out, err := exec.Command("rsync", "-e", sshCmd, target+":projects/via-rsync", down).CombinedOutput(); err != nil {
			t.Fatalf("rsync down: %v\n%s", err, out)
		}
		if sumFile(t, down) != sum {
			t.Fatal("rsync down: content differs")
		}
	})
}

// copyArgs are sshArgs as sftp and scp take them: they spell the port -P.
func (g *gw) copyArgs(u user) []string {
	args := []string{"-P", g.port}
	ssh := g.sshArgs(u)
	for i := 0; i < len(ssh); i++ {
		if ssh[i] == "-p" {
			i++
			continue
		}
		args = append(args, ssh[i])
	}
	return args
}

// helpersLeft counts berth's own helper processes (SFTP servers, dial and
// listen helpers) in u's container.
func helpersLeft(t *testing.T, u user) int {
	t.Helper()
	out, _ := exec.Command("docker", "exec", "berth-"+u.name, "sh", "-c",
		"ps -eo args= | grep -c '^berth-agent \\(sftp\\|dial\\|listen\\)' || true").Output()
	n := 0
	fmt.Sscan(string(out), &n)
	return n
}

// vscodeScript emulates what VS Code Remote-SSH pipes into `ssh -T host
// sh`: start a server on a free port or a fresh socket inside the remote,
// print where it listens, and keep the shell alive.
const vscodeScript = `set -e
mkdir -p ~/vscode-emu && echo "vscode server %[1]s" > ~/vscode-emu/index.txt
cat > ~/vscode-emu/serve.py <<'PY'
import http.server, os, socket, socketserver, sys
os.chdir(os.path.expanduser("~/vscode-emu"))
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass
    def address_string(self): return "local"
if sys.argv[1] == "tcp":
    srv = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    where = str(srv.server_address[1])
else:
    where = "/tmp/code-" + os.urandom(8).hex()
    srv = socketserver.UnixStreamServer(where, Quiet)
print("listeningOn==%%s==" %% where, flush=True)
srv.serve_forever()
PY
exec python3 ~/vscode-emu/serve.py %[2]s
`

func TestVSCodeRemoteSSHEmulation(t *testing.T) {
	t.Parallel()
	for _, variant := range []string{"tcp", "socket"} {
		t.Run(variant, func(t *testing.T) {
			t.Parallel()
			alice := newUser(t, "alice")
			g := startGateway(t, options{}, alice)
			token := nonce()
			socks := freePort(t)
			// VS Code: ssh -T -D <port> host sh, the script on stdin, no PTY.
			cmd := g.ssh(alice, []string{"-T", "-D", "127.0.0.1:" + socks}, "sh")
			cmd.Stdin = strings.NewReader(fmt.Sprintf(vscodeScript, token, variant))
			stdout, _ := cmd.StdoutPipe()
			var stderr logBuffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
			where := make(chan string, 1)
			go func() {
				sc := bufio.NewScanner(stdout)
				for sc.Scan() {
					if m := regexp.MustCompile(`listeningOn==(.+)==`).FindStringSubmatch(sc.Text()); m != nil {
						where <- m[1]
						return
					}
				}
				close(where)
			}()
			var at string
			select {
			case at = <-where:
			case <-time.After(60 * time.Second):
			}
			if at == "" {
				t.Fatalf("the server never said where it listens; stderr:\n%s", stderr.String())
			}
			want := "vscode server " + token + "\n"
			if variant == "tcp" {
				// VS Code's own path: a direct-tcpip channel through the SOCKS port.
				if got := httpGet(t, "http://127.0.0.1:"+at+"/index.txt", "127.0.0.1:"+socks); got != want {
					t.Fatalf("through the SOCKS port: %q", got)
				}
				// A second connection of the same user lands in the same container.
				port := g.localForward(alice, "-L", ":127.0.0.1:"+at)
				if got := httpGet(t, "http://127.0.0.1:"+port+"/index.txt", ""); got != want {
					t.Fatalf("through a second connection: %q", got)
				}
				return
			}
			// remote.SSH.remoteServerListenOnSocket: -L to the socket, from a
			// second connection.
			port := g.localForward(alice, "-L", ":"+at)
			if got := httpGet(t, "http://127.0.0.1:"+port+"/index.txt", ""); got != want {
				t.Fatalf("through the socket forward: %q", got)
			}
		})
	}
}

// Debian's python3-paramiko, a second SSH implementation, opens a
// direct-tcpip channel and an SFTP session.
func TestParamikoForwardsAndTransfersFiles(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Fatal("/usr/bin/python3 is missing; run scripts/test-deps.sh")
	}
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	want := g.serveHTTPInside(alice, 8125)
	src, sum := randomFile(t, 1<<20)
	down := filepath.Join(t.TempDir(), "down")
	script := `
import hashlib, sys, paramiko
port, user, key, src, down = sys.argv[1:]
client = paramiko.SSHClient()
client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
client.connect("127.0.0.1", port=int(port), username=user,
               pkey=paramiko.Ed25519Key.from_private_key_file(key),
               allow_agent=False, look_for_keys=False)
ch = client.get_transport().open_channel("direct-tcpip", ("127.0.0.1", 8125), ("127.0.0.1", 0))
ch.sendall(b"GET /index.txt HTTP/1.0\r\n\r\n")
resp = b""
while True:
    data = ch.recv(65536)
    if not data:
        break
    resp += data
print("http:" + resp.split(b"\r\n\r\n", 1)[1].decode(), end="")
sftp = client.open_sftp()
sftp.put(src, "projects/via-paramiko")
sftp.get("projects/via-paramiko", down)
print("cwd:" + sftp.normalize("."))
`
	out, err := exec.Command("/usr/bin/python3", "-c", script, g.port, alice.name, alice.key, src, down).CombinedOutput()
	if err != nil {
		t.Fatalf("paramiko: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "http:"+want) || !strings.Contains(string(out), "cwd:/home/"+alice.name+"\n") {
		t.Fatalf("paramiko output:\n%s", out)
	}
	if sumFile(t, down) != sum || sumFile(t, filepath.Join(g.cfg.DataRoot, alice.name, "projects", "via-paramiko")) != sum {
		t.Fatal("paramiko's SFTP transfer changed the content")
	}
	waitFor(t, "berth's helpers to exit", 20*time.Second, func() bool { return helpersLeft(t, alice) == 0 })
}

// A forward is dialled inside the user's container: the gateway host's
// own loopback services and its Docker socket are out of reach.
func TestForwardsCannotReachTheGatewayHost(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	hostOnly, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostOnly.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := hostOnly.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	c := g.dial(alice)
	if conn, err := c.Dial("tcp", hostOnly.Addr().String()); err == nil {
		conn.Close()
		t.Fatal("a forward to 127.0.0.1 reached the gateway host's loopback")
	}
	if conn, err := c.Dial("unix", "/var/run/docker.sock"); err == nil {
		conn.Close()
		t.Fatal("a forward reached a Docker socket")
	}
	select {
	case <-accepted:
		t.Fatal("the host-only service was reached")
	case <-time.After(200 * time.Millisecond):
	}
	if g.logs.count("forward failed", "/var/run/docker.sock") == 0 {
		t.Fatalf("no log line for the refused socket forward:\n%s", g.logs)
	}
}

func TestForwardingCanBeTurnedOffPerUser(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{userYAML: "forwarding: false"}, alice)
	g.runOK(alice, "true")
	if _, err := g.dial(alice).Dial("tcp", "127.0.0.1:22"); err == nil || !strings.Contains(err.Error(), "prohibited") {
		t.Fatalf("-L with forwarding off: %v", err)
	}
	r := run(t, g.ssh(alice, []string{"-N", "-o", "ExitOnForwardFailure=yes", "-R", "9001:127.0.0.1:1"}), "")
	if r.code == 0 || !strings.Contains(r.stderr, "remote port forwarding failed") {
		t.Fatalf("-R with forwarding off: exit %d, %q", r.code, r.stderr)
	}
	s, err := g.dial(alice).NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := agent.RequestAgentForwarding(s); err == nil {
		t.Fatal("agent forwarding allowed with forwarding off")
	}
}

func TestKeepalivesBothWays(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	g := startGateway(t, options{extra: "keepalive_interval: 1s\nkeepalive_count_max: 2\n"}, alice)

	// The client's keepalives are answered.
	r := run(t, g.ssh(alice, []string{"-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2"}, "sleep 4; echo alive"), "")
	if r.code != 0 || r.stdout != "alive\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	// A client that stops answering is dropped.
	cmd := g.ssh(alice, []string{"-N"})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	waitFor(t, "the connection", 20*time.Second, func() bool { return g.logs.count("authenticated", "user="+alice.name) >= 2 })
	cmd.Process.Signal(syscall.SIGSTOP)
	defer cmd.Process.Signal(syscall.SIGCONT)
	waitFor(t, "berth to drop the silent client", 20*time.Second, func() bool {
		return g.logs.count("stopped answering keepalives") == 1
	})
}

func TestSSHFSMountsTheContainersFiles(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("this kernel offers no FUSE device, so sshfs cannot mount here")
	}
	alice := newUser(t, "alice")
	g := startGateway(t, options{}, alice)
	g.runOK(alice, "echo from-inside > projects/inside.txt")
	mnt := t.TempDir()
	args := []string{"-p", g.port, "-o", "IdentityFile=" + alice.key + ",IdentitiesOnly=yes,BatchMode=yes,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null",
		alice.name + "@127.0.0.1:projects", mnt}
	if out, err := exec.Command("sshfs", args...).CombinedOutput(); err != nil {
		t.Fatalf("sshfs: %v\n%s", err, out)
	}
	defer exec.Command("fusermount", "-u", mnt).Run()
	if b, err := os.ReadFile(filepath.Join(mnt, "inside.txt")); err != nil || string(b) != "from-inside\n" {
		t.Fatalf("read through sshfs: %q %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "outside.txt"), []byte("from-outside\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := g.runOK(alice, "cat projects/outside.txt; stat -c %U projects/outside.txt"); out != "from-outside\n"+alice.name+"\n" {
		t.Fatalf("written through sshfs: %q", out)
	}
}
