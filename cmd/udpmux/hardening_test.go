//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestSecondDaemonRefusesAnotherDaemonsAddress: a udpmux with another
// control socket must not join a running udpmux's SO_REUSEPORT group, which
// would split the first one's clients between the two.
func TestSecondDaemonRefusesAnotherDaemonsAddress(t *testing.T) {
	bin := buildDaemon(t)
	first := startDaemon(t, bin)
	cfg := writeConfig(t, "control: {socket: "+filepath.Join(t.TempDir(), "other.sock")+"}\n"+
		"listeners:\n  - {name: twin, handler: echo, address: \""+first.addr+"\"}\n")
	out, err := exec.Command(bin, "-c", cfg).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("second udpmux on %s: %v; want exit status 1\n%s", first.addr, err, out)
	}
	want := fmt.Sprintf("listener twin: %s is already served by another process (pid %d, udpmux)", first.addr, first.cmd.Process.Pid)
	if !strings.Contains(string(out), want) {
		t.Errorf("output lacks %q:\n%s", want, out)
	}
	c, err := net.Dial("udp", first.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 20 { // from 20 source ports: every one reaches the first daemon
		d, err := net.Dial("udp", first.addr)
		if err != nil {
			t.Fatal(err)
		}
		echoOnce(t, d, fmt.Sprint("client ", i))
		d.Close()
	}
}

func TestControlSocketPathMustBeASocket(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep me"), 0o600)
	link := filepath.Join(dir, "link")
	os.Symlink(file, link)
	sub := filepath.Join(dir, "dir")
	os.Mkdir(sub, 0o700)
	for _, tc := range []struct{ path, kind string }{
		{file, "a regular file"},
		{link, "a symbolic link"},
		{sub, "a directory"},
	} {
		ln, err := listenControl(tc.path)
		if err == nil {
			ln.Close()
			t.Errorf("%s: control socket opened over %s", tc.path, tc.kind)
			continue
		}
		if want := "the path exists and is not a socket (" + tc.kind + ")"; !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %q lacks %q", tc.path, err, want)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep me" {
		t.Errorf("the regular file changed: %q, %v", b, err)
	}
	// A socket nobody answers on is left from a process that died.
	stale := filepath.Join(dir, "stale.sock")
	old, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: stale, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	ln, err := listenControl(stale)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ln.Close()
}

// TestControlAcceptRetries: an accept that fails for want of descriptors
// is retried; only a closed listener ends the control socket's service.
func TestControlAcceptRetries(t *testing.T) {
	var calls atomic.Int32
	handled := make(chan struct{}, 1)
	conn := &net.UnixConn{}
	accept := func() (*net.UnixConn, error) {
		switch calls.Add(1) {
		case 1, 2:
			return nil, &net.OpError{Op: "accept", Net: "unixpacket", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
		case 3:
			return conn, nil
		}
		return nil, net.ErrClosed
	}
	done := make(chan struct{})
	go func() {
		serveAccepts(accept, func(c *net.UnixConn) {
			if c == conn {
				handled <- struct{}{}
			}
		}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("serveAccepts did not return after the listener closed")
	}
	if calls.Load() != 4 {
		t.Errorf("accept called %d times; want 4 (two failures, a connection, the close)", calls.Load())
	}
	// serveAccepts hands each connection to its own goroutine, which may
	// run after serveAccepts has returned.
	select {
	case <-handled:
	case <-time.After(5 * time.Second):
		t.Error("the connection after the failures was not handled")
	}
}

// TestUpstreamSocketsMustFitTheDescriptorLimit: more upstream sockets than
// the descriptor limit allows is refused at start, naming the key; without
// the key the bound follows the limit.
func TestUpstreamSocketsMustFitTheDescriptorLimit(t *testing.T) {
	bin := buildDaemon(t)
	config := func(extra string) string {
		return writeConfig(t, "workers: 2\ncontrol: {socket: "+filepath.Join(t.TempDir(), "ctl.sock")+"}\n"+extra+
			"listeners:\n  - {name: vpn, handler: proxy, address: \"127.0.0.1:0\", backends: [\"127.0.0.1:9\"]}\n")
	}
	out, err := exec.Command("sh", "-c", "ulimit -n 512 && exec \"$0\" -c \"$1\"", bin,
		config("sessions: {max_upstream_sockets: 1000}\n")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "sessions.max_upstream_sockets: 1000 upstream sockets and the") ||
		!strings.Contains(string(out), "exceed the descriptor limit of 512") {
		t.Fatalf("udpmux with 1000 upstream sockets under ulimit -n 512: %v\n%s", err, out)
	}
	cmd := exec.Command("sh", "-c", "ulimit -n 512 && exec \"$0\" -c \"$1\"", bin, config(""))
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "msg=serving") {
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not start:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "upstream sockets bounded by the descriptor limit") ||
		!strings.Contains(logs.String(), "rlimit_nofile=512") {
		t.Errorf("no log of the bound the descriptor limit set:\n%s", logs.String())
	}
}
