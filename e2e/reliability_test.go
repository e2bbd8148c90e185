package e2e

import (
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/berth-ssh/berth/containers"
)

// berthProcess is `berth serve` run as a process, for tests that kill it.
type berthProcess struct {
	t    *testing.T
	cmd  *exec.Cmd
	logs *logBuffer
}

// serveBinary starts `berth serve --config path` and waits until it
// listens on port.
func serveBinary(t *testing.T, path, port string) *berthProcess {
	t.Helper()
	p := &berthProcess{t: t, cmd: exec.Command(berthBin(t), "serve", "--config", path), logs: &logBuffer{}}
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		p.cmd.Wait()
		if t.Failed() {
			t.Logf("berth's log:\n%s", p.logs)
		}
	})
	waitFor(t, "berth to listen", 30*time.Second, func() bool {
		c, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return p
}

// kill is kill -9: berth gets no chance to tidy up.
func (p *berthProcess) kill() {
	p.cmd.Process.Kill()
	p.cmd.Wait()
}

// kill -9 berth in the middle of a session and start it again: the
// container, its data, its GPU lease labels and the user's nohup job are
// all still there, the user reconnects to the same container, and nothing
// is created twice.
func TestAKilledGatewayComesBackToTheSameContainers(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	port := freePort(t)
	cfg, path := gatewayConfig(t, options{listen: "127.0.0.1:" + port}, alice)
	g := &gw{t: t, port: port, cfg: cfg}
	first := serveBinary(t, path, port)
	g.runOK(alice, "echo kept > projects/data; nohup sleep 600 >/dev/null 2>&1 & echo $! > job.pid")
	before := inspect(t, alice).Container

	session := g.ssh(alice, nil, "echo started; sleep 600")
	out, _ := session.StdoutPipe()
	if err := session.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	out.Read(buf)
	first.kill()
	if err := session.Wait(); err == nil {
		t.Fatal("the session outlived berth's process")
	}

	serveBinary(t, path, port)
	got := g.runOK(alice, "cat projects/data; kill -0 $(cat job.pid) && echo job-alive")
	if got != "kept\njob-alive\n" {
		t.Fatalf("after the restart: %q", got)
	}
	after := inspect(t, alice).Container
	if after.ID != before.ID || after.Created != before.Created || !after.State.Running {
		t.Fatalf("the container was made again: %s (%s) -> %s (%s)", before.ID[:12], before.Created, after.ID[:12], after.Created)
	}
	if after.Config.Labels[containers.LabelGPUs] != before.Config.Labels[containers.LabelGPUs] {
		t.Fatal("the GPU lease labels changed")
	}
	list, err := docker.ContainerList(t.Context(), client.ContainerListOptions{All: true,
		Filters: make(client.Filters).Add("label", containers.LabelUser+"="+alice.name)})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("alice's containers: %d %v", len(list.Items), err)
	}
}

// kill -9 berth while it builds the image: no container is made from a
// half-built image, and the next login builds it whole and goes on.
func TestAGatewayKilledDuringABuildRecovers(t *testing.T) {
	t.Parallel()
	alice := newUser(t, "alice")
	port := freePort(t)
	df := dockerfile(t, "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nARG NONCE\nRUN echo $NONCE > /etc/started && sleep 6 && echo whole > /etc/built\n")
	cfg, path := gatewayConfig(t, options{listen: "127.0.0.1:" + port, dockerfile: df, buildArgs: map[string]string{"NONCE": nonce()}}, alice)
	recordTestImages(cfg, []user{alice})
	g := &gw{t: t, port: port, cfg: cfg}
	first := serveBinary(t, path, port)

	login := g.ssh(alice, nil, "cat /etc/built")
	var progress logBuffer
	login.Stderr = &progress
	if err := login.Start(); err != nil {
		t.Fatal(err)
	}
	// The build's own output says when its slow step runs.
	waitFor(t, "the build's RUN step", 60*time.Second, func() bool { return strings.Contains(progress.String(), " : RUN echo") })
	first.kill()
	login.Wait()
	if _, err := docker.ContainerInspect(t.Context(), containers.Name(alice.name), client.ContainerInspectOptions{}); err == nil {
		t.Fatal("a container exists though its image never finished")
	}

	serveBinary(t, path, port)
	if out := g.runOK(alice, "cat /etc/built"); out != "whole\n" {
		t.Fatalf("after the restart: %q", out)
	}
}

// 200 sessions at once across 20 users, each running a short command:
// every one succeeds with its own output. The connect-to-done latency is
// logged at p50 and p99 (go test -v -run TestLoad ./e2e); speed itself is
// the benchmarks' business.
func TestLoadOf200SessionsAcross20Users(t *testing.T) {
	t.Parallel()
	var users []user
	for range 20 {
		users = append(users, newUser(t, "load"))
	}
	g := startGateway(t, options{extra: "max_startups: \"250\"\n"}, users...)
	var warm sync.WaitGroup
	for _, u := range users {
		warm.Go(func() { g.runOK(u, "true") })
	}
	warm.Wait()

	type outcome struct {
		took time.Duration
		err  error
	}
	results := make(chan outcome, 200)
	start := make(chan struct{})
	for i := range 200 {
		u := users[i%len(users)]
		go func() {
			want := fmt.Sprintf("ok %d %s\n", i, u.name)
			cmd := g.ssh(u, nil, fmt.Sprintf("echo ok %d $(id -un)", i))
			<-start
			began := time.Now()
			out, err := cmd.Output()
			if err == nil && string(out) != want {
				err = fmt.Errorf("session %d: %q, want %q", i, out, want)
			}
			results <- outcome{time.Since(began), err}
		}()
	}
	close(start)
	var took []time.Duration
	for range 200 {
		r := <-results
		if r.err != nil {
			t.Errorf("session failed: %v", r.err)
		}
		took = append(took, r.took)
	}
	slices.Sort(took)
	t.Logf("200 concurrent sessions, 20 users: p50 %s, p99 %s, max %s",
		took[99].Round(time.Millisecond), took[197].Round(time.Millisecond), took[199].Round(time.Millisecond))
}
