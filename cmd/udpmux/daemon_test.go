//go:build linux

package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/prereq"
)

// TestDaemonServesAndStopsOnSIGTERM runs the real binary: it must serve the
// echo listener, and SIGTERM must stop it cleanly with exit status 0.
func TestDaemonServesAndStopsOnSIGTERM(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "udpmux")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cfg := writeConfig(t, "workers: 2\ncontrol: {socket: "+filepath.Join(t.TempDir(), "ctl.sock")+"}\n"+
		"metrics: {address: \"127.0.0.1:0\"}\n"+
		"listeners:\n  - {name: echo, handler: echo, address: \"127.0.0.1:0\"}\n")
	cmd := exec.Command(bin, "-c", cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	logs := bufio.NewScanner(stderr)
	addrRE := regexp.MustCompile(`msg=listening listener=echo address=(\S+)`)
	metricsRE := regexp.MustCompile(`msg=metrics address=(\S+)`)
	var addr, metricsAddr string
	for (addr == "" || metricsAddr == "") && logs.Scan() {
		if m := addrRE.FindStringSubmatch(logs.Text()); m != nil {
			addr = m[1]
		}
		if m := metricsRE.FindStringSubmatch(logs.Text()); m != nil {
			metricsAddr = m[1]
		}
	}
	if addr == "" || metricsAddr == "" {
		t.Fatal("daemon never logged its listening and metrics addresses")
	}
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("ping"))
	buf := make([]byte, 16)
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("echo: %q, %v", buf[:n], err)
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`udpmux_datagrams_received_total{listener="echo"} 1`,
		`udpmux_sessions_opened_total{listener="echo"} 1`,
		`udpmux_sessions_capacity 1e+06`,
		`udpmux_datagrams_relayed_total{listener="echo"} 0`,
		`udpmux_datagrams_dropped_total{listener="echo",reason="relay_full"} 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	var rest strings.Builder
	for logs.Scan() {
		rest.WriteString(logs.Text() + "\n")
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, rest.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("daemon still running 10s after SIGTERM")
	}
	if !strings.Contains(rest.String(), "rx=1 tx=1") {
		t.Errorf("final stats missing or wrong:\n%s", rest.String())
	}
	_ = os.Remove(bin)
}

// TestDaemonServesWithoutControlSocket runs the binary as an unprivileged
// user with the shipped control socket path, which it may not create: it
// must still serve, and say what is off and which key fixes it.
func TestDaemonServesWithoutControlSocket(t *testing.T) {
	if os.Getuid() != 0 {
		prereq.Missing(t, "needs root: runs the daemon as user nobody")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755) // the test's own temporary root
	bin := filepath.Join(dir, "udpmux")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	locked := filepath.Join(dir, "locked") // root's, like /run: nobody may not create in it
	os.Mkdir(locked, 0o755)
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte("workers: 1\ncontrol: {socket: "+filepath.Join(locked, "ctl.sock")+"}\n"+
		"listeners:\n  - {name: echo, handler: echo, address: \"127.0.0.1:0\"}\n"), 0o644)
	cmd := exec.Command(bin, "-c", cfg)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	logs := bufio.NewScanner(stderr)
	var warned bool
	var addr string
	var seen strings.Builder
	for addr == "" && logs.Scan() {
		seen.WriteString(logs.Text() + "\n")
		warned = warned || strings.Contains(logs.Text(), "control socket unavailable") && strings.Contains(logs.Text(), "control.socket")
		if m := regexp.MustCompile(`msg=listening listener=echo address=(\S+)`).FindStringSubmatch(logs.Text()); m != nil {
			addr = m[1]
		}
	}
	if !warned || addr == "" {
		t.Fatalf("warned %v, listening on %q; log:\n%s", warned, addr, seen.String())
	}
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("x"))
	if n, err := c.Read(make([]byte, 8)); err != nil || n != 1 {
		t.Fatalf("echo without a control socket: %d, %v", n, err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	for logs.Scan() {
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

// TestSessionsListsBackendUpstreamAndKeys: `udpmux sessions` shows, for a
// proxied session, its backend, the source address the backend sees (its
// upstream socket's) and every key it is found by.
func TestSessionsListsBackendUpstreamAndKeys(t *testing.T) {
	bin := buildDaemon(t)
	backend, seen := echoBackend(t)
	cfg := writeConfig(t, "workers: 1\ncontrol: {socket: "+filepath.Join(t.TempDir(), "ctl.sock")+"}\n"+
		"listeners:\n  - {name: vpn, handler: proxy, address: \"127.0.0.1:0\", backends: [\""+backend.LocalAddr().String()+"\"]}\n")
	cmd := exec.Command(bin, "-c", cfg)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	addrRE := regexp.MustCompile(`msg=listening listener=vpn address=(\S+)`)
	logs := bufio.NewScanner(stderr)
	var addr string
	for addr == "" && logs.Scan() {
		if m := addrRE.FindStringSubmatch(logs.Text()); m != nil {
			addr = m[1]
		}
	}
	go func() {
		for logs.Scan() {
		}
	}()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoOnce(t, c, "hi")
	upstream := <-seen
	sock := regexp.MustCompile(`socket: (\S+)}`).FindStringSubmatch(string(must(os.ReadFile(cfg))))[1]
	out, err := exec.Command(bin, "sessions", "-s", sock).CombinedOutput()
	if err != nil {
		t.Fatalf("udpmux sessions: %v\n%s", err, out)
	}
	key := "0/" + addr + "-" + c.LocalAddr().String()
	for _, want := range []string{"BACKEND", "UPSTREAM", "KEYS", backend.LocalAddr().String(), upstream.String(), key} {
		if !strings.Contains(string(out), want) {
			t.Errorf("udpmux sessions lacks %q:\n%s", want, out)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// echoBackend is a backend on loopback that echoes every datagram and
// sends the source address of the first to seen; it closes when the test
// ends.
func echoBackend(t *testing.T) (backend *net.UDPConn, seen <-chan netip.AddrPort) {
	t.Helper()
	backend, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	first := make(chan netip.AddrPort, 1)
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := backend.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			select {
			case first <- from:
			default:
			}
			backend.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return backend, first
}
