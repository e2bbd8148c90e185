// Command bench is berth's benchmark suite: it measures berth side by side
// with what it stands in for, on the same machine, in one run.
//
//	go run ./bench            # full run: 30 connects, 3 × 1 GiB per transfer, 200 idle sessions
//	go run ./bench --quick    # 10 connects, 1 × 256 MiB per transfer, 50 idle sessions
//
// It builds berth and berth-agent from this checkout, serves one user on
// the loopback with the slim test environment (testdata/env), and starts
// OpenSSH's sshd on the loopback as the peer, both reached with the same
// OpenSSH client and the same key. It then measures, alternating berth and
// the peer and taking medians:
//
//   - warm connect: `ssh host true`, against sshd and against
//     `docker exec berth-<user> true`;
//   - cold connect: `ssh host true` to a stopped container, against
//     `docker start berth-<user>`;
//   - shell prompt: `ssh -tt host` to the first prompt, against sshd;
//   - scale, berth alone: its memory per idle login shell, and the p99 of
//     connects while they are open;
//   - stdout throughput without a PTY, `ssh host 'head -c N /dev/zero'`,
//     and on one, `ssh -tt`;
//   - port-forward throughput through `ssh -N -L` to a sink that counts;
//   - SFTP put and get of one file.
//
// Progress goes to stderr, the table to stdout. Everything it starts and
// writes (servers, the container berth-<user>, temp dirs) is removed at the
// end, also on Ctrl-C. It needs root, a Docker engine with the local image
// berth-base:bookworm (scripts/base-image.sh), OpenSSH's client and server
// (scripts/test-deps.sh), python3 on the host, and Go.
//
// The files split by concern: setup.go makes and removes the lab (binaries,
// keys, berth, sshd), peers.go is how a target is reached, measures.go is
// what is timed, table.go is the result. docs/benchmarks.md explains each
// row and records the latest results.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// plan is how much a run measures.
type plan struct {
	connects int   // timed connects per way in
	size     int64 // bytes per throughput transfer
	ptySize  int64 // bytes per transfer on a PTY, which is slower
	reps     int   // transfers per target and throughput row
	cold     int   // cold connects, and container starts
	prompts  int   // shell prompts per target
	idle     int   // concurrent idle sessions for the scale rows
}

var (
	fullPlan  = plan{connects: 30, size: 1 << 30, ptySize: 256 << 20, reps: 3, cold: 5, prompts: 10, idle: 200}
	quickPlan = plan{connects: 10, size: 256 << 20, ptySize: 64 << 20, reps: 1, cold: 2, prompts: 3, idle: 50}
)

// began is when the run started, for progress lines.
var began = time.Now()

// progress prints one line about what the run is doing to stderr.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench [%6.1fs] %s\n", time.Since(began).Seconds(), fmt.Sprintf(format, args...))
}

func main() {
	quick := flag.Bool("quick", false, "fewer samples and 256 MiB transfers (under two minutes)")
	flag.Parse()
	p, mode := fullPlan, "full"
	if *quick {
		p, mode = quickPlan, "quick"
	}
	// Ctrl-C cancels the measures; the lab is still taken down.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, p, mode); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// run sets the lab up, measures every row, prints the table and takes the
// lab down.
func run(ctx context.Context, p plan, mode string) error {
	progress("%s run: %d connects per way in, %d × %d MiB per transfer", mode, p.connects, p.reps, p.size>>20)
	loadBefore := loadAverage()
	progress("load average before: %s", loadBefore)
	l, err := newLab(ctx)
	defer l.close()
	if err != nil {
		return err
	}
	ciphers, err := l.ciphers(ctx)
	if err != nil {
		return err
	}
	for _, t := range l.targets() {
		progress("%s negotiates %s", t.name, ciphers[t.name])
	}

	rows, err := connectRows(ctx, l, p.connects)
	if err != nil {
		return err
	}
	cold, err := coldConnectRow(ctx, l, p.cold)
	if err != nil {
		return err
	}
	prompt, err := shellPromptRow(ctx, l, p.prompts)
	if err != nil {
		return err
	}
	// Before the transfers, which grow berth's heap with their buffers.
	scale, err := scaleRows(ctx, l, p.idle, 10, rows[0].berth)
	if err != nil {
		return err
	}
	rows = append(rows, cold, prompt)
	rows = append(rows, scale...)
	for _, tr := range transfers {
		r, err := compare(ctx, l, p, tr)
		if err != nil {
			return err
		}
		rows = append(rows, r)
	}

	fmt.Printf("berth benchmarks: %s run in %s on %d CPUs, load average %s at the start\n",
		mode, time.Since(began).Round(time.Second), runtime.NumCPU(), loadBefore)
	fmt.Printf("medians; the peer is sshd unless the row names another\n\n")
	printTable(os.Stdout, rows)
	fmt.Println()
	for _, t := range l.targets() {
		fmt.Printf("%-6s %s\n", t.name+":", ciphers[t.name])
	}
	return nil
}

// loadAverage is the machine's 1-minute load average. The measures share
// the CPUs with whatever else runs (the bench's own processes make at
// least 3 busy ones during a transfer), so a busy start makes them noisy.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}
