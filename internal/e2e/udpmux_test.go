//go:build linux

package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/fastpath"
	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/internal/netlab"
	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/proxy"
)

// daemonPkg is the import path of the udpmux daemon.
const daemonPkg = "github.com/udpmux/udpmux/cmd/udpmux"

var (
	buildOnce sync.Once
	buildDir  string // temporary directory holding the built daemon
	buildBin  string // path of the built daemon, or "" if it did not build
	buildOut  string // the go command's output when the build failed
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// goTool returns the go command: from PATH, else from GOROOT.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// udpmuxBinary builds the daemon once per test binary and returns its path;
// it fails the test if the daemon does not build. The daemon is built with
// -race when the tests are (or with UDPMUX_E2E_RACE=1), so that `go test
// -race` also checks the daemon for data races under real traffic (see
// daemon.Stop). UDPMUX_E2E_BIN=/path/to/udpmux uses that binary instead.
func udpmuxBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if bin := os.Getenv("UDPMUX_E2E_BIN"); bin != "" {
			if _, err := os.Stat(bin); err != nil {
				buildOut = fmt.Sprintf("UDPMUX_E2E_BIN: %v", err)
				return
			}
			buildBin = bin
			return
		}
		dir, err := os.MkdirTemp("", "udpmux-e2e-")
		if err != nil {
			buildOut = err.Error()
			return
		}
		buildDir = dir
		bin := filepath.Join(dir, "udpmux")
		args := []string{"build", "-o", bin}
		if raceEnabled || os.Getenv("UDPMUX_E2E_RACE") == "1" {
			args = append(args, "-race")
		}
		args = append(args, daemonPkg)
		cmd := exec.Command(goTool(), args...)
		cmd.Dir = sourceDir() // inside the module even if the test binary runs elsewhere
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildOut = fmt.Sprintf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			return
		}
		buildBin = bin
	})
	if buildBin == "" {
		t.Fatalf("building the udpmux daemon failed:\n%s", buildOut)
	}
	return buildBin
}

// raceQuickExit returns the environment for a short udpmux command (validate,
// drain): built with -race, it would sleep a second before it exits, the
// race detector's wait for reports from goroutines still running, of which
// such a command has none.
func raceQuickExit() []string { return append(os.Environ(), "GORACE=atexit_sleep_ms=0") }

// sourceDir returns the directory of this source file when it is known (an
// absolute path, i.e. not built with -trimpath), else "" (the working
// directory, which go test sets to the package's directory).
func sourceDir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok || !filepath.IsAbs(file) {
		return ""
	}
	if _, err := os.Stat(file); err != nil {
		return ""
	}
	return filepath.Dir(file)
}

// daemon is a udpmux process running in a namespace.
type daemon struct {
	Config string // path of its configuration file
	Log    string // path of its combined stdout and stderr
	proc   *netlab.Process

	// pid is the serving process once the daemon has been upgraded (see
	// Upgrade), 0 while the process started here serves. Every
	// generation stays in the first one's process group, which the lab
	// stops at teardown.
	pid int
}

// PID returns the id of the process serving now.
func (d *daemon) PID() int {
	if d.pid != 0 {
		return d.pid
	}
	return d.proc.Cmd.Process.Pid
}

// handlerRejected reports whether a daemon's output says that it does not
// know the handler named handler (e.g. `listeners[0].handler: "proxy" is not
// one of echo, discard`): the test then fails saying that the daemon lacks
// the handler. Other complaints that merely mention the handler do not
// count.
func handlerRejected(out, handler string) bool {
	return valueRejected(out, "handler", handler)
}

// valueRejected reports whether a daemon's output says that key (a config
// key such as handler or dissector) may not have the value name.
func valueRejected(out, key, name string) bool {
	h := `"?` + regexp.QuoteMeta(name) + `"?`
	k := regexp.QuoteMeta(key)
	const bad = `(is not one of|is unknown|unknown|unsupported|not supported|not implemented|not available|invalid|unrecognized)`
	re := regexp.MustCompile(`(?i)` +
		k + `\W{0,5}` + h + `\W{0,3}` + bad + // handler: "proxy" is not one of ...
		`|(unknown|unsupported|invalid|unrecognized) ` + k + `\W{0,5}` + h + // unknown handler "proxy"
		`|` + k + `\W{0,5}` + bad + `( value)?\W{0,5}` + h) // handler: invalid value "proxy"
	return re.MatchString(out)
}

// dissectorRejected reports whether a daemon's output says that it does not
// know the dissector named name (`listeners[0].dissector: "wireguard" is
// not one of flow, noop`), or not the listener's options map of the same
// name (`listeners[0] has invalid keys: wireguard`, for a listener with a
// `wireguard: {private_key: ...}` map): the test then fails saying that the
// daemon lacks the dissector. Complaints about the map's contents
// (`listeners[0].wireguard.private_key: ...`) or other complaints that
// merely mention the dissector do not count.
func dissectorRejected(out, name string) bool {
	if valueRejected(out, "dissector", name) {
		return true
	}
	n := regexp.QuoteMeta(name)
	re := regexp.MustCompile(`(?im)` +
		`\]\s+has invalid keys?:[ \w,\[\].]*?\b` + n + `(,|\s*$)` + // listeners[0] has invalid keys: wireguard
		`|(unknown|invalid|unsupported|unrecognized) (key|field|option)s?\W{0,3}(listeners\[\d+\]\.)?` + n + `\b[^.]`) // unknown key "wireguard"
	return re.MatchString(out)
}

// startDaemon writes config to a file, checks it with `udpmux validate -c
// FILE`, runs `udpmux -c FILE` inside ns, and waits until a UDP socket is
// bound to port in ns. A rejected config or an early exit fails the test,
// saying so first if the daemon does not know the handler named handler.
func startDaemon(t testing.TB, lab *netlab.Lab, ns *netlab.Namespace, dir, config, handler string, port uint16) *daemon {
	t.Helper()
	return startDaemonWith(t, lab, ns, dir, config, port, func(out string) string {
		if handlerRejected(out, handler) {
			return fmt.Sprintf("udpmux %s handler not available", handler)
		}
		return ""
	})
}

// startDaemonWith is startDaemon with another test of what the daemon lacks:
// unavailable gets the daemon's output when it rejects the config and
// returns what the daemon lacks ("" if nothing in particular), which the
// test's failure then begins with.
func startDaemonWith(t testing.TB, lab *netlab.Lab, ns *netlab.Namespace, dir, config string, port uint16, unavailable func(out string) string) *daemon {
	t.Helper()
	bin := udpmuxBinary(t)
	d := &daemon{Config: filepath.Join(dir, "udpmux.yaml"), Log: filepath.Join(dir, "udpmux.log")}
	if !strings.Contains(config, "\ncontrol:") {
		// A control socket of the test's own: the default path is shared by
		// every udpmux on the machine, and a second one would take over.
		config += fmt.Sprintf("control:\n  socket: %q\n", filepath.Join(dir, "ctl.sock"))
	}
	if err := os.WriteFile(d.Config, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	// In the daemon's namespace: validate checks the host it runs on too
	// (fast_path: IPv4 forwarding there).
	validate := ns.Command(bin, "validate", "-c", d.Config)
	validate.Env = raceQuickExit()
	if out, err := validate.CombinedOutput(); err != nil {
		if why := unavailable(string(out)); why != "" {
			t.Fatalf("%s: `udpmux validate` rejected the config: %v\n%s", why, err, out)
		}
		t.Fatalf("udpmux validate rejected the test's config: %v\nconfig:\n%s\noutput:\n%s", err, config, out)
	}
	logf, err := os.Create(d.Log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	cmd := ns.Command(bin, "-c", d.Config)
	cmd.Stdout, cmd.Stderr = logf, logf
	d.proc = lab.Start(cmd)

	deadline := time.Now().Add(10 * time.Second)
	for {
		if d.proc.Exited() {
			err := d.proc.Wait()
			out, _ := os.ReadFile(d.Log)
			if why := unavailable(string(out)); why != "" {
				t.Fatalf("%s: the daemon rejected its config: %v\n%s", why, err, tail(string(out), 4000))
			}
			t.Fatalf("udpmux exited before binding UDP port %d: %v\nconfig:\n%s\noutput:\n%s", port, err, config, tail(string(out), 8000))
		}
		bound, err := udpPortBound(ns, port)
		if err != nil {
			t.Fatal(err)
		}
		if bound {
			return d
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(d.Log)
			t.Fatalf("udpmux did not bind UDP port %d within 10s\noutput:\n%s", port, tail(string(out), 8000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Running reports whether the daemon is still running.
func (d *daemon) Running() bool {
	if d.pid != 0 {
		return processAlive(d.pid)
	}
	return !d.proc.Exited()
}

// daemonStopGrace bounds the daemon's shutdown after SIGTERM.
const daemonStopGrace = 5 * time.Second

// Stop sends SIGTERM and checks a clean shutdown: the daemon must have been
// running until now, must exit (with status 0, where this process can see
// it) within daemonStopGrace, and its output must show no panic and no data
// race report. After upgrades, the first generation must have exited with
// status 0 and the serving one, which is not this process's child, gets the
// SIGTERM.
func (d *daemon) Stop(t testing.TB) {
	t.Helper()
	if !d.Running() {
		out, _ := os.ReadFile(d.Log)
		t.Errorf("udpmux (pid %d) exited during the test: %v\n%s", d.PID(), d.exitStatus(), tail(string(out), 8000))
		return
	}
	start := time.Now()
	if d.pid == 0 {
		err := d.proc.Stop(daemonStopGrace)
		switch {
		case time.Since(start) >= daemonStopGrace:
			t.Errorf("udpmux did not exit within %v of SIGTERM (killed)", daemonStopGrace)
		case err != nil:
			t.Errorf("udpmux exited with %v after SIGTERM; want status 0", err)
		}
	} else {
		if err := d.proc.Wait(); err != nil {
			t.Errorf("udpmux's first generation (pid %d) exited with %v after handing over; want status 0", d.proc.Cmd.Process.Pid, err)
		}
		syscall.Kill(d.pid, syscall.SIGTERM)
		for processAlive(d.pid) {
			if time.Since(start) >= daemonStopGrace {
				t.Errorf("udpmux (pid %d) did not exit within %v of SIGTERM (killing its group)", d.pid, daemonStopGrace)
				d.proc.Stop(0)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	out, _ := os.ReadFile(d.Log)
	for _, bad := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
		if strings.Contains(string(out), bad) {
			t.Errorf("udpmux output contains %q", bad)
		}
	}
	if t.Failed() {
		t.Logf("udpmux output:\n%s", tail(string(out), 16000))
	}
}

// exitStatus describes how the serving process ended, as far as this
// process can know.
func (d *daemon) exitStatus() string {
	if d.pid == 0 {
		return fmt.Sprint(d.proc.Wait())
	}
	return "status unknown: not a child of the test"
}

// controlStatus is the part of `udpmux status -o json` the tests use.
type controlStatus struct {
	PID      int `json:"pid"`
	Restored int `json:"sessions_restored"`
	// mux.Stats are the engine's counters: Sessions is the sessions alive
	// now, Listeners each listener's counters.
	mux.Stats
	// Proxies are the proxy listeners' own counters, by listener name.
	Proxies map[string]proxy.Stats `json:"proxies"`
	// FastPath is the fast path's table (fast_path: nftables), nil
	// without one.
	FastPath *fastpath.Stats `json:"fast_path"`
}

// recoveryCounters renders a proxy listener's recovery counters, which the
// recovery tests log, under their keys in `udpmux status -o json`.
func recoveryCounters(p proxy.Stats) string {
	return fmt.Sprintf("recovered %d, recovery_probes %d, recovery_refused %d, recovery_failed %d, recovering %d, recovery_sockets %d",
		p.Recovered, p.RecoveryProbes, p.RecoveryRefused, p.RecoveryFailed, p.Recovering, p.RecoverySockets)
}

// sessionRow is one line of `udpmux sessions`.
type sessionRow struct {
	Listener string
	Peer     netip.AddrPort
	// Tx is the datagrams the session sent to its peer (TX_PKTS).
	Tx uint64
	// Backend and Upstream are a proxy session's backend and the source
	// address of its socket there; both invalid for a session that is
	// still recovering (no backend has proved it has it).
	Backend, Upstream netip.AddrPort
	// Kernel says the kernel forwards the session's data (PATH kernel).
	Kernel bool
	// Keys are the keys the session is found by, its anchor first, as
	// flowtable.Key.String renders them:
	// "0/198.18.0.2:1194-198.18.0.10:40000", "0/cid:...", "0/id:2:000001".
	Keys []string
	// Line is the line as udpmux printed it, for messages.
	Line string
}

// hasCID reports whether the session is found by a connection ID, such
// as an OpenVPN client's session ID.
func (r sessionRow) hasCID() bool {
	for _, k := range r.Keys {
		if strings.Contains(k, "/cid:") {
			return true
		}
	}
	return false
}

// parseSessionList parses `udpmux sessions`: a header line, then per
// session LISTENER PEER LOCAL LOOP IDLE RX_PKTS RX_BYTES TX_PKTS TX_BYTES
// BACKEND UPSTREAM PATH KEYS, where a recovering session's BACKEND reads
// "(recovering)" and its UPSTREAM "-".
func parseSessionList(out string) ([]sessionRow, error) {
	var rows []sessionRow
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] == "LISTENER" {
			continue
		}
		if len(f) < 11 {
			return nil, fmt.Errorf("udpmux sessions: short line %q", line)
		}
		peer, err := netip.ParseAddrPort(f[1])
		if err != nil {
			return nil, fmt.Errorf("udpmux sessions: peer in %q: %v", line, err)
		}
		r := sessionRow{Listener: f[0], Peer: peer, Line: line}
		if r.Tx, err = strconv.ParseUint(f[7], 10, 64); err != nil {
			return nil, fmt.Errorf("udpmux sessions: TX_PKTS in %q: %v", line, err)
		}
		rest := f[9:]
		for _, addr := range []*netip.AddrPort{&r.Backend, &r.Upstream} {
			switch {
			case len(rest) >= 1:
				if rest[0] != "-" && rest[0] != "(recovering)" {
					if *addr, err = netip.ParseAddrPort(rest[0]); err != nil {
						return nil, fmt.Errorf("udpmux sessions: address in %q: %v", line, err)
					}
				}
				rest = rest[1:]
			default:
				return nil, fmt.Errorf("udpmux sessions: short line %q", line)
			}
		}
		if len(rest) != 2 {
			return nil, fmt.Errorf("udpmux sessions: no path and keys, or more than them, after the upstream in %q", line)
		}
		r.Kernel = rest[0] == "kernel"
		r.Keys = strings.Split(rest[1], ",")
		rows = append(rows, r)
	}
	return rows, nil
}

// daemonSessions asks the daemon on its control socket sock for its
// sessions, returning them parsed and as text.
func daemonSessions(sock string) ([]sessionRow, string, error) {
	out, err := controlRequest(sock, handoff.TypeSessionList)
	if err != nil {
		return nil, string(out), err
	}
	rows, err := parseSessionList(string(out))
	return rows, string(out), err
}

// controlRequest sends one request to the daemon's control socket and
// returns the reply's text (what `udpmux status` or `udpmux sessions -s`
// print).
func controlRequest(sock string, typ handoff.Type) ([]byte, error) {
	conn, err := handoff.Dial(sock, time.Second)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", sock, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if err := conn.Send(typ, nil, nil); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", sock, err)
	}
	var out []byte
	for {
		t, p, fds, err := conn.Recv()
		for _, fd := range fds {
			unix.Close(fd)
		}
		if err != nil {
			return out, fmt.Errorf("control socket %s: %w", sock, err)
		}
		if t == handoff.TypeTextEnd {
			return out, nil
		}
		out = append(out, p...)
	}
}

// daemonStatus asks the daemon on its control socket sock for its status.
func daemonStatus(sock string) (controlStatus, error) {
	var st controlStatus
	out, err := controlRequest(sock, handoff.TypeStatus)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("control socket %s: status %q: %v", sock, out, err)
	}
	return st, nil
}

// upgrade is what Upgrade saw of one upgrade.
type upgrade struct {
	From, To int           // process ids
	Restored int           // sessions the successor reported restored
	Took     time.Duration // from SIGUSR2 until the predecessor had exited
}

// Upgrade sends SIGUSR2 to the serving process, whose control socket is
// sock, and waits (up to timeout) until a successor with another pid
// answers there reporting that it restored sessions sessions (any number
// if sessions is negative: a udpmux whose idle sessions may end meanwhile),
// and the predecessor has exited. It fails the test otherwise.
func (d *daemon) Upgrade(t testing.TB, sock string, sessions int, timeout time.Duration) upgrade {
	t.Helper()
	from := d.PID()
	u := upgrade{From: from}
	start := time.Now()
	deadline := start.Add(timeout)
	if err := syscall.Kill(from, syscall.SIGUSR2); err != nil {
		t.Fatalf("upgrade: SIGUSR2 to udpmux pid %d: %v", from, err)
	}
	var last controlStatus
	var lastErr error
	for {
		st, err := daemonStatus(sock)
		if err == nil {
			last = st
		}
		lastErr = err
		if err == nil && st.PID != from {
			u.To, u.Restored = st.PID, st.Restored
			break
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(d.Log)
			t.Fatalf("upgrade of udpmux pid %d: no successor answered on %s within %v (last status %+v, last error %v)\nudpmux output:\n%s",
				from, sock, timeout, last, lastErr, tail(string(out), 8000))
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.pid = u.To
	if sessions >= 0 && u.Restored != sessions {
		t.Errorf("upgrade %d -> %d: successor restored %d sessions; want %d", from, u.To, u.Restored, sessions)
	}
	for processAlive(from) {
		if time.Now().After(deadline) {
			t.Fatalf("upgrade %d -> %d: predecessor still running %v after SIGUSR2", from, u.To, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	u.Took = time.Since(start)
	return u
}

// processAlive reports whether pid exists and is not a zombie (a process
// that is not this one's child may stay a zombie until its new parent
// reaps it).
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(stat), ')')
	f := strings.Fields(string(stat[i+1:]))
	return len(f) == 0 || (f[0] != "Z" && f[0] != "X")
}

// udpSockets lists the UDP sockets of ns, read from its /proc/net/udp and
// udp6 (a process sees the files of its own network namespace).
func udpSockets(ns *netlab.Namespace) ([]udpsys.BoundSocket, error) {
	out, err := ns.Command("cat", "/proc/net/udp", "/proc/net/udp6").Output()
	if err != nil {
		return nil, fmt.Errorf("read /proc/net/udp in %s: %v", ns, err)
	}
	return udpsys.ParseProcNetUDP(string(out))
}

// udpPortBound reports whether any UDP socket in ns is bound to port.
func udpPortBound(ns *netlab.Namespace, port uint16) (bool, error) {
	socks, err := udpSockets(ns)
	for _, s := range socks {
		if s.Local.Port() == port {
			return true, nil
		}
	}
	return false, err
}

func TestDissectorRejected(t *testing.T) {
	for _, c := range []struct{ out, name string }{
		{`udpmux: config: /tmp/x/udpmux.yaml: listeners[0].dissector: "wireguard" is not one of flow, noop`, "wireguard"},
		{`udpmux: config: /tmp/x/udpmux.yaml: listeners[0].dissector: "openvpn" is not one of flow, noop, wireguard`, "openvpn"},
		{`udpmux: config: /tmp/x/udpmux.yaml: listeners[0] has invalid keys: wireguard`, "wireguard"},
		{`udpmux: config: /tmp/x/udpmux.yaml: listeners[0] has invalid keys: balance2, wireguard`, "wireguard"},
		{"listeners[0] has invalid keys: wireguard\nexit status 1", "wireguard"},
		{`config: listener "vpn": unknown dissector "openvpn"`, "openvpn"},
		{`Error: listeners[0].dissector: invalid value "openvpn"`, "openvpn"},
		{`unsupported dissector wireguard`, "wireguard"},
		{`config: unknown key "wireguard" in listener vpn`, "wireguard"},
	} {
		if !dissectorRejected(c.out, c.name) {
			t.Errorf("not recognised as a rejection of %s: %q", c.name, c.out)
		}
	}
	for _, c := range []struct{ out, name string }{
		{`listeners[0].dissector: "flow" is not one of noop`, "wireguard"},                             // another dissector
		{`listeners[0].dissector: "wireguard" is not one of flow, noop`, "openvpn"},                    // another dissector
		{`listeners[0].wireguard.private_key: open /x/wg.key: no such file or directory`, "wireguard"}, // the map's contents
		{`listeners[0].wireguard has invalid keys: private_kee`, "wireguard"},                          // a typo in the map
		{`listeners[0] has invalid keys: wireguard_x`, "wireguard"},
		{`listeners[0].dissector: "wireguard" needs the proxy handler`, "wireguard"},
		{`listeners[0].handler: "wireguard" is not one of echo, discard, proxy`, "wireguard"},
		{`listen udp 198.18.0.2:51820: bind: address already in use`, "wireguard"},
		{`panic: runtime error: index out of range`, "openvpn"},
	} {
		if dissectorRejected(c.out, c.name) {
			t.Errorf("wrongly recognised as a rejection of %s: %q", c.name, c.out)
		}
	}
}

func TestHandlerRejected(t *testing.T) {
	for _, s := range []string{
		`udpmux: config: listeners[0].handler: "proxy" is not one of echo, discard`,
		`config: listener "vpn": unknown handler "proxy"`,
		`error: handler "proxy" not supported`,
		`Error: listeners[0].handler: invalid value "proxy"`,
		`unsupported handler proxy`,
	} {
		if !handlerRejected(s, "proxy") {
			t.Errorf("not recognised as a rejection of proxy: %q", s)
		}
	}
	for _, s := range []string{
		`udpmux: config: listeners[0].handler: "echo" is not one of discard`, // another handler
		`listeners[0] (handler "proxy"): backends[1]: invalid address "x"`,
		`listeners[0].backends: a proxy needs at least one backend`,
		`listen udp 198.18.0.2:1194: bind: address already in use`,
		`panic: runtime error: index out of range`,
	} {
		if handlerRejected(s, "proxy") {
			t.Errorf("wrongly recognised as a rejection of proxy: %q", s)
		}
	}
}

func TestParseSessionList(t *testing.T) {
	const out = `LISTENER     PEER                                          LOCAL                                         LOOP IDLE                    RX_PKTS   RX_BYTES    TX_PKTS   TX_BYTES BACKEND                                       UPSTREAM                                      PATH   KEYS
vpn          198.18.0.10:51900                             198.18.0.2:51820                                 1 12ms                        40       5120         38       4864 198.19.0.2:51820                              198.19.0.1:40312                              kernel 0/198.18.0.2:51820-198.18.0.10:51900,0/id:3:0a0b0c0d
vpn          198.18.0.180:39000                            198.18.0.2:51820                                 0 1.5s                         1         48          0          0 (recovering)                                  -                                             user   0/198.18.0.2:51820-198.18.0.180:39000
echo         198.18.0.11:4000                              198.18.0.2:9000                                  0 3ms                          1          1          1          1 -                                             -                                             user   1/198.18.0.2:9000-198.18.0.11:4000
vpn          198.18.0.181:43163                            198.18.0.2:1194                                  0 4.229s                       10        650          0          0 198.19.0.2:1195                               198.19.0.1:60212                              user   0/cid:9d96ad67c76217af,0/198.18.0.2:1194-198.18.0.181:43163
`
	rows, err := parseSessionList(out)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	want := []sessionRow{
		{Listener: "vpn", Peer: ap("198.18.0.10:51900"), Tx: 38, Backend: ap("198.19.0.2:51820"), Upstream: ap("198.19.0.1:40312"),
			Kernel: true, Keys: []string{"0/198.18.0.2:51820-198.18.0.10:51900", "0/id:3:0a0b0c0d"}},
		{Listener: "vpn", Peer: ap("198.18.0.180:39000"), Keys: []string{"0/198.18.0.2:51820-198.18.0.180:39000"}},
		{Listener: "echo", Peer: ap("198.18.0.11:4000"), Tx: 1, Keys: []string{"1/198.18.0.2:9000-198.18.0.11:4000"}},
		{Listener: "vpn", Peer: ap("198.18.0.181:43163"), Backend: ap("198.19.0.2:1195"), Upstream: ap("198.19.0.1:60212"),
			Keys: []string{"0/cid:9d96ad67c76217af", "0/198.18.0.2:1194-198.18.0.181:43163"}},
	}
	lines := strings.Split(out, "\n")[1:]
	if len(rows) != len(want) {
		t.Fatalf("rows = %v; want %v", rows, want)
	}
	for i := range want {
		want[i].Line = lines[i]
		if !reflect.DeepEqual(rows[i], want[i]) {
			t.Errorf("row %d = %+v; want %+v", i, rows[i], want[i])
		}
	}
	if rows[0].hasCID() || !rows[3].hasCID() {
		t.Errorf("hasCID wrong")
	}
	for _, bad := range []string{"vpn x\n", "vpn nope 198.18.0.2:1 0 1ms 1 1 1 1 198.19.0.2:1 198.19.0.1:2 user k\n",
		"vpn 198.18.0.1:1 198.18.0.2:1 0 1ms 1 1 1 1 bogus 198.19.0.1:2 user k\n", "vpn 198.18.0.1:1 198.18.0.2:1 0 1ms 1 1 x 1 198.19.0.2:1 198.19.0.1:2 user k\n",
		"vpn 198.18.0.1:1 198.18.0.2:1 0 1ms 1 1 1 1 198.19.0.2:1 198.19.0.1:2 k\n"} {
		if _, err := parseSessionList(bad); err == nil {
			t.Errorf("parseSessionList(%q) accepted it", bad)
		}
	}
}
