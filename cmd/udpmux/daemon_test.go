package main

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDaemonServesAndStopsOnSIGTERM runs the real binary: it must serve the
// echo listener, and SIGTERM must stop it cleanly with exit status 0.
func TestDaemonServesAndStopsOnSIGTERM(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "udpmux")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cfg := writeConfig(t, "workers: 2\ncontrol: {socket: "+filepath.Join(t.TempDir(), "ctl.sock")+"}\n"+
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
	var addr string
	for addr == "" && logs.Scan() {
		if m := addrRE.FindStringSubmatch(logs.Text()); m != nil {
			addr = m[1]
		}
	}
	if addr == "" {
		t.Fatal("daemon never logged its listening address")
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
