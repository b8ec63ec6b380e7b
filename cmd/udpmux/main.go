// Command udpmux is the udpmux daemon: a UDP session multiplexer that serves
// the listeners of a YAML config file with one event loop per core.
//
//	udpmux -c config.yaml            run in the foreground until SIGTERM or SIGINT
//	udpmux validate -c config.yaml   check a config file and exit
//	udpmux version                   print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/udpmux/udpmux/mux"
)

// version is set at build time with -ldflags "-X main.version=…"; otherwise
// the module version from the build info is used.
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command line and returns the process's exit code.
func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && (args[0] == "validate" || args[0] == "version") {
		cmd, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("udpmux "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", "", "config file (YAML)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage:\n  udpmux -c config.yaml\n  udpmux validate -c config.yaml\n  udpmux version\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "udpmux: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	if cmd == "version" {
		fmt.Fprintln(stdout, "udpmux", buildVersion())
		return 0
	}
	if *path == "" {
		fmt.Fprintln(stderr, "udpmux: -c config.yaml is required")
		fs.Usage()
		return 2
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		fmt.Fprintf(stderr, "udpmux: config: %v\n", err)
		return 1
	}
	if cmd == "validate" {
		fmt.Fprintf(stdout, "%s: ok (%d listeners)\n", *path, len(cfg.mux.Listeners))
		return 0
	}
	if err := serve(cfg, stderr); err != nil {
		fmt.Fprintf(stderr, "udpmux: %v\n", err)
		return 1
	}
	return 0
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// serve runs the server until SIGTERM or SIGINT.
func serve(cfg *config, stderr io.Writer) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		return fmt.Errorf("log.level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg.mux.Logger = log
	srv, err := mux.New(cfg.mux)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	for i, lc := range cfg.mux.Listeners {
		log.Info("listening", "listener", lc.Name, "address", srv.Addr(i).String(),
			"dissector", fmt.Sprintf("%T", lc.Dissector), "idle_timeout", lc.IdleTimeout)
	}
	if err := srv.Serve(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	st := srv.Stats()
	for _, ls := range st.Listeners {
		log.Info("stopped", "listener", ls.Name, "rx", ls.RxDatagrams, "tx", ls.TxDatagrams,
			"sessions_opened", ls.SessionsOpened, "kernel_drops", ls.KernelDrops, "truncated", ls.Truncated)
	}
	return nil
}
