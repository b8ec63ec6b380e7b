//go:build linux

package main

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDaemonServesActivatedSocket passes the daemon a bound socket the way
// systemd's socket activation does (descriptor 3, LISTEN_FDS, LISTEN_PID):
// it must serve that socket. The socket has no SO_REUSEPORT, so a daemon
// that bound one of its own instead would fail with EADDRINUSE.
func TestDaemonServesActivatedSocket(t *testing.T) {
	bin := buildDaemon(t)
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	f, err := pc.(*net.UDPConn).File()
	pc.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg := writeConfig(t, "workers: 1\ncontrol: {socket: "+filepath.Join(t.TempDir(), "ctl.sock")+"}\n"+
		"listeners:\n  - {name: echo, handler: echo, address: \""+addr+"\"}\n")
	// systemd sets LISTEN_PID to the service's PID: here the shell's, which
	// exec keeps.
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" -c "$1"`, bin, cfg)
	cmd.ExtraFiles = []*os.File{f}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	f.Close() // the daemon's copy is the only one now
	var log strings.Builder
	adopted, listening := false, false
	sc := bufio.NewScanner(stderr)
	for !listening && sc.Scan() {
		log.WriteString(sc.Text() + "\n")
		adopted = adopted || strings.Contains(sc.Text(), `msg="serving the sockets systemd passed" listener=echo address=`+addr+" sockets=1")
		listening = strings.Contains(sc.Text(), "msg=listening listener=echo address="+addr)
	}
	if !adopted || !listening {
		t.Fatalf("the daemon did not serve the passed socket; its log:\n%s", log.String())
	}
	go func() {
		for sc.Scan() {
		}
	}()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoOnce(t, c, "activated")
}
