package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/netlab"
)

// daemonPkg is the import path of the udpmux daemon.
const daemonPkg = "github.com/udpmux/udpmux/cmd/udpmux"

var (
	buildOnce sync.Once
	buildDir  string // temporary directory holding the built daemon
	buildBin  string // path of the built daemon, or "" if it did not build
	buildOut  string // the go command's output when the build failed
	buildSkip bool   // the daemon package does not exist yet
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// goTool returns the go command that runs the tests.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// missingPkgRE matches the go command's complaints about a package that does
// not exist (as opposed to one that fails to compile).
var missingPkgRE = regexp.MustCompile(`no required module provides package|cannot find package|directory not found|matched no packages|is not in std|no Go files in|no non-test Go files in`)

// udpmuxBinary builds the daemon once per test binary and returns its path.
// It skips the test if cmd/udpmux does not exist yet, and fails it if the
// package exists but does not build. The daemon is built with -race when
// the tests are (or with UDPMUX_E2E_RACE=1), so that `go test -race` also
// checks the daemon for data races under real traffic (see daemon.Stop);
// UDPMUX_E2E_BIN=/path/to/udpmux uses that binary instead of building one.
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
		out, err := exec.Command(goTool(), args...).CombinedOutput()
		if err != nil {
			buildOut = fmt.Sprintf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			buildSkip = missingPkgRE.Match(out)
			return
		}
		buildBin = bin
	})
	if buildBin == "" {
		if buildSkip {
			t.Skipf("udpmux daemon (%s) not present yet:\n%s", daemonPkg, buildOut)
		}
		t.Fatalf("building the udpmux daemon failed:\n%s", buildOut)
	}
	return buildBin
}

// daemon is a udpmux process running in a namespace.
type daemon struct {
	Config string // path of its configuration file
	Log    string // path of its combined stdout and stderr
	proc   *netlab.Process
}

// handlerRejectedRE matches a daemon's complaint that it does not know a
// handler; the tests skip (rather than fail) on it while the handler is
// still being written.
var handlerRejectedRE = regexp.MustCompile(`(?i)(unknown|unsupported|invalid|unrecognized|not supported|not implemented|not available|no such).{0,60}handler|handler.{0,60}(unknown|unsupported|invalid|unrecognized|not supported|not implemented|not available|no such|is not one of)`)

// startDaemon writes config to a file and runs `udpmux -c FILE` inside ns,
// then waits until a UDP socket is bound to port in ns. If the daemon exits
// first because it does not accept the handler named handler, the test is
// skipped with the daemon's message; any other early exit fails the test.
func startDaemon(t testing.TB, lab *netlab.Lab, ns *netlab.Namespace, dir, config, handler string, port uint16) *daemon {
	t.Helper()
	bin := udpmuxBinary(t)
	d := &daemon{Config: filepath.Join(dir, "udpmux.yaml"), Log: filepath.Join(dir, "udpmux.log")}
	if err := os.WriteFile(d.Config, []byte(config), 0o644); err != nil {
		t.Fatal(err)
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
			if strings.Contains(string(out), handler) && handlerRejectedRE.Match(out) {
				t.Skipf("udpmux %s handler not available: the daemon rejected its config: %v\n%s", handler, err, tail(string(out), 4000))
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
func (d *daemon) Running() bool { return !d.proc.Exited() }

// daemonStopGrace bounds the daemon's shutdown after SIGTERM.
const daemonStopGrace = 5 * time.Second

// Stop sends SIGTERM and checks a clean shutdown: the daemon must have been
// running until now, must exit with status 0 within daemonStopGrace, and
// its output must show no panic and no data race report.
func (d *daemon) Stop(t testing.TB) {
	t.Helper()
	if d.proc.Exited() {
		out, _ := os.ReadFile(d.Log)
		t.Errorf("udpmux exited during the test: %v\n%s", d.proc.Wait(), tail(string(out), 8000))
		return
	}
	start := time.Now()
	err := d.proc.Stop(daemonStopGrace)
	out, _ := os.ReadFile(d.Log)
	switch {
	case time.Since(start) >= daemonStopGrace:
		t.Errorf("udpmux did not exit within %v of SIGTERM (killed)", daemonStopGrace)
	case err != nil:
		t.Errorf("udpmux exited with %v after SIGTERM; want status 0", err)
	}
	for _, bad := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
		if strings.Contains(string(out), bad) {
			t.Errorf("udpmux output contains %q", bad)
		}
	}
	if t.Failed() {
		t.Logf("udpmux output:\n%s", tail(string(out), 16000))
	}
}

// udpPortBound reports whether any UDP socket in ns is bound to port, read
// from the namespace's /proc/net/udp and udp6.
func udpPortBound(ns *netlab.Namespace, port uint16) (bool, error) {
	out, err := ns.Command("cat", "/proc/net/udp", "/proc/net/udp6").Output()
	if err != nil {
		return false, fmt.Errorf("read /proc/net/udp in %s: %v", ns, err)
	}
	return procNetUDPHasPort(string(out), port), nil
}

// procNetUDPHasPort parses /proc/net/udp{,6} text (local_address is
// HEXADDR:HEXPORT in the second column) and reports whether port appears as
// a local port.
func procNetUDPHasPort(text string, port uint16) bool {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		_, hexPort, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		p, err := strconv.ParseUint(hexPort, 16, 16)
		if err == nil && uint16(p) == port {
			return true
		}
	}
	return false
}

func TestProcNetUDPHasPort(t *testing.T) {
	const text = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  512: 020012C6:04AA 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 12345 2 0000000000000000 0
  513: 010013C6:9C41 020013C6:04AB 01 00000000:00000000 00:00000000 00000000     0        0 12346 2 0000000000000000 0
`
	// 04AB is a remote port only; 9C41 is 40001.
	for port, want := range map[uint16]bool{1194: true, 40001: true, 1195: false} {
		if got := procNetUDPHasPort(text, port); got != want {
			t.Errorf("port %d: got %v want %v", port, got, want)
		}
	}
}

func TestHandlerRejectedRE(t *testing.T) {
	for _, s := range []string{
		`config: listener "vpn": unknown handler "proxy"`,
		`error: handler "proxy" not supported`,
		`Error: listeners[0].handler: invalid value "proxy"`,
		`unsupported handler proxy`,
		`udpmux: config: listeners[0].handler: "proxy" is not one of echo, discard`,
	} {
		if !handlerRejectedRE.MatchString(s) {
			t.Errorf("not recognised as a rejection: %q", s)
		}
	}
	for _, s := range []string{
		`listen udp 198.18.0.2:1194: bind: address already in use`,
		`panic: runtime error: index out of range`,
	} {
		if handlerRejectedRE.MatchString(s) {
			t.Errorf("wrongly recognised as a rejection: %q", s)
		}
	}
}
