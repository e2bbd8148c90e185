package agent

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// Paths inside every user container. berth bind-mounts the agent binary
// read-only at BinaryPath and a root-only host directory at RunDir.
const (
	BinaryPath = "/.berth/bin/berth-agent"
	RunDir     = "/.berth/run"
	SocketName = "agent.sock"
	// ProvisionLog is the start script's output, in RunDir.
	ProvisionLog = "provision.log"
	// StartScript is run as root in the background once the account
	// exists, when the image has it. The default environment uses it.
	StartScript = "/usr/local/lib/berth/start.sh"
)

// Main is berth-agent's entry point. It returns the process's exit code.
func Main(args []string) int {
	if len(args) > 0 && args[0] != "init" {
		if code := runHelper(args[0], args[1:]); code != 2 {
			return code
		}
	}
	if len(args) < 1 || args[0] != "init" {
		fmt.Fprintln(os.Stderr, "usage: berth-agent init --user NAME --uid N --gid N [--sudo]")
		return 2
	}
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	var a Account
	fs.StringVar(&a.Name, "user", "", "the account's name")
	fs.IntVar(&a.UID, "uid", 0, "the account's uid")
	fs.IntVar(&a.GID, "gid", 0, "the account's gid")
	fs.BoolVar(&a.Sudo, "sudo", false, "give the account passwordless sudo")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	logger := log.New(os.Stderr, "berth-agent: ", log.LstdFlags)
	if a.Name == "" || a.UID <= 0 || a.GID <= 0 {
		logger.Print("--user, --uid and --gid are required")
		return 2
	}
	if err := run(a, logger); err != nil {
		logger.Print(err)
		return 1
	}
	return 0
}

func run(a Account, logger *log.Logger) error {
	env := os.Environ()
	shell, err := Provision(a, env)
	if err != nil {
		return fmt.Errorf("provision %s: %w", a.Name, err)
	}
	runStartScript(logger)

	sock := filepath.Join(RunDir, SocketName)
	os.Remove(sock)
	// The socket must never be reachable by the user, whatever the umask.
	old := syscall.Umask(0o077)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &Server{Account: a, Shell: shell, Env: env, Log: logger}
	logger.Printf("ready: %s (uid %d, gid %d, shell %s)", a.Name, a.UID, a.GID, shell)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	select {
	case sig := <-stop:
		logger.Printf("%v: stopping the container's processes", sig)
		l.Close()
		os.Remove(sock)
		srv.Shutdown(5 * time.Second)
		return nil
	case err := <-served:
		return err
	}
}

// runStartScript starts the image's start script, if it has one, logging
// to the provisioning log. It never blocks the shell.
func runStartScript(logger *log.Logger) {
	if _, err := os.Stat(StartScript); err != nil {
		return
	}
	out, err := os.OpenFile(filepath.Join(RunDir, ProvisionLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		logger.Printf("start script not run: %v", err)
		return
	}
	fmt.Fprintf(out, "--- %s start script\n", time.Now().Format(time.RFC3339))
	cmd := exec.Command("/bin/sh", StartScript)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		logger.Printf("start script: %v", err)
		out.Close()
		return
	}
	go func() {
		defer out.Close()
		if err := cmd.Wait(); err != nil {
			fmt.Fprintf(out, "--- start script failed: %v\n", err)
			return
		}
		fmt.Fprintln(out, "--- start script done")
	}()
}
