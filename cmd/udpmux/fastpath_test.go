//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/internal/netlab"
)

// flows are clients in a namespace, each with a connected socket to one
// address, that send numbered datagrams to an echo and note which came
// back (as TestUpgradesLoseNothing's).
type flows struct {
	conns     []*net.UDPConn
	mu        sync.Mutex
	sent      []uint32
	got       []map[uint32]bool
	misrouted atomic.Int64
	wg        sync.WaitGroup
}

func newFlows(t *testing.T, ns *netlab.Namespace, n int, to netip.AddrPort) *flows {
	t.Helper()
	f := &flows{sent: make([]uint32, n), got: make([]map[uint32]bool, n)}
	err := ns.Do(func() error {
		for range n {
			c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
			if err != nil {
				return err
			}
			f.conns = append(f.conns, c)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range f.conns {
		f.got[i] = map[uint32]bool{}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			buf := make([]byte, 64)
			for {
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				if n != 8 || binary.BigEndian.Uint32(buf) != uint32(i) {
					f.misrouted.Add(1)
					continue
				}
				f.mu.Lock()
				f.got[i][binary.BigEndian.Uint32(buf[4:])] = true
				f.mu.Unlock()
			}
		}()
	}
	t.Cleanup(func() {
		for _, c := range f.conns {
			c.Close()
		}
		f.wg.Wait()
	})
	return f
}

// send sends client i's next datagram, counted as sent if the socket took
// it. One goroutine at a time sends for a client.
func (f *flows) send(i int) {
	var msg [8]byte
	f.mu.Lock()
	seq := f.sent[i]
	f.mu.Unlock()
	binary.BigEndian.PutUint32(msg[:], uint32(i))
	binary.BigEndian.PutUint32(msg[4:], seq)
	if _, err := f.conns[i].Write(msg[:]); err == nil {
		f.mu.Lock()
		f.sent[i]++
		f.mu.Unlock()
	}
}

// sendEvery has clients 0..n-1 each send a datagram every interval until
// the returned stop is called, which returns once they have stopped.
func (f *flows) sendEvery(interval time.Duration, n int) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tick.C:
			}
			for i := range n {
				f.send(i)
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(quit) })
		<-done
	}
}

// total returns how many datagrams were sent.
func (f *flows) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, s := range f.sent {
		n += int(s)
	}
	return n
}

// lost returns how many datagrams sent did not come back.
func (f *flows) lost() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for i := range f.conns {
		for seq := range f.sent[i] {
			if !f.got[i][seq] {
				n++
			}
		}
	}
	return n
}

// waitBack waits, up to d, until every datagram sent came back, and
// reports how many did not.
func (f *flows) waitBack(d time.Duration) int {
	deadline := time.Now().Add(d)
	for f.lost() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return f.lost()
}

// fastTables lists the nftables tables of udpmux's (named udpmux…) in ns.
func fastTables(t *testing.T, ns *netlab.Namespace) []string {
	t.Helper()
	var names []string
	err := ns.Do(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
		for _, tb := range tables {
			if strings.HasPrefix(tb.Name, "udpmux") {
				names = append(names, tb.Name)
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// sessionPaths returns the PATH column of `udpmux sessions`, and each
// session's RX_PKTS, by peer.
func sessionPaths(t *testing.T, sock string) (paths map[string]string, rx map[string]string) {
	t.Helper()
	var out strings.Builder
	if err := request(sock, handoff.TypeSessionList, nil, &out); err != nil {
		t.Fatal(err)
	}
	paths, rx = map[string]string{}, map[string]string{}
	for _, line := range strings.Split(out.String(), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 13 {
			continue
		}
		paths[f[1]], rx[f[1]] = f[11], f[5]
	}
	return paths, rx
}

// TestFastPath runs the daemon with fast_path: nftables between a client
// namespace and a backend namespace, and follows its sessions through what
// the kernel's forwarding must survive:
//
//   - established sessions go into the kernel; their datagrams then pass
//     by udpmux (its listener's counters stand still) while the kernel's
//     counters, and the sessions' own, count them; the backends see one
//     source address per session throughout;
//   - sessions that the kernel carries do not idle out, the others do, and
//     their elements go with them;
//   - an upgrade (SIGUSR2) and a kill -9 lose none of the kernel's
//     datagrams; the successor claims the sessions, a restarted process
//     adopts what the dead one left;
//   - a udpmux stopped for good (SIGTERM) removes its table.
func TestFastPath(t *testing.T) {
	netlab.RequireRoot(t)
	const (
		clients = 40
		busy    = 5 // clients that keep sending after the first phases
	)
	bin := buildDaemon(t)
	lab := netlab.New(t)
	cli, mx, back := lab.NewNamespace("cli"), lab.NewNamespace("mux"), lab.NewNamespace("back")
	lab.Connect(cli, "198.18.0.1/24", mx, "198.18.0.2/24")
	lab.Connect(mx, "198.18.1.1/24", back, "198.18.1.2/24")
	mx.EnableForwarding()
	backends := startRecordingBackendsOn(t, back, netip.MustParseAddr("198.18.1.2"), 0, 7001, 7002)
	dir := t.TempDir()
	sock := filepath.Join(dir, "ctl.sock")
	cfg := writeConfig(t, fmt.Sprintf(`
workers: 2
control: {socket: %q}
listeners:
  - name: vpn
    address: "198.18.0.2:9300"
    handler: proxy
    backends: ["198.18.1.2:7001", "198.18.1.2:7002"]
    idle_timeout: 3s
    fast_path: nftables
`, sock))
	startInNamespace(t, lab, mx, bin, cfg, dir)
	first := waitStatus(t, sock, func(statusReport) bool { return true })
	f := newFlows(t, cli, clients, netip.MustParseAddrPort("198.18.0.2:9300"))

	// Established: the backends answer each session offloadAfter times.
	for range 6 {
		for i := range clients {
			f.send(i)
		}
	}
	if n := f.waitBack(5 * time.Second); n > 0 {
		t.Fatalf("%d datagrams lost before the fast path", n)
	}
	st := waitStatus(t, sock, func(st statusReport) bool {
		return st.Proxies["vpn"].Offloaded == clients && st.FastPath != nil && st.FastPath.Offloaded == clients
	})
	ls := st.Listeners[0]

	// In the kernel: udpmux's sockets see nothing of it.
	for range 10 {
		for i := range clients {
			f.send(i)
		}
	}
	if n := f.waitBack(5 * time.Second); n > 0 {
		t.Fatalf("%d datagrams lost through the kernel", n)
	}
	k0 := st.Proxies["vpn"]
	st = waitStatus(t, sock, func(st statusReport) bool {
		p := st.Proxies["vpn"]
		return p.KernelRxDatagrams >= k0.KernelRxDatagrams+10*clients && p.KernelTxDatagrams >= k0.KernelTxDatagrams+10*clients
	})
	if got := st.Listeners[0]; got.RxDatagrams != ls.RxDatagrams || got.TxDatagrams != ls.TxDatagrams || got.UpstreamRx != ls.UpstreamRx {
		t.Errorf("udpmux's sockets counted the kernel's datagrams: rx %d -> %d, tx %d -> %d, upstream rx %d -> %d",
			ls.RxDatagrams, got.RxDatagrams, ls.TxDatagrams, got.TxDatagrams, ls.UpstreamRx, got.UpstreamRx)
	}
	if p := st.Proxies["vpn"]; p.KernelRxDatagrams != 10*clients || p.KernelTxDatagrams != 10*clients || p.KernelRxBytes != 80*clients {
		t.Errorf("kernel counters: rx %d (%d bytes), tx %d; want %d each way, %d bytes", p.KernelRxDatagrams, p.KernelRxBytes,
			p.KernelTxDatagrams, 10*clients, 80*clients)
	}
	paths, rx := sessionPaths(t, sock)
	for _, c := range f.conns {
		peer := c.LocalAddr().String()
		if paths[peer] != "kernel" || rx[peer] != "16" {
			t.Errorf("udpmux sessions: %s is on path %q with %s datagrams received; want kernel, 16 (6 by udpmux, 10 by the kernel)", peer, paths[peer], rx[peer])
		}
	}

	// Idle: the busy clients' sessions live on the kernel's counters alone.
	stopSending := f.sendEvery(20*time.Millisecond, busy)
	defer stopSending()
	// The idle ones end after 3 s, the busy ones must not: wait well past
	// the timeout (a sweep has a resolution of 1 s).
	time.Sleep(5 * time.Second)
	st = waitStatus(t, sock, func(st statusReport) bool {
		return st.Sessions == busy && st.FastPath.Offloaded == busy
	})
	if p := st.Proxies["vpn"]; p.Offloaded != busy {
		t.Errorf("%d sessions offloaded after the idle ones ended, want %d", p.Offloaded, busy)
	}

	// An upgrade: the successor claims the sessions in the kernel.
	if err := syscall.Kill(first.PID, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	st = waitStatus(t, sock, func(st statusReport) bool { return st.PID != first.PID })
	waitExit(t, first.PID)
	st = waitStatus(t, sock, func(st statusReport) bool {
		return st.Proxies["vpn"].Offloaded == busy && st.FastPath.Polls > 0 && st.FastPath.Adopted == 0
	})
	second := st.PID

	// kill -9: the kernel forwards on with no udpmux, and a new one adopts.
	time.Sleep(200 * time.Millisecond)
	if err := syscall.Kill(second, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitExit(t, second)
	sentAt := make([]uint32, busy)
	f.mu.Lock()
	copy(sentAt, f.sent)
	f.mu.Unlock()
	time.Sleep(500 * time.Millisecond) // with no udpmux at all
	f.mu.Lock()
	for i := range busy {
		if f.sent[i] <= sentAt[i] {
			t.Errorf("client %d sent nothing while udpmux was dead", i)
		}
	}
	f.mu.Unlock()
	startInNamespace(t, lab, mx, bin, cfg, dir)
	st = waitStatus(t, sock, func(st statusReport) bool {
		return st.PID != second && st.FastPath != nil && st.FastPath.Polls > 0
	})
	if st.FastPath.Offloaded != busy || st.FastPath.Adopted != busy {
		t.Errorf("after kill -9 and a restart: %d sessions in the kernel, %d adopted; want %d, %d (%+v)", st.FastPath.Offloaded, st.FastPath.Adopted, busy, busy, *st.FastPath)
	}
	time.Sleep(200 * time.Millisecond)
	stopSending()
	if n := f.waitBack(5 * time.Second); n > 0 {
		t.Errorf("%d datagrams lost across the upgrade, the kill -9 and the restart", n)
	}
	if n := f.misrouted.Load(); n > 0 {
		t.Errorf("%d replies reached the wrong client", n)
	}
	for bi, b := range backends {
		b.mu.Lock()
		for id, srcs := range b.sources {
			if len(srcs) != 1 {
				t.Errorf("backend %d saw client %d from %d source addresses, want 1", bi, id, len(srcs))
			}
		}
		b.mu.Unlock()
	}

	// Stopped for good: the table goes.
	if len(fastTables(t, mx)) != 1 {
		t.Fatalf("tables before SIGTERM: %v, want udpmux's", fastTables(t, mx))
	}
	if err := syscall.Kill(st.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitExit(t, st.PID)
	if names := fastTables(t, mx); len(names) != 0 {
		t.Errorf("tables after SIGTERM: %v, want none", names)
	}
}

func TestFastPathConfigErrorsNameTheKey(t *testing.T) {
	proxy := func(extra string) string {
		return "listeners:\n  - {name: a, handler: proxy, address: \"198.18.0.2:9\", backends: [\"198.18.1.2:7\"]" + extra + "}"
	}
	for _, tc := range []struct{ name, body, want string }{
		{"bad value", proxy(", fast_path: ebpf"), `listeners[0].fast_path: "ebpf" is not one of off, nftables`},
		{"echo", "listeners:\n  - {name: a, handler: echo, address: \"127.0.0.1:9\", fast_path: nftables}", "listeners[0].fast_path: only the proxy handler has a fast path"},
		{"source client", proxy(", fast_path: nftables, source: client"), "listeners[0].fast_path: not with source: client"},
		{"IPv6", "listeners:\n  - {name: a, handler: proxy, address: \"[2001:db8::1]:9\", backends: [\"[2001:db8::2]:7\"], fast_path: nftables}", "listeners[0].fast_path: the fast path forwards IPv4 only"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadConfig(writeConfig(t, tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		body string
		kind string
	}{
		{proxy(", fast_path: nftables"), "any"},
		{proxy(", fast_path: nftables, dissector: wireguard"), "wireguard"},
		{proxy(", fast_path: nftables, dissector: openvpn"), "openvpn0"},
		{proxy(", fast_path: off"), ""},
		{proxy(""), ""},
	} {
		cfg, err := loadConfig(writeConfig(t, tc.body))
		if err != nil {
			t.Fatalf("%s: %v", tc.body, err)
		}
		var got string
		if len(cfg.fast.paths) > 0 {
			got = cfg.fast.paths[0].Kind.String()
		}
		if got != tc.kind {
			t.Errorf("%s: fast path of kind %q, want %q", tc.body, got, tc.kind)
		}
	}
}

// TestValidateRefusesFastPathThatCannotWork: validate checks the host as
// well as the file: IPv4 forwarding off in the namespace, or a user without
// CAP_NET_ADMIN, is refused, naming the key; the same config passes where
// it can work.
func TestValidateRefusesFastPathThatCannotWork(t *testing.T) {
	netlab.RequireRoot(t)
	lab := netlab.New(t)
	ns := lab.NewNamespace("validate")
	// A directory that nobody (below) may read too, unlike t.TempDir's.
	dir, err := os.MkdirTemp("", "udpmux-validate-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "config.yaml")
	body := "listeners:\n  - {name: a, handler: proxy, address: \"198.18.0.2:9\", backends: [\"198.18.1.2:7\"], fast_path: nftables}\n"
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	check := func() (err error) {
		if e := ns.Do(func() error { err = cfg.checkFastPath(); return nil }); e != nil {
			t.Fatal(e)
		}
		return err
	}
	if err := check(); err == nil || !strings.Contains(err.Error(), "listeners[0].fast_path: needs IPv4 forwarding") {
		t.Errorf("forwarding off: %v", err)
	}
	ns.EnableForwarding()
	if err := check(); err != nil {
		t.Errorf("forwarding on, as root: %v", err)
	}

	// A user without CAP_NET_ADMIN (capabilities are checked first, so the
	// namespace does not matter).
	exe, err := os.ReadFile(buildDaemon(t))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "udpmux")
	if err := os.WriteFile(bin, exe, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "validate", "-c", path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "listeners[0].fast_path: needs CAP_NET_ADMIN") {
		t.Errorf("validate as nobody: %v\n%s", err, out)
	}
}
