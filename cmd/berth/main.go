// Command berth is the SSH gateway that puts each user of a shared GPU
// server into their own persistent container.
//
//	berth serve --config config.yaml
//	berth check-config config.yaml
//	berth version
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"golang.org/x/crypto/ssh"
	"golang.org/x/term"

	"github.com/berth-ssh/berth/audit"
	"github.com/berth-ssh/berth/config"
	"github.com/berth-ssh/berth/containers"
	"github.com/berth-ssh/berth/gateway"
	"github.com/berth-ssh/berth/gpus"
	"github.com/berth-ssh/berth/keys"
	"github.com/berth-ssh/berth/metrics"
	"github.com/berth-ssh/berth/monitor"
	"github.com/berth-ssh/berth/sessions"
)

// auditKeep is how many rotated audit logs berth keeps.
const auditKeep = 5

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes of the berth command.
const (
	exitOK     = 0
	exitFailed = 1 // berth ran and failed
	exitUsage  = 2 // bad arguments or a bad config file
)

const usage = `usage:
  berth serve [--config FILE] [--log-level L] [--log-format text|json|auto]
                                 run the gateway (default config: config.yaml)
  berth check-config FILE        validate a config file
  berth gpus --local [--json]    this host's GPUs, read through NVML (no Docker needed)
  berth keys add [--config FILE] USER KEYFILE
                                 add a public key (a .pub file, or - for stdin) to USER's
                                 file in keys_dir; it counts at the next login
  berth recordings [--config FILE] [--json] [USER]
                                 list recorded sessions (record_sessions), oldest first;
                                 play one with: asciinema play PATH
  berth version                  print berth's version`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.SetOutput(stderr)
		path := fs.String("config", "config.yaml", "config file")
		level := fs.String("log-level", "info", "debug, info, warn or error")
		format := fs.String("log-format", "auto", "text, json, or auto: text on a terminal, JSON otherwise")
		if err := fs.Parse(args[1:]); err != nil {
			return exitUsage
		}
		var lvl slog.Level
		if err := lvl.UnmarshalText([]byte(*level)); err != nil {
			fmt.Fprintf(stderr, "berth: --log-level: %v\n", err)
			return exitUsage
		}
		cfg, ok := loadConfig(*path, stderr)
		if !ok {
			return exitUsage
		}
		log, err := newLogger(stderr, *format, lvl)
		if err != nil {
			fmt.Fprintf(stderr, "berth: --log-format: %v\n", err)
			return exitUsage
		}
		if err := serve(cfg, log); err != nil {
			log.Error("berth stopped", "err", err)
			return exitFailed
		}
		return exitOK
	case "check-config":
		if len(args) != 2 {
			fmt.Fprintln(stderr, usage)
			return exitUsage
		}
		if _, ok := loadConfig(args[1], stderr); !ok {
			return exitUsage
		}
		fmt.Fprintf(stdout, "%s: ok\n", args[1])
		return exitOK
	case "gpus":
		fs := flag.NewFlagSet("gpus", flag.ContinueOnError)
		fs.SetOutput(stderr)
		local := fs.Bool("local", false, "read this host's GPUs through NVML")
		asJSON := fs.Bool("json", false, "print JSON")
		if err := fs.Parse(args[1:]); err != nil || !*local {
			fmt.Fprintln(stderr, usage)
			return exitUsage
		}
		inv := gpus.Open(nvml.New(), slog.New(slog.NewTextHandler(stderr, nil)))
		defer inv.Close()
		snap, err := inv.Read()
		if err != nil {
			fmt.Fprintf(stderr, "berth: %v\n", err)
			return exitFailed
		}
		if *asJSON {
			writeJSON(stdout, snap)
		} else {
			gpus.WriteTable(stdout, snap, nil)
		}
		return exitOK
	case "keys":
		return keysCommand(args[1:], stdout, stderr)
	case "recordings":
		return recordingsCommand(args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintf(stdout, "berth %s\n", version)
		return exitOK
	default:
		fmt.Fprintln(stderr, usage)
		return exitUsage
	}
}

// newLogger makes berth's logger: text for a person at a terminal, JSON
// lines for journald and log shippers.
func newLogger(w io.Writer, format string, level slog.Level) (*slog.Logger, error) {
	if format == "auto" {
		format = "json"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			format = "text"
		}
	}
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("%q is not text, json or auto", format)
}

// serve wires berth's parts together and runs the gateway until SIGTERM
// or SIGINT, then drains sessions for the configured grace period.
// Containers keep running.
func serve(cfg *config.Config, log *slog.Logger) error {
	if cfg.AuditLog != "off" {
		w, err := audit.Open(cfg.AuditLog, cfg.AuditLogBytes(), auditKeep)
		if err != nil {
			return err
		}
		defer w.Close()
		log = slog.New(audit.Tee(log.Handler(), w))
	}
	inv := gpus.Open(nvml.New(), log)
	defer inv.Close()
	if snap, err := inv.Read(); err != nil {
		log.Warn("reading the GPUs", "err", err)
	} else if snap.Available {
		log.Info("GPUs found", "count", len(snap.GPUs), "driver", snap.Driver, "cuda", snap.CUDA,
			"policy", cfg.GPUs, "mode", cfg.GPUMode)
	}
	met := metrics.New()
	m, err := containers.New(cfg, inv, met, log)
	if err != nil {
		return err
	}
	defer m.Close()
	met.WatchGPUs(m.GPUReport)
	book := keys.New(cfg)
	gw, err := gateway.New(cfg, book, m, met, log)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	if cfg.HTTPListen != "" {
		hl, err := net.Listen("tcp", cfg.HTTPListen)
		if err != nil {
			return fmt.Errorf("http_listen: %w", err)
		}
		hs := &http.Server{Handler: monitor.Handler(m, book, met, log), ReadHeaderTimeout: 5 * time.Second}
		go hs.Serve(hl)
		defer hs.Close()
		log.Info("health and metrics endpoint listening", "addr", hl.Addr().String())
	}
	log.Info("berth listening", "addr", l.Addr().String(), "version", version, "users", len(cfg.Users))

	served := make(chan error, 1)
	go func() { served <- gw.Serve(l) }()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-served:
		return err
	case sig := <-stop:
		grace := time.Duration(cfg.ShutdownGrace)
		log.Info("shutting down: no new connections; sessions drain", "signal", sig.String(), "grace", grace)
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		if err := gw.Shutdown(ctx); errors.Is(err, context.DeadlineExceeded) {
			log.Info("grace period over: remaining sessions hung up")
		}
		return nil
	}
}

// keysCommand is `berth keys add`: it appends keys to keys_dir/USER, so an
// operator never edits YAML to let someone in.
func keysCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("keys add", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "config.yaml", "config file")
	if len(args) == 0 || args[0] != "add" || fs.Parse(args[1:]) != nil || fs.NArg() != 2 {
		fmt.Fprintln(stderr, usage)
		return exitUsage
	}
	cfg, ok := loadConfig(*path, stderr)
	if !ok {
		return exitUsage
	}
	user, file := fs.Arg(0), fs.Arg(1)
	var data []byte
	var err error
	if file == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(file)
	}
	if err != nil {
		fmt.Fprintf(stderr, "berth: %v\n", err)
		return exitFailed
	}
	book := keys.New(cfg)
	added := 0
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		e, err := book.Add(user, line)
		if err != nil {
			fmt.Fprintf(stderr, "berth: keys add: %v\n", err)
			return exitFailed
		}
		added++
		fmt.Fprintf(stdout, "added %s for %s to %s; it counts at the next login\n", ssh.FingerprintSHA256(e.Key), user, e.Source)
	}
	if added == 0 {
		fmt.Fprintf(stderr, "berth: keys add: %s holds no key\n", file)
		return exitFailed
	}
	return exitOK
}

// recordingsCommand is `berth recordings`: the recorded sessions under
// state_dir, for an operator to find one and play it.
func recordingsCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("recordings", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "config.yaml", "config file")
	asJSON := fs.Bool("json", false, "print JSON")
	if fs.Parse(args) != nil || fs.NArg() > 1 {
		fmt.Fprintln(stderr, usage)
		return exitUsage
	}
	cfg, ok := loadConfig(*path, stderr)
	if !ok {
		return exitUsage
	}
	user := fs.Arg(0)
	if user != "" {
		if _, ok := cfg.User(user); !ok {
			fmt.Fprintf(stderr, "berth: recordings: %q is not a configured user\n", user)
			return exitUsage
		}
	}
	recs, err := sessions.Recordings(cfg.RecordingsDir(), user)
	if err != nil {
		fmt.Fprintf(stderr, "berth: recordings: %v\n", err)
		return exitFailed
	}
	if *asJSON {
		writeJSON(stdout, recs)
		return exitOK
	}
	if len(recs) == 0 {
		fmt.Fprintf(stdout, "no recordings under %s\n", cfg.RecordingsDir())
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "USER\tSTARTED\tLENGTH\tSIZE\tTITLE\tFILE")
	for _, r := range recs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", r.User, r.Started.Format("2006-01-02 15:04:05"),
			r.Duration.Round(time.Second), r.Size, r.Title, r.Path)
	}
	tw.Flush()
	return exitOK
}

// writeJSON prints v as indented JSON, as the --json flags do.
func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// loadConfig loads the config file, or says why not on stderr.
func loadConfig(path string, stderr io.Writer) (*config.Config, bool) {
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintf(stderr, "berth: %v\n", err)
		return nil, false
	}
	return cfg, true
}
