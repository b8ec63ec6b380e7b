package quicgo

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/prereq"
)

// buildPrograms builds quicecho and quicclient into a temporary directory.
func buildPrograms(t *testing.T) (echo, client string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds programs")
	}
	dir := t.TempDir()
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(gobin, "build", "-o", dir+"/", "./cmd/quicecho", "./cmd/quicclient")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return filepath.Join(dir, "quicecho"), filepath.Join(dir, "quicclient")
}

// lab is where the programs run: loopback, or two network namespaces
// joined by a veth pair.
type lab struct {
	serverNS, clientNS string // empty: loopback
	serverIP           string
}

func (l lab) command(ns string, name string, args ...string) *exec.Cmd {
	if ns == "" {
		return exec.Command(name, args...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// newNetnsLab makes two namespaces, server and client, with addresses
// from 198.18.0.0/15 (the benchmarking range) on a veth pair between
// them; it skips the test (fails it under CI=true, prereq.Missing) unless
// it runs as root with ip(8). The namespaces, and with them the veth pair,
// are deleted at cleanup.
func newNetnsLab(t *testing.T) lab {
	t.Helper()
	if os.Geteuid() != 0 {
		prereq.Missing(t, "network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		prereq.Missing(t, "no ip(8): apt-get install iproute2")
	}
	id := fmt.Sprintf("qg%d", os.Getpid()%100000)
	l := lab{serverNS: id + "s", clientNS: id + "c", serverIP: "198.18.7.1"}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", l.serverNS).Run()
		exec.Command("ip", "netns", "del", l.clientNS).Run()
	})
	run("netns", "add", l.serverNS)
	run("netns", "add", l.clientNS)
	run("link", "add", id+"a", "netns", l.serverNS, "type", "veth", "peer", "name", id+"b", "netns", l.clientNS)
	run("-n", l.serverNS, "addr", "add", l.serverIP+"/24", "dev", id+"a")
	run("-n", l.clientNS, "addr", "add", "198.18.7.2/24", "dev", id+"b")
	for _, ns := range []string{l.serverNS, l.clientNS} {
		run("-n", ns, "link", "set", "lo", "up")
	}
	run("-n", l.serverNS, "link", "set", id+"a", "up")
	run("-n", l.clientNS, "link", "set", id+"b", "up")
	return l
}

// startEcho starts quicecho and returns its address, its process, and a
// function that returns the rest of its output once it has exited.
func startEcho(t *testing.T, l lab, bin, sid, lbConfig string) (string, *exec.Cmd, func() []byte) {
	t.Helper()
	ip := "127.0.0.1"
	if l.serverIP != "" {
		ip = l.serverIP
	}
	cmd := l.command(l.serverNS, bin, "-listen", ip+":0", "-server-id", sid, "-quiclb", lbConfig)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var rest, stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("quicecho %s stderr:\n%s", sid, stderr.String())
		}
	})
	rd := bufio.NewReader(stdout)
	line, err := rd.ReadString('\n')
	if err != nil {
		t.Fatalf("quicecho: %v; stderr:\n%s", err, stderr.String())
	}
	var ready struct {
		Event, Addr string
		CIDLen      int `json:"cid_len"`
	}
	if err := json.Unmarshal([]byte(line), &ready); err != nil || ready.Event != "listening" || ready.CIDLen != 9 {
		t.Fatalf("quicecho said %q (%v)", line, err)
	}
	done := make(chan struct{})
	go func() {
		io.Copy(&rest, rd) // the summary
		close(done)
	}()
	return ready.Addr, cmd, func() []byte { <-done; return rest.Bytes() }
}

type clientReport struct {
	OK          bool
	Connections []struct {
		Conn       int
		Local      []string
		Sent       int
		Echoed     int
		Lost       int
		Late       int
		Servers    map[string]int
		Migrations []struct {
			OK    bool
			Error string
		}
		Error string
	}
}

// TestProgramsDirect runs two quicecho servers (server IDs 0a01 and 0b02,
// one QUIC-LB configuration) and a quicclient for each, with three
// connections each that migrate to a new socket three times at given
// times and once more on SIGUSR1, in network namespaces (as root with
// ip(8); otherwise on loopback, TestProgramsLoopback). Nothing may break:
// every echo comes back from the connection's own server, every migration
// succeeds, and each server follows its clients to their new addresses.
func TestProgramsDirect(t *testing.T) {
	l := newNetnsLab(t)
	runPrograms(t, l)
}

// TestProgramsLoopback is TestProgramsDirect on loopback, for machines
// without root.
func TestProgramsLoopback(t *testing.T) {
	runPrograms(t, lab{})
}

func runPrograms(t *testing.T, l lab) {
	echoBin, clientBin := buildPrograms(t)
	const lbConfig = "rotation=1,server-id-len=2,nonce-len=6,key=8f95f09245765f80256934e50c66207f,encode-length"
	type server struct {
		sid, addr string
		cmd       *exec.Cmd
		out       func() []byte
	}
	servers := []*server{{sid: "0a01"}, {sid: "0b02"}}
	for _, s := range servers {
		s.addr, s.cmd, s.out = startEcho(t, l, echoBin, s.sid, lbConfig)
	}
	type run struct {
		cmd            *exec.Cmd
		stdout, stderr bytes.Buffer
	}
	var runs []*run
	for i, s := range servers {
		args := []string{"-server", s.addr, "-conns", "3", "-duration", "4s", "-interval", "50ms", "-migrate-at", "1s,2s,3s"}
		if i == 0 {
			args = append(args, "-echoes")
		}
		r := &run{cmd: l.command(l.clientNS, clientBin, args...)}
		r.cmd.Stdout, r.cmd.Stderr = &r.stdout, &r.stderr
		if err := r.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		runs = append(runs, r)
	}
	time.Sleep(2500 * time.Millisecond)
	for _, r := range runs {
		r.cmd.Process.Signal(syscall.SIGUSR1)
	}
	for i, r := range runs {
		err := r.cmd.Wait()
		lines := strings.Split(strings.TrimSpace(r.stdout.String()), "\n")
		var rep clientReport
		if jerr := json.Unmarshal([]byte(lines[len(lines)-1]), &rep); jerr != nil {
			t.Fatalf("client %d: last line %q: %v; stderr:\n%s", i, lines[len(lines)-1], jerr, r.stderr.String())
		}
		if err != nil || !rep.OK {
			t.Errorf("client %d: exit %v, report:\n%s\nstderr:\n%s", i, err, r.stdout.String(), r.stderr.String())
		}
		if len(rep.Connections) != 3 {
			t.Fatalf("client %d: %d connections", i, len(rep.Connections))
		}
		if i == 0 {
			checkEchoLines(t, lines, rep)
		}
		for _, c := range rep.Connections {
			if len(c.Migrations) != 4 || len(c.Local) != 5 {
				t.Errorf("client %d conn %d: %d migrations over %d sockets; want 4 over 5", i, c.Conn, len(c.Migrations), len(c.Local))
			}
			if c.Servers[servers[i].sid] != c.Echoed || c.Echoed < c.Sent-1 || c.Lost != 0 || c.Sent < 60 {
				t.Errorf("client %d conn %d: sent %d, echoed %d by %v, lost %d", i, c.Conn, c.Sent, c.Echoed, c.Servers, c.Lost)
			}
		}
	}
	for _, s := range servers {
		s.cmd.Process.Signal(syscall.SIGTERM)
		out := s.out()
		if err := s.cmd.Wait(); err != nil {
			t.Errorf("quicecho %s: %v", s.sid, err)
		}
		var sum struct {
			Event       string
			Connections int
			Echoed      int
			PeerMoves   int `json:"peer_moves"`
		}
		if err := json.Unmarshal(out, &sum); err != nil || sum.Event != "summary" {
			t.Fatalf("quicecho %s summary %q: %v", s.sid, out, err)
		}
		// Each connection's server saw its client at 5 addresses.
		if sum.Connections != 3 || sum.PeerMoves < 3*4 || sum.Echoed < 3*60 {
			t.Errorf("quicecho %s: %+v", s.sid, sum)
		}
	}
}

// checkEchoLines checks quicclient's -echoes output against its report: a
// dialed line per connection, then an echo line per echo, each in its
// connection's order, answered after it was sent, by a server the report
// names.
func checkEchoLines(t *testing.T, lines []string, rep clientReport) {
	t.Helper()
	dialed := map[int]bool{}
	echoes := map[int]int{}
	lastSeq := map[int]uint64{}
	for _, line := range lines {
		var e struct {
			Event, Local, Server string
			Conn                 int
			Seq                  uint64
			Sent, Recv           int64
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		switch e.Event {
		case "dialed":
			dialed[e.Conn] = e.Local != ""
		case "echo":
			if !dialed[e.Conn] || e.Seq <= lastSeq[e.Conn] || e.Recv < e.Sent || e.Sent == 0 {
				t.Errorf("echo line %q: before its connection's dialed line, out of order, or answered before it was sent", line)
			}
			lastSeq[e.Conn] = e.Seq
			echoes[e.Conn]++
			if _, ok := rep.Connections[e.Conn].Servers[e.Server]; !ok {
				t.Errorf("echo line %q names a server the report does not", line)
			}
		}
	}
	for _, c := range rep.Connections {
		if !dialed[c.Conn] || echoes[c.Conn] != c.Echoed {
			t.Errorf("conn %d: dialed line %v, %d echo lines; want one, and %d (its echoes)", c.Conn, dialed[c.Conn], echoes[c.Conn], c.Echoed)
		}
	}
}
