//go:build linux

package e2e

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/netlab"
	"github.com/udpmux/udpmux/internal/prereq"
)

// The QUIC lab: quic-go servers and clients (quicgo's quicecho and
// quicclient) with udpmux between them, routing by QUIC-LB connection ID.
// Both servers run in one namespace behind udpmux's second bridge, each
// with its own server ID under one QUIC-LB configuration; the clients sit
// on the first bridge, one namespace each, and talk to udpmux's first
// listener. A second udpmux in udpmux's namespace serves another address
// with the same backends and QUIC-LB configuration: a DNAT rule in each
// client's namespace sends the client's new flows there halfway through,
// as a load balancer in front of several udpmux hosts might.
//
//	quicclient_i 198.18.0.10+i ─┐                                     ┌ quicecho 0a01 198.19.0.2:4434
//	                            ├─ br0 198.18.0.2:4433 [udpmux]       │
//	                            │      198.18.0.3:4443 [udpmux 2] br1 ┴ quicecho 0b02 198.19.0.2:4435
var (
	quicListen   = netip.AddrPortFrom(muxFrontAddr, 4433)
	quicListen2  = netip.MustParseAddrPort("198.18.0.3:4443")
	quicBackAddr = netip.MustParseAddr("198.19.0.2")
	// quicBackends are the servers' addresses by server ID.
	quicBackends = []struct {
		SID  string
		Addr netip.AddrPort
	}{{"0a01", netip.AddrPortFrom(quicBackAddr, 4434)}, {"0b02", netip.AddrPortFrom(quicBackAddr, 4435)}}
)

// quicLBConfig is the lab's QUIC-LB configuration: four-pass, 2-octet
// server IDs, 9-octet connection IDs.
const quicLBConfig = "rotation=1,server-id-len=2,nonce-len=6,key=8f95f09245765f80256934e50c66207f,encode-length"

// The QUIC test's schedule, from the clients' start.
const (
	quicClients  = 4  // namespaces, one quicclient each
	quicConns    = 2  // connections per quicclient, one long-lived stream each
	quicDuration = 13 // seconds the clients send
	quicMigrate  = "2s,4s,7s,10s,11.5s"
	quicMoves    = 5                       // migrations per connection, as many as in quicMigrate
	quicUpgrade  = 5500 * time.Millisecond // udpmux's upgrade, between the second and third migrations
	quicMove     = 8500 * time.Millisecond // the DNAT to udpmux 2, between the third and fourth
	quicLastSend = time.Second             // before the clients stop: the fast path's counters are read (TestQUICFastPath)
	// quicFirst is how many of a connection's sockets (its first and its
	// first three migrations') talk to udpmux; the later ones to udpmux 2.
	quicFirst = 4
)

// quicServer is a running quicecho.
type quicServer struct {
	SID  string
	Addr netip.AddrPort
	proc *netlab.Process
	out  *syncBuffer // its standard output, JSON lines
	log  string      // the file of its standard error
}

// quicBackend is a quicecho to start: its server ID, its address and its
// namespace.
type quicBackend struct {
	SID  string
	Addr netip.AddrPort
	NS   *netlab.Namespace
}

// startQUICServers starts a quicecho in ns for each of quicBackends and
// waits until they listen.
func startQUICServers(t *testing.T, lab *netlab.Lab, ns *netlab.Namespace, bin, dir string) []*quicServer {
	t.Helper()
	var bs []quicBackend
	for _, b := range quicBackends {
		bs = append(bs, quicBackend{b.SID, b.Addr, ns})
	}
	return startQUICBackends(t, lab, bs, bin, dir)
}

// startQUICBackends starts a quicecho for each of bs, with the lab's QUIC-LB
// configuration, and waits until they listen.
func startQUICBackends(t *testing.T, lab *netlab.Lab, bs []quicBackend, bin, dir string) []*quicServer {
	t.Helper()
	var servers []*quicServer
	for _, b := range bs {
		ns := b.NS
		s := &quicServer{SID: b.SID, Addr: b.Addr, out: &syncBuffer{}, log: filepath.Join(dir, "quicecho-"+b.SID+".log")}
		f, err := os.Create(s.log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		cmd := ns.Command(bin, "-listen", s.Addr.String(), "-server-id", s.SID, "-quiclb", quicLBConfig)
		cmd.Stdout, cmd.Stderr = s.out, f
		s.proc = lab.Start(cmd)
		servers = append(servers, s)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, s := range servers {
		for !strings.Contains(s.out.String(), `"event":"listening"`) {
			if s.proc.Exited() || time.Now().After(deadline) {
				t.Fatalf("quicecho %s did not start (exited: %v):\n%s", s.SID, s.proc.Exited(), s.out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return servers
}

// stop stops the server and returns its summary.
func (s *quicServer) stop() (quicSummary, error) {
	s.proc.Cmd.Process.Signal(syscall.SIGTERM)
	<-s.proc.Done()
	var sum quicSummary
	last := lastLine(s.out.String())
	if err := json.Unmarshal([]byte(last), &sum); err != nil || sum.Event != "summary" {
		return sum, fmt.Errorf("quicecho %s: summary %q: %v", s.SID, last, err)
	}
	return sum, nil
}

// lastLine returns the last line of out.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

// quicPrograms builds quicgo's quicecho and quicclient into dir, from the
// quicgo module (which udpmux's own module does not depend on). It skips
// the test (fails it under CI=true, prereq.Missing) when the quic-go module
// can be neither found in the module cache nor downloaded.
func quicPrograms(t *testing.T, dir string) (echo, client string) {
	t.Helper()
	src := filepath.Join(cmp.Or(sourceDir(), "."), "..", "..", "quicgo")
	download := exec.Command(goTool(), "mod", "download", "github.com/quic-go/quic-go")
	download.Dir = src
	if out, err := download.CombinedOutput(); err != nil {
		prereq.Missingf(t, "needs the Go module github.com/quic-go/quic-go of quicgo/go.mod, from the module cache or GOPROXY: %v\n%s", err, out)
	}
	build := exec.Command(goTool(), "build", "-o", dir+"/", "./cmd/quicecho", "./cmd/quicclient")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building quicgo's programs in %s: %v\n%s", src, err, out)
	}
	return filepath.Join(dir, "quicecho"), filepath.Join(dir, "quicclient")
}

// quicMuxConfig is the config of both udpmux processes: a proxy listener
// on listen with dissector quic, the lab's QUIC-LB configuration and the
// servers with their server IDs, with fast the fast path, and a control
// socket at sock.
func quicMuxConfig(listen netip.AddrPort, sock string, fast bool) string {
	var bs []string
	for _, s := range quicBackends {
		bs = append(bs, fmt.Sprintf("      - {address: %q, server_id: %q}\n", s.Addr, s.SID))
	}
	return fmt.Sprintf(`workers: 2
listeners:
  - name: quic
    address: %q
    handler: proxy
    dissector: quic
    quic:
      lb_configs: [%q]
    idle_timeout: 60s
%s    backends:
%ssessions:
  max: 10000
control:
  socket: %q
  handoff_timeout: 10s
`, listen, quicLBConfig, fastPathExtra(fast), strings.Join(bs, ""), sock)
}

// quicReport is quicclient's report (its last line).
type quicReport struct {
	OK          bool
	Connections []struct {
		Conn       int
		Local      []string
		Sent       int
		Echoed     int
		Lost       int
		Late       int
		MaxRTTMS   float64 `json:"max_rtt_ms"`
		Servers    map[string]int
		Migrations []struct {
			OK      bool
			ProbeMS float64 `json:"probe_ms"`
			Error   string
		}
		Error string
	}
}

// quicSummary is quicecho's last line.
type quicSummary struct {
	Event       string
	Label       string
	Connections int
	Echoed      int
	PeerMoves   int `json:"peer_moves"`
}

// TestQUICThroughUdpmux runs quic-go echo servers with QUIC-LB connection
// IDs behind udpmux (proxy, dissector quic) and quic-go clients with
// long-lived streams, each connection migrating five times to a new local
// socket with quic-go's path API: twice through udpmux, once more after
// udpmux was upgraded (SIGUSR2), and twice after a DNAT rule sent the
// clients' new flows to a second udpmux with the same config on another
// address, which knows nothing of the connections. It checks that no
// connection or stream broke or lost an echo, that every migration
// validated, that each connection was answered by one server throughout,
// and that every session of every client socket, on either udpmux, went to
// that server's backend, routed by the server ID of the connection IDs
// (the proxies' Routed counters) and never by a fallback.
func TestQUICThroughUdpmux(t *testing.T) { runQUICThroughUdpmux(t, false) }

// TestQUICFastPath is TestQUICThroughUdpmux with the fast path on: the
// kernel forwards the short-header packets of established sessions on
// both udpmux processes (checkQUICOffloaded), and the same must hold: no
// connection broke or lost an echo through the upgrade, the migrations and
// the second udpmux.
func TestQUICFastPath(t *testing.T) { runQUICThroughUdpmux(t, true) }

// runQUICThroughUdpmux is TestQUICThroughUdpmux, with fast the fast path.
func runQUICThroughUdpmux(t *testing.T, fast bool) {
	start := time.Now()
	lab := netlab.New(t)
	netlab.RequireTools(t, netlab.ToolNft)
	dir := t.TempDir()
	echoBin, clientBin := quicPrograms(t, dir)
	sock, sock2 := filepath.Join(dir, "ctl.sock"), filepath.Join(dir, "ctl2.sock")
	// Validated here without the fast path, which the host's namespace
	// may not forward for.
	requireDissector(t, quicMuxConfig(quicListen, sock, false), "quic")
	config := quicMuxConfig(quicListen, sock, fast)

	mux := lab.NewNamespace("mux")
	mux.DisableIPv6()
	if fast {
		mux.EnableForwarding()
	}
	front := mux.AddBridge("br0")
	mux.AddAddr(front, netip.PrefixFrom(quicListen.Addr(), 24).String())
	mux.AddAddr(front, netip.PrefixFrom(quicListen2.Addr(), 24).String())
	back := lab.NewNamespace("quicback")
	back.DisableIPv6()
	lab.Connect(mux, netip.PrefixFrom(muxBackAddr, 24).String(), back, netip.PrefixFrom(quicBackAddr, 24).String())
	var logs []string
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("UDPMUX_E2E_DUMP") == "1" {
			dumpLogs(t, logs...)
		}
	})
	servers := startQUICServers(t, lab, back, echoBin, dir)
	for _, s := range servers {
		logs = append(logs, s.log)
	}

	var clients []*netlab.Namespace
	for i := range quicClients {
		ns := lab.NewNamespace(fmt.Sprintf("quicclient%d", i))
		ns.DisableIPv6()
		_, muxIf := lab.Connect(ns, netip.PrefixFrom(clientAddr(i), 24).String(), mux, "")
		mux.SetMaster(muxIf, front)
		// The NAT table from the start, with a conntrack rule so that
		// conntrack follows every flow from its first datagram: the DNAT
		// added later then applies only to flows that begin after it.
		ns.Nft("table ip quicmove {\n" +
			"\tchain output { type nat hook output priority -100; policy accept; }\n" +
			"\tchain track { type filter hook output priority 0; policy accept; ct state new counter; }\n}\n")
		clients = append(clients, ns)
	}

	d := startRoamingDaemon(t, lab, mux, dir, config, "quic", quicListen.Port())
	dir2 := filepath.Join(dir, "second")
	if err := os.Mkdir(dir2, 0o755); err != nil {
		t.Fatal(err)
	}
	d2 := startRoamingDaemon(t, lab, mux, dir2, quicMuxConfig(quicListen2, sock2, fast), "quic", quicListen2.Port())
	logs = append(logs, d.Log, d2.Log)

	type client struct {
		proc           *netlab.Process
		stdout, stderr *syncBuffer
	}
	var cs []client
	t0 := time.Now()
	for i, ns := range clients {
		c := client{stdout: &syncBuffer{}, stderr: &syncBuffer{}}
		cmd := ns.Command(clientBin, "-server", quicListen.String(), "-bind", clientAddr(i).String(),
			"-conns", fmt.Sprint(quicConns), "-duration", fmt.Sprintf("%ds", quicDuration), "-interval", "50ms",
			"-migrate-at", quicMigrate, "-versions", fmt.Sprint(1+i%2))
		cmd.Stdout, cmd.Stderr = c.stdout, c.stderr
		c.proc = lab.Start(cmd)
		cs = append(cs, c)
	}

	time.Sleep(time.Until(t0.Add(quicUpgrade)))
	st, err := daemonStatus(sock)
	if err != nil {
		t.Fatalf("udpmux status before the upgrade: %v", err)
	}
	u := d.Upgrade(t, sock, st.Sessions, upgradeTimeout)
	t.Logf("upgrade done at %v: pid %d -> %d, %d sessions restored in %v", time.Since(t0).Round(time.Millisecond), u.From, u.To, u.Restored, u.Took.Round(time.Millisecond))

	time.Sleep(time.Until(t0.Add(quicMove)))
	for _, ns := range clients {
		ns.Nft(fmt.Sprintf("add rule ip quicmove output ip daddr %s udp dport %d counter dnat to %s\n", quicListen.Addr(), quicListen.Port(), quicListen2))
	}
	t.Logf("new flows to udpmux 2 (%v) from %v on", quicListen2, time.Since(t0).Round(time.Millisecond))

	if fast {
		// While the clients still send, after their last migration: udpmux
		// 2 has their sessions too.
		time.Sleep(time.Until(t0.Add(quicDuration*time.Second - quicLastSend)))
		checkQUICOffloaded(t, "udpmux", sock)
		checkQUICOffloaded(t, "udpmux 2", sock2)
	}

	// The reports.
	var reps []quicReport
	for i, c := range cs {
		select {
		case <-c.proc.Done():
		case <-time.After(time.Until(t0.Add(quicDuration*time.Second + 30*time.Second))):
			t.Fatalf("quicclient %d did not end; output:\n%s\n%s", i, c.stdout.String(), c.stderr.String())
		}
		var rep quicReport
		if last := lastLine(c.stdout.String()); json.Unmarshal([]byte(last), &rep) != nil {
			t.Fatalf("quicclient %d: report %q\nstderr:\n%s", i, last, c.stderr.String())
		}
		if err := c.proc.Wait(); err != nil || !rep.OK {
			t.Errorf("quicclient %d: exit %v, ok %v; output:\n%s\nstderr:\n%s", i, err, rep.OK, c.stdout.String(), c.stderr.String())
		}
		reps = append(reps, rep)
	}

	perServer := checkQUICConnections(t, reps, servers, quicSessions(t, sock), quicSessions(t, sock2))

	// What each udpmux routed by server ID: the first one's successor the
	// sessions that opened after the upgrade (normally those of the third
	// migration; that count is only logged, since a slow upgrade may
	// overlap it), the second every session it had, two per connection.
	for _, m := range []struct {
		name, sock string
		want       uint64 // 0: any
	}{{"udpmux", sock, 0}, {"udpmux 2", sock2, 2 * quicClients * quicConns}} {
		routed, fallbacks, err := quicRouted(m.sock)
		if err != nil {
			t.Errorf("%s: %v", m.name, err)
			continue
		}
		t.Logf("%s: %d sessions routed by server ID, %d fallbacks", m.name, routed, fallbacks)
		if m.want != 0 && routed != m.want || fallbacks != 0 {
			t.Errorf("%s routed %d sessions by server ID (want %d, one per connection and migration it saw), %d fell back (want 0)", m.name, routed, m.want, fallbacks)
		}
	}

	for _, s := range servers {
		sum, err := s.stop()
		if err != nil {
			t.Error(err)
			continue
		}
		// Every migration reaches the server from a new udpmux upstream socket.
		if n := perServer[s.SID]; sum.Connections != n || sum.PeerMoves < quicMoves*n {
			t.Errorf("quicecho %s: %d connections, %d moves of their clients; want %d connections, at least %d moves", s.SID, sum.Connections, sum.PeerMoves, n, quicMoves*n)
		}
		t.Logf("quicecho %s: %d connections, %d echoes, saw its clients move %d times", s.SID, sum.Connections, sum.Echoed, sum.PeerMoves)
	}
	if len(perServer) < len(servers) {
		t.Logf("note: every connection hashed to one server this run (%v)", perServer)
	}
	d.Stop(t)
	d2.Stop(t)
	t.Logf("%d QUIC connections, %d migrations each, one upgrade, in %v", quicClients*quicConns, quicMoves, time.Since(start).Round(time.Millisecond))
}

// checkQUICConnections checks the clients' reports: every connection kept
// its stream and lost no echo, migrated quicMoves times, was answered by one
// server throughout, and each of its sockets has one session, on the udpmux
// it talked to (sessions1 for the first quicFirst sockets, sessions2 for
// the later ones: quicSessions of each), with that server as its backend.
// It returns the connections of each server.
func checkQUICConnections(t *testing.T, reps []quicReport, servers []*quicServer, sessions1, sessions2 map[string][]netip.AddrPort) map[string]int {
	t.Helper()
	backendOf := map[string]netip.AddrPort{}
	for _, s := range servers {
		backendOf[s.SID] = s.Addr
	}
	perServer := map[string]int{}
	var probes []float64
	for i, rep := range reps {
		if len(rep.Connections) != quicConns {
			t.Errorf("quicclient %d: %d connections; want %d", i, len(rep.Connections), quicConns)
		}
		for _, c := range rep.Connections {
			name := fmt.Sprintf("quicclient %d conn %d", i, c.Conn)
			if c.Error != "" || c.Lost != 0 || c.Echoed == 0 {
				t.Errorf("%s: sent %d, echoed %d, lost %d, error %q", name, c.Sent, c.Echoed, c.Lost, c.Error)
			}
			if len(c.Servers) != 1 {
				t.Errorf("%s: echoes from %v; want one server", name, c.Servers)
				continue
			}
			var sid string
			for s := range c.Servers {
				sid = s
			}
			b, known := backendOf[sid]
			if !known {
				t.Errorf("%s: echoes from %q, no server of the lab", name, sid)
				continue
			}
			perServer[sid]++
			if len(c.Migrations) != quicMoves || len(c.Local) != quicMoves+1 {
				t.Errorf("%s: %d migrations over %d sockets; want %d over %d", name, len(c.Migrations), len(c.Local), quicMoves, quicMoves+1)
			}
			for k, m := range c.Migrations {
				if !m.OK {
					t.Errorf("%s: migration %d failed: %s", name, k+1, m.Error)
				}
				probes = append(probes, m.ProbeMS)
			}
			for k, local := range c.Local {
				// The socket's datagrams reach one udpmux, which has one
				// session for them, on the connection's backend.
				want, other, where := sessions1, sessions2, "udpmux"
				if k >= quicFirst {
					want, other, where = sessions2, sessions1, "udpmux 2"
				}
				if got := want[local]; len(got) != 1 || got[0] != b || len(other[local]) != 0 {
					t.Errorf("%s: socket %d, %s: sessions on backends %v of %s and %v of the other; want one on %v (its server's) of %s",
						name, k, local, got, where, other[local], b, where)
				}
			}
			t.Logf("%s: %d echoes from %s, %d late, max RTT %.1f ms, sockets %v", name, c.Echoed, sid, c.Late, c.MaxRTTMS, c.Local)
		}
	}
	slices.Sort(probes)
	if len(probes) > 0 {
		t.Logf("%d migrations: path validation took %.1f ms median, %.1f ms at most", len(probes), probes[len(probes)/2], probes[len(probes)-1])
	}
	return perServer
}

// quicSessions returns the backends of the sessions of the udpmux whose
// control socket is sock, by the client address they serve (`udpmux
// sessions`: its PEER and BACKEND columns).
func quicSessions(t *testing.T, sock string) map[string][]netip.AddrPort {
	t.Helper()
	rows, _, err := daemonSessions(sock)
	if err != nil {
		t.Fatalf("udpmux sessions: %v", err)
	}
	m := map[string][]netip.AddrPort{}
	for _, r := range rows {
		if !r.Backend.IsValid() {
			t.Fatalf("udpmux sessions: no backend in %q", r.Line)
		}
		m[r.Peer.String()] = append(m[r.Peer.String()], r.Backend)
	}
	return m
}

// quicRouted returns the proxy's Routed and RouteFallbacks counters of the
// udpmux whose control socket is sock.
func quicRouted(sock string) (routed, fallbacks uint64, err error) {
	st, err := daemonStatus(sock)
	if err != nil {
		return 0, 0, err
	}
	p := st.Proxies["quic"]
	return p.Routed, p.RouteFallbacks, nil
}

// checkQUICOffloaded checks that the udpmux called name, on control socket
// sock, has QUIC sessions in the kernel and the kernel forwarded datagrams
// both ways for them.
func checkQUICOffloaded(t *testing.T, name, sock string) {
	t.Helper()
	st, err := daemonStatus(sock)
	if err != nil {
		t.Errorf("%s status: %v", name, err)
		return
	}
	p := st.Proxies["quic"]
	t.Logf("%s: fast path: %d of %d sessions in the kernel, %d offloads; it forwarded %d datagrams from the clients, %d to them",
		name, p.Offloaded, st.Sessions, p.Offloads, p.KernelRxDatagrams, p.KernelTxDatagrams)
	if p.Offloaded == 0 || p.KernelRxDatagrams == 0 || p.KernelTxDatagrams == 0 {
		t.Errorf("%s: fast path: %d sessions offloaded, kernel rx %d tx %d; want sessions in the kernel, datagrams both ways", name, p.Offloaded, p.KernelRxDatagrams, p.KernelTxDatagrams)
	}
}
