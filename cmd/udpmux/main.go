//go:build linux

// Command udpmux is the udpmux daemon: a UDP session multiplexer that serves
// the listeners of a YAML config file with one event loop per core.
//
//	udpmux -c config.yaml            run in the foreground until SIGTERM or SIGINT
//	udpmux validate -c config.yaml   check a config file and exit
//	udpmux status [-o text|json]     a running udpmux's counters (-c or -s names it)
//	udpmux sessions                  a running udpmux's sessions, one a line
//	udpmux drain -c config.yaml      withdraw the VIPs, serve until quiet, exit
//	udpmux backend drain|enable -c config.yaml LISTENER BACKEND
//	                                 stop or resume new sessions to a backend
//	udpmux backend weight -c config.yaml LISTENER BACKEND WEIGHT
//	                                 set its share of new sessions
//	udpmux version                   the version, VCS revision and Go version
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
	"os"
	"os/exec"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/proxy"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command line and returns the process's exit code.
func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 {
		switch args[0] {
		case "validate", "version", "status", "sessions", "drain", "backend":
			cmd, args = args[0], args[1:]
		}
	}
	action := ""
	if cmd == "backend" && len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		action, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("udpmux "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", "", "config file (YAML)")
	sock := fs.String("s", "", "control socket (status, sessions, drain, backend); default: control.socket of -c, or "+defaultControlSocket)
	format := fs.String("o", "text", "status: text (a summary) or json (every counter)")
	sessions := fs.String("sessions", "keep", "backend drain: keep the backend's live sessions until they idle out, or close them")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage:\n  udpmux -c config.yaml\n  udpmux validate -c config.yaml\n"+
			"  udpmux status [-c config.yaml | -s socket] [-o text|json]\n  udpmux sessions [-c config.yaml | -s socket]\n"+
			"  udpmux drain -c config.yaml\n"+
			"  udpmux backend drain [-sessions keep|close] -c config.yaml LISTENER BACKEND\n"+
			"  udpmux backend enable -c config.yaml LISTENER BACKEND\n"+
			"  udpmux backend weight -c config.yaml LISTENER BACKEND WEIGHT\n"+
			"  udpmux version\n"+
			"A drained backend takes no new sessions and keeps its live ones until they idle out\n"+
			"(-sessions close ends them); WEIGHT (0..%d) is its share of new sessions. BACKEND is\n"+
			"ip:port as in the config; an upgrade (SIGUSR2) keeps both.\n", proxy.MaxWeight)
		fs.PrintDefaults()
	}
	// Flags may follow the positional arguments (udpmux backend drain vpn
	// 10.0.0.1:1194 -sessions close): parse what follows each one too.
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		pos, args = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
	if cmd == "backend" {
		if *format != "text" {
			fmt.Fprintln(stderr, "udpmux backend: -o is for udpmux status only")
			return 2
		}
		return backendCommand(action, pos, *path, *sock, *sessions, stdout, stderr, fs.Usage)
	}
	misplaced := ""
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "sessions" {
			misplaced = "-sessions goes with udpmux backend drain only"
		}
	})
	if misplaced != "" {
		fmt.Fprintf(stderr, "udpmux: %s\n", misplaced)
		return 2
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "udpmux: unexpected argument %q\n", pos[0])
		fs.Usage()
		return 2
	}
	if cmd == "version" {
		bi, _ := debug.ReadBuildInfo()
		io.WriteString(stdout, versionText(bi))
		return 0
	}
	if *format != "text" && *format != "json" {
		fmt.Fprintf(stderr, "udpmux %s: -o %q is not one of text, json\n", cmd, *format)
		return 2
	}
	if cmd != "status" && *format != "text" {
		fmt.Fprintf(stderr, "udpmux %s: -o is for udpmux status only\n", cmd)
		return 2
	}
	if cmd == "status" || cmd == "sessions" || cmd == "drain" {
		return query(cmd, *path, *sock, *format == "json", nil, stdout, stderr)
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

const defaultControlSocket = "/run/udpmux/udpmux.sock"

// query asks the running udpmux for its status (as JSON if asJSON, else
// summed up as text) or its sessions, to drain, or to change a backend
// (req, for cmd backend).
func query(cmd, path, sock string, asJSON bool, req *backendRequest, stdout, stderr io.Writer) int {
	if cmd == "drain" && path == "" {
		fmt.Fprintln(stderr, "udpmux drain: -c config.yaml is required: a drain withdraws what its bgp section announces")
		return 2
	}
	if path != "" {
		cfg, err := loadConfig(path)
		if err != nil {
			fmt.Fprintf(stderr, "udpmux: config: %v\n", err)
			return 1
		}
		if cmd == "drain" && cfg.fleet == nil {
			fmt.Fprintf(stderr, "udpmux drain: %s has no bgp section: there is nothing to withdraw; stop udpmux with SIGTERM\n", path)
			return 1
		}
		if req != nil {
			if err := req.check(cfg); err != nil {
				fmt.Fprintf(stderr, "udpmux backend %s: %s: %v\n", req.Action, path, err)
				return 1
			}
		}
		if sock == "" {
			sock = cfg.controlSocket
		}
	}
	if sock == "" {
		sock = defaultControlSocket
	}
	var payload []byte
	if req != nil {
		payload, _ = json.Marshal(req)
	}
	t := map[string]handoff.Type{"status": handoff.TypeStatus, "sessions": handoff.TypeSessionList, "drain": handoff.TypeDrain,
		"backend": handoff.TypeBackend}[cmd]
	var err error
	if cmd == "status" && !asJSON {
		err = printStatusText(sock, stdout)
	} else {
		err = request(sock, t, payload, stdout)
	}
	if err != nil {
		name := cmd
		if req != nil {
			name += " " + req.Action
		}
		fmt.Fprintf(stderr, "udpmux %s: %v\n", name, err)
		return 1
	}
	return 0
}

// backendCommand runs `udpmux backend ACTION`, with the positional
// arguments pos and -sessions' value sessions.
func backendCommand(action string, pos []string, path, sock, sessions string, stdout, stderr io.Writer, usage func()) int {
	req, err := parseBackendArgs(action, pos, sessions)
	if err != nil {
		fmt.Fprintf(stderr, "udpmux backend: %v\n", err)
		usage()
		return 2
	}
	if path == "" && sock == "" {
		fmt.Fprintf(stderr, "udpmux backend %s: -c config.yaml is required (or -s socket): it names the control socket and the listener's backends\n", action)
		return 2
	}
	return query("backend", path, sock, false, &req, stdout, stderr)
}

// adoptActivated gives each listener the sockets systemd passed for its
// address (socket activation, see configs/udpmux.socket), so that it serves
// them instead of binding its own.
func adoptActivated(listeners []mux.ListenerConfig, log *slog.Logger) error {
	for i := range listeners {
		lc := &listeners[i]
		socks, err := mux.ActivationSockets(lc.Address.String())
		if err != nil {
			return fmt.Errorf("listener %s: socket activation: %w", lc.Name, err)
		}
		if len(socks) > 0 {
			lc.Sockets = socks
			log.Info("serving the sockets systemd passed", "listener", lc.Name, "address", lc.Address.String(), "sockets", len(socks))
		}
	}
	return nil
}

// closeActivated closes the listeners' copies of systemd's sockets: the
// server serves duplicates.
func closeActivated(listeners []mux.ListenerConfig) {
	for i := range listeners {
		for _, f := range listeners[i].Sockets {
			f.Close()
		}
		listeners[i].Sockets = nil
	}
}

// serve runs the server until SIGTERM or SIGINT, or until a successor has
// taken over. If another udpmux answers on the control socket, this process
// takes its sockets and sessions instead of opening new ones.
func serve(cfg *config, stderr io.Writer) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		return fmt.Errorf("log.level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	var handler slog.Handler = slog.NewTextHandler(stderr, opts)
	if cfg.logJSON {
		handler = slog.NewJSONHandler(stderr, opts)
	}
	log := slog.New(handler)
	cfg.mux.Logger = log
	// The proxies, built with the config before the log's format was known,
	// log through the default logger: make it this one.
	slog.SetDefault(log)
	var sessions *sessionLog
	if cfg.sessionLog != nil {
		sessions = newSessionLog(*cfg.sessionLog, cfg.mux.Listeners, log)
		cfg.mux.SessionEnded = sessions.ended
		go sessions.run()
		// After Serve, when no session can end any more; on every return
		// before it, nothing has ended.
		defer sessions.close()
	}
	// The binary as it is on disk now, for SIGUSR2: resolved before anyone
	// replaces it.
	exe, exeErr := os.Executable()

	start := time.Now()
	inh, err := takeOver(cfg, log)
	if err != nil {
		return err
	}
	var ln *net.UnixListener
	if inh != nil {
		if ln, err = inheritControl(inh); err == nil {
			err = reserveDescriptors(cfg, inh.Workers(), log)
		}
		if err != nil {
			if ln != nil {
				ln.Close()
			}
			inh.Abort(err)
			return err
		}
		cfg.mux.Inherit = inh
	} else if err := adoptActivated(cfg.mux.Listeners, log); err != nil {
		return err
	}
	srv, err := mux.New(cfg.mux) // with an Inheritance, takes over
	closeActivated(cfg.mux.Listeners)
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		return err
	}
	if inh == nil {
		if err := reserveDescriptors(cfg, srv.Workers(), log); err != nil {
			srv.Close()
			return err
		}
		ln, err = listenControl(cfg.controlSocket)
		if err != nil && errors.Is(err, os.ErrPermission) {
			// Serving comes first: a user who may not create the control
			// socket still gets the listeners, told what is missing and why.
			log.Warn("control socket unavailable; udpmux status, udpmux sessions and upgrades are off — set control.socket to a path this user may create",
				"err", err)
			ln, err = nil, nil
		}
		if err != nil {
			srv.Close()
			return err
		}
	} else {
		r := srv.Restored()
		log.Info("took over from predecessor", "sessions_restored", r.Restored, "sessions_dropped", r.Dropped,
			"sessions_relayed", r.Relayed, "sessions_updated", r.Updated, "sessions_ended", r.Ended, "took", time.Since(start))
	}
	// ctx ends Serve: on SIGTERM or SIGINT, after the VIPs are withdrawn,
	// or when a drain is over.
	ctx, stopServing := context.WithCancel(context.Background())
	defer stopServing()
	ctl := &control{ln: ln, srv: srv, cfg: cfg, log: log, started: start, stopServing: stopServing, handedOver: make(chan struct{}), sessions: sessions}
	if cfg.fleet != nil {
		if ctl.ann, err = startAnnouncer(cfg, inh != nil, log); err != nil {
			if ln != nil {
				ln.Close()
			}
			srv.Close()
			return err
		}
		go ctl.ann.run(ctx)
	}
	if ln != nil {
		go ctl.serve()
	}
	for _, lc := range cfg.mux.Listeners {
		if h, ok := lc.Handler.(*proxy.Handler); ok {
			go h.RunChecks(ctx)
		}
	}
	signals, stopSignals := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stopSignals()
	go func() {
		select {
		case <-signals.Done():
			if ctl.ann != nil {
				ctl.ann.shutdown() // before the sockets close
			}
			stopServing()
		case <-ctx.Done():
		}
	}()
	if cfg.metricsAddress != "" {
		if err := serveMetrics(ctx, cfg.metricsAddress, cfg, srv, ctl.ann, sessions, log); err != nil {
			log.Error("metrics disabled", "err", err)
		}
	}
	upgrade := make(chan os.Signal, 1)
	signal.Notify(upgrade, syscall.SIGUSR2)
	defer signal.Stop(upgrade)
	go func() {
		for range upgrade {
			if ctl.drained.Load() {
				log.Warn("SIGUSR2 ignored: this process has handed over and only drains; signal its successor")
				continue
			}
			if ctl.draining.Load() {
				log.Warn("SIGUSR2 ignored: this process drains (udpmux drain) and will exit; a successor would announce the VIPs again")
				continue
			}
			if exeErr != nil {
				log.Error("cannot upgrade: own executable unknown", "err", exeErr)
				continue
			}
			if ln == nil {
				// A successor would find no one to take over from and
				// start a second server beside this one.
				log.Error("SIGUSR2 ignored: upgrades need the control socket (control.socket)")
				continue
			}
			startSuccessor(exe, log)
		}
	}()
	for i, lc := range cfg.mux.Listeners {
		log.Info("listening", "listener", lc.Name, "address", srv.Addr(i).String(),
			"dissector", fmt.Sprintf("%T", lc.Dissector), "idle_timeout", lc.IdleTimeout)
	}
	daemon.SdNotify(false, fmt.Sprintf("MAINPID=%d\nREADY=1", os.Getpid()))
	err = srv.Serve(ctx)
	handedOff := errors.Is(err, mux.ErrHandedOff)
	if err != nil && !handedOff && !errors.Is(err, context.Canceled) {
		return err
	}
	if ctl.ann != nil {
		if handedOff {
			<-ctl.handedOver
		} else {
			ctl.ann.shutdown()
		}
	}
	if ln != nil {
		// After a handoff the successor owns the control socket's file.
		ln.SetUnlinkOnClose(!handedOff)
		ln.Close()
	}
	st := srv.Stats()
	for _, ls := range st.Listeners {
		log.Info("stopped", "listener", ls.Name, "rx", ls.RxDatagrams, "tx", ls.TxDatagrams,
			"sessions_opened", ls.SessionsOpened, "kernel_drops", ls.KernelDrops, "truncated", ls.Truncated,
			"forward_drops", ls.ForwardDrops, "send_drops", ls.SendDrops, "send_errors", ls.SendErrors,
			"relayed", ls.Relayed, "relay_drops", ls.RelayDrops)
	}
	if sessions != nil {
		// The sessions the shutdown ended are queued by now: their lines
		// first, then what the log wrote and dropped in all.
		sessions.close()
		sl := sessions.status()
		log.Info("session log stopped", "lines", sl.Lines, "dropped_rate", sl.Dropped[droppedRate], "dropped_queue_full", sl.Dropped[droppedQueueFull])
	}
	if ctl.drained.Load() {
		log.Info("drained: no session left for this process; exiting")
	}
	return nil
}

// startSuccessor starts the binary with this process's arguments; the new
// process finds this one on the control socket and takes over.
func startSuccessor(exe string, log *slog.Logger) {
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		log.Error("cannot start successor", "exe", exe, "err", err)
		return
	}
	log.Info("started successor", "pid", cmd.Process.Pid, "exe", exe)
	go cmd.Wait()
}
