//go:build linux

package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/internal/netlab"
	"github.com/udpmux/udpmux/proxy"
)

// TestBackendCommandErrors: udpmux backend names the argument it refuses,
// before it asks any daemon.
func TestBackendCommandErrors(t *testing.T) {
	cfg := writeConfig(t, fmt.Sprintf(`
control: {socket: %q}
listeners:
  - {name: vpn, handler: proxy, address: "127.0.0.1:9400", backends: ["127.0.0.1:7101", {address: "127.0.0.1:7102", weight: 2}]}
  - {name: echo, handler: echo, address: "127.0.0.1:9401"}
`, filepath.Join(t.TempDir(), "nobody.sock")))
	tests := []struct {
		name string
		args []string
		code int
		want string // in stderr
	}{
		{"no action", []string{"backend"}, 2, `ACTION "" is not one of drain, enable, weight`},
		{"unknown action", []string{"backend", "remove", "-c", cfg, "vpn", "127.0.0.1:7101"}, 2, `ACTION "remove" is not one of drain, enable, weight`},
		{"too few", []string{"backend", "drain", "-c", cfg, "vpn"}, 2, "drain takes LISTENER BACKEND, got 1 arguments"},
		{"weight without weight", []string{"backend", "weight", "-c", cfg, "vpn", "127.0.0.1:7101"}, 2, "weight takes LISTENER BACKEND WEIGHT, got 2 arguments"},
		{"bad backend", []string{"backend", "drain", "-c", cfg, "vpn", "127.0.0.1"}, 2, `BACKEND "127.0.0.1": missing port in address`},
		{"bad weight", []string{"backend", "weight", "-c", cfg, "vpn", "127.0.0.1:7101", "heavy"}, 2, `WEIGHT "heavy" is not a number within 0..1000`},
		{"weight too large", []string{"backend", "weight", "-c", cfg, "vpn", "127.0.0.1:7101", "1001"}, 2, `WEIGHT "1001" is not a number within 0..1000`},
		{"bad sessions", []string{"backend", "drain", "-sessions", "kill", "-c", cfg, "vpn", "127.0.0.1:7101"}, 2, `-sessions "kill" is not keep or close`},
		{"close with enable", []string{"backend", "enable", "-c", cfg, "vpn", "127.0.0.1:7101", "-sessions", "close"}, 2, "-sessions close goes with drain only"},
		{"no config", []string{"backend", "drain", "vpn", "127.0.0.1:7101"}, 2, "-c config.yaml is required"},
		{"sessions elsewhere", []string{"status", "-c", cfg, "-sessions", "close"}, 2, "-sessions goes with udpmux backend drain only"},
		{"unknown listener", []string{"backend", "drain", "-c", cfg, "web", "127.0.0.1:7101"}, 1, `LISTENER "web": no such proxy listener (the proxies are: vpn)`},
		{"not a proxy", []string{"backend", "drain", "-c", cfg, "echo", "127.0.0.1:7101"}, 1, `LISTENER "echo" is not a proxy`},
		{"not its backend", []string{"backend", "enable", "-c", cfg, "vpn", "127.0.0.1:7103"}, 1, "BACKEND 127.0.0.1:7103 is not one of listener vpn's backends (127.0.0.1:7101, 127.0.0.1:7102)"},
		{"nobody answers", []string{"backend", "drain", "-c", cfg, "vpn", "127.0.0.1:7101", "--sessions", "close"}, 1, "udpmux backend drain: control socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := run(tt.args, &out, &errOut); code != tt.code || !strings.Contains(errOut.String(), tt.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errOut.String(), tt.code, tt.want)
			}
		})
	}
}

// TestBackendDrainAcrossUpgrades: a drained backend gets no new session and
// keeps its live ones, from the same source address; a weight set at run
// time holds; both survive an upgrade; an upgrade whose config drops the
// drained backend keeps its sessions on it (retired); a weight the new
// config file changes is the file's; -sessions close ends a backend's
// sessions.
func TestBackendDrainAcrossUpgrades(t *testing.T) {
	netlab.RequireRoot(t)
	bin := buildDaemon(t)
	lab := netlab.New(t)
	ns := lab.NewNamespace("backend")
	dir := t.TempDir()
	sock := filepath.Join(dir, "ctl.sock")
	b1, b2, b3 := "127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"
	backends := startRecordingBackends(t, ns, 0, 7101, 7102, 7103)
	cfgPath := filepath.Join(dir, "udpmux.yaml")
	writeCfg := func(backends string) {
		t.Helper()
		text := fmt.Sprintf(`
workers: 2
control: {socket: %q}
metrics: {address: "127.0.0.1:9409"}
listeners:
  - name: vpn
    address: "127.0.0.1:9400"
    handler: proxy
    backends: [%s]
    idle_timeout: 60s
`, sock, backends)
		if err := os.WriteFile(cfgPath, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeCfg(fmt.Sprintf("%q, %q", b1, b2))
	startInNamespace(t, lab, ns, bin, cfgPath, dir)
	pid := waitStatus(t, sock, func(statusReport) bool { return true }).PID

	// Clients, each an id and a socket of its own; ask sends one datagram
	// and waits for its echo.
	var clients []*net.UDPConn
	newClient := func() int {
		t.Helper()
		var c *net.UDPConn
		if err := ns.Do(func() (err error) {
			c, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9400})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		clients = append(clients, c)
		return len(clients) - 1
	}
	ask := func(id int) bool {
		c := clients[id]
		msg := binary.BigEndian.AppendUint32(nil, uint32(id))
		c.Write(msg)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		return err == nil && bytes.Equal(buf[:n], msg)
	}
	// on returns the backends that saw client id, and from how many
	// source addresses in all.
	on := func(id int) (which []int, sources int) {
		for i, b := range backends {
			b.mu.Lock()
			if s := b.sources[uint32(id)]; len(s) > 0 {
				which, sources = append(which, i), sources+len(s)
			}
			b.mu.Unlock()
		}
		return which, sources
	}
	// open starts n new clients and returns them by backend.
	open := func(n int) map[int][]int {
		t.Helper()
		by := map[int][]int{}
		for range n {
			id := newClient()
			if !ask(id) {
				t.Fatalf("new client %d: no answer", id)
			}
			which, _ := on(id)
			by[which[0]] = append(by[which[0]], id)
		}
		return by
	}
	// stillOn checks that clients are answered, each from the one source
	// address on the one backend it has had.
	stillOn := func(when string, ids []int, backend int) {
		t.Helper()
		for _, id := range ids {
			if !ask(id) {
				t.Fatalf("%s: client %d had no answer", when, id)
			}
			if which, sources := on(id); len(which) != 1 || which[0] != backend || sources != 1 {
				t.Fatalf("%s: client %d on backends %v from %d sources; want backend %d from one", when, id, which, sources, backend+1)
			}
		}
	}
	command := func(args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		if code := run(append([]string{"backend"}, args...), &out, &errOut); code != 0 {
			t.Fatalf("udpmux backend %v: exit %d: %s", args, code, errOut.String())
		}
		return out.String()
	}
	backendsOf := func(st statusReport) map[string]proxy.BackendStatus {
		m := map[string]proxy.BackendStatus{}
		for _, b := range st.Proxies["vpn"].Backends {
			m[b.Addr.String()] = b
		}
		return m
	}
	upgrade := func(cond func(map[string]proxy.BackendStatus) bool) map[string]proxy.BackendStatus {
		t.Helper()
		if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		st := waitStatus(t, sock, func(st statusReport) bool { return st.PID != pid })
		waitExit(t, pid)
		pid = st.PID
		bs := backendsOf(st)
		if !cond(bs) {
			t.Fatalf("after the upgrade: backends %+v", bs)
		}
		return bs
	}

	first := open(20)
	if len(first[0]) == 0 || len(first[1]) == 0 {
		t.Fatalf("20 sessions on one backend: %v", first)
	}
	t.Logf("%s", command("drain", "-c", cfgPath, "vpn", b1))
	t.Logf("%s", command("weight", "-c", cfgPath, "vpn", b2, "3"))
	if got := open(40); len(got[0]) != 0 {
		t.Fatalf("drained backend 1 got new sessions: %v", got)
	}
	stillOn("drained", first[0], 0)
	stillOn("drained", first[1], 1)
	bs := backendsOf(waitStatus(t, sock, func(statusReport) bool { return true }))
	if !bs[b1].Drained || bs[b1].Sessions != int64(len(first[0])) || bs[b2].Drained || bs[b2].Weight != 3 {
		t.Fatalf("status: %+v", bs)
	}
	var metrics []byte
	if err := ns.Do(func() error {
		// Dialled here, in the namespace: http.Get would dial on a
		// goroutine of its own, outside.
		c, err := net.DialTimeout("tcp", "127.0.0.1:9409", 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprint(c, "GET /metrics HTTP/1.1\r\nHost: udpmux\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		metrics, err = io.ReadAll(resp.Body)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`udpmux_proxy_backend_drained{backend="127.0.0.1:7101",listener="vpn"} 1`,
		`udpmux_proxy_backend_drained{backend="127.0.0.1:7102",listener="vpn"} 0`,
		`udpmux_proxy_backend_weight{backend="127.0.0.1:7101",listener="vpn"} 1`,
		`udpmux_proxy_backend_weight{backend="127.0.0.1:7102",listener="vpn"} 3`,
	} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// Upgrade 1, same config: drained and weight stay.
	upgrade(func(bs map[string]proxy.BackendStatus) bool {
		return bs[b1].Drained && bs[b2].Weight == 3 && !bs[b2].Drained
	})
	stillOn("after upgrade 1", first[0], 0)
	if got := open(20); len(got[0]) != 0 {
		t.Fatalf("after upgrade 1, drained backend 1 got new sessions: %v", got)
	}

	// Upgrade 2: the config drops backend 1 and adds backend 3; its
	// sessions stay on it; backend 2's weight set at run time holds (the
	// file's is as it was).
	writeCfg(fmt.Sprintf("%q, {address: %q, weight: 2}", b2, b3))
	upgrade(func(bs map[string]proxy.BackendStatus) bool {
		return bs[b1].Retired && bs[b1].Drained && bs[b1].Sessions == int64(len(first[0])) && bs[b2].Weight == 3 && bs[b3].Weight == 2
	})
	stillOn("after upgrade 2", first[0], 0)
	if got := open(20); len(got[0]) != 0 || len(got[2]) == 0 {
		t.Fatalf("after upgrade 2: new sessions %v; want none on backend 1, some on 3", got)
	}
	var errOut bytes.Buffer
	if code := run([]string{"backend", "enable", "-c", cfgPath, "vpn", b1}, &bytes.Buffer{}, &errOut); code != 1 || !strings.Contains(errOut.String(), "is not one of listener vpn's backends") {
		t.Errorf("enable of a backend the config dropped: exit %d, %s", code, errOut.String())
	}

	// Upgrade 3: the file gives backend 2 a new weight, which wins over
	// the one set at run time.
	writeCfg(fmt.Sprintf("{address: %q, weight: 5}, {address: %q, weight: 2}", b2, b3))
	upgrade(func(bs map[string]proxy.BackendStatus) bool { return bs[b2].Weight == 5 && bs[b1].Retired })

	// -sessions close ends a backend's sessions.
	t.Logf("%s", command("drain", "-c", cfgPath, "vpn", b3, "-sessions", "close"))
	waitStatus(t, sock, func(st statusReport) bool {
		bs := backendsOf(st)
		return bs[b3].Drained && bs[b3].Sessions == 0
	})
}

// TestTakeOverFromAnOlderPredecessor: a predecessor that knows no backend
// state hangs up on the question, as an older udpmux does on a request it
// does not know; the successor asks again to take over, without the state.
func TestTakeOverFromAnOlderPredecessor(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan handoff.Type, 2)
	go func() {
		for range 2 {
			uc, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			c := handoff.NewConn(uc)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			typ, _, _, err := c.Recv()
			if err != nil {
				uc.Close()
				return
			}
			got <- typ
			if typ == handoff.TypeHello {
				c.Send(handoff.TypeReject, []byte("an older udpmux refuses, for the test"), nil)
			}
			uc.Close()
		}
	}()
	cfg, err := parseConfig([]byte(fmt.Sprintf("control: {socket: %q, handoff_timeout: 5s}\nlisteners:\n  - {name: e, handler: echo, address: \"127.0.0.1:0\"}\n", sock)))
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	_, err = takeOver(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err == nil || !strings.Contains(err.Error(), "an older udpmux refuses") {
		t.Errorf("takeOver: %v; want the predecessor's refusal of the Hello", err)
	}
	if a, b := <-got, <-got; a != handoff.TypeBackendState || b != handoff.TypeHello {
		t.Errorf("the predecessor got %d then %d; want the state request, then a Hello", a, b)
	}
	if !strings.Contains(logs.String(), "the predecessor gave no backend state") {
		t.Errorf("log: %s", logs.String())
	}
}
