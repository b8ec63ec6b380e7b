//go:build linux

package e2e

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/internal/netlab"
	"github.com/udpmux/udpmux/proxy"
)

// The health check lab: udpmux proxies one listener to two backends of
// one kind, each in a namespace of its own behind udpmux's second bridge,
// and probes them (listeners[].health). Backend 0 is made to fail in
// three ways in turn -- firewalled silently (an nft rule in its namespace
// drops what comes to its port), hung (SIGSTOP) and stopped (SIGTERM) --
// and then brought back (the rule deleted, SIGCONT, started again);
// backend 1 stays healthy throughout. Two clients, each in a namespace of
// its own, keep a session through udpmux each, one on either backend
// (balance: round-robin).
//
//	hcclient_i 198.18.0.10+i ─ br0 198.18.0.2 [hcmux] 198.19.0.1 br1 ─┬─ 198.19.0.2 [hcback0] (made to fail)
//	                                                                   └─ 198.19.0.3 [hcback1]
//
// For each failure it measures the time from the failure to udpmux's
// status reading the backend down, and from the backend serving again to
// its reading up, and checks them against fall and rise probe intervals;
// while the backend is down, new flows must all go to backend 1. At the
// end, the session on backend 1 must have lost nothing.
var hcBackAddrs = [2]netip.Addr{netip.MustParseAddr("198.19.0.2"), netip.MustParseAddr("198.19.0.3")}

// The lab's health settings: probes every hcInterval, hcFall unanswered
// ones take a backend out, hcRise answered ones bring it back.
const (
	hcInterval = 300 * time.Millisecond
	hcTimeout  = 200 * time.Millisecond
	hcFall     = 3
	hcRise     = 2
	// hcDownBound and hcUpBound are the longest the test accepts from a
	// failure to down and from a backend serving again to up: a probe
	// sent just before the failure may still be answered, and one sent
	// just before the return may still go unanswered, so one interval and
	// a timeout more than fall (rise) intervals, and the status poll's
	// and a loaded machine's share.
	hcDownBound = (hcFall+1)*hcInterval + hcTimeout + 500*time.Millisecond
	hcUpBound   = (hcRise+1)*hcInterval + hcTimeout + 500*time.Millisecond
)

// hcLab is the health check lab.
type hcLab struct {
	t       *testing.T
	lab     *netlab.Lab
	dir     string
	mux     *netlab.Namespace
	back    [2]*netlab.Namespace
	clients []*netlab.Namespace
	proto   *hcProto
	listen  netip.AddrPort
	d       *daemon
	sock    string
	logs    []string
	// state is the protocol's own (keys, PKI, programs).
	state any
}

// hcBackend is a running backend.
type hcBackend struct {
	proc *netlab.Process
	// stopped, if set, stops the backend (default: the process group gets
	// SIGTERM).
	stopped func()
}

// hcLive is a client's session through udpmux, carrying traffic until
// stopped.
type hcLive interface {
	// stop ends the traffic and returns what was lost, described, or ""
	// if nothing was.
	stop(t *testing.T) string
}

// hcProto is what the lab runs for one kind of backend.
type hcProto struct {
	name string
	port uint16 // the listener's and both backends' port
	// setup prepares what the backends and udpmux need (keys, PKI,
	// programs) before anything starts.
	setup func(h *hcLab)
	// listener is the listener's lines after backends: (dissector,
	// its settings, health).
	listener func(h *hcLab) string
	// start starts backend i and returns once it serves.
	start func(h *hcLab, i int) *hcBackend
	// live starts client i's session and returns once it carries
	// traffic.
	live func(h *hcLab, i int) hcLive
	// flow sends from client namespace ns a datagram that opens a new
	// session on udpmux, from a new source port, and returns that port.
	flow func(h *hcLab, ns *netlab.Namespace) uint16
	// refused is what the last failed probe of a stopped backend says:
	// ICMP port unreachable, unless the backend's host answers none.
	refused string
	// serverIDs are the backends' QUIC-LB server IDs, nil for none.
	serverIDs []string
}

// hcHealth is the health section for probe with the probe's own lines.
func hcHealth(probe, lines string) string {
	return fmt.Sprintf("    health:\n      probe: %s\n      interval: %v\n      timeout: %v\n      rise: %d\n      fall: %d\n%s",
		probe, hcInterval, hcTimeout, hcRise, hcFall, lines)
}

// newHCLab builds the lab for p and starts both backends and udpmux.
func newHCLab(t *testing.T, p *hcProto) (*hcLab, [2]*hcBackend) {
	netlab.RequireRoot(t)
	netlab.RequireTools(t, netlab.ToolNft, netlab.ToolPing)
	udpmuxBinary(t)
	h := &hcLab{t: t, dir: t.TempDir(), proto: p, listen: netip.AddrPortFrom(muxFrontAddr, p.port)}
	h.sock = filepath.Join(h.dir, "ctl.sock")
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("UDPMUX_E2E_DUMP") == "1" {
			dumpLogs(t, h.logs...)
		}
	})
	p.setup(h)
	h.lab = netlab.New(t)
	h.mux = h.lab.NewNamespace("hcmux")
	h.mux.DisableIPv6()
	front := h.mux.AddBridge("br0")
	h.mux.AddAddr(front, netip.PrefixFrom(muxFrontAddr, 24).String())
	backBr := h.mux.AddBridge("br1")
	h.mux.AddAddr(backBr, netip.PrefixFrom(muxBackAddr, 24).String())
	for i := range h.back {
		ns := h.lab.NewNamespace(fmt.Sprintf("hcback%d", i))
		ns.DisableIPv6()
		_, muxIf := h.lab.Connect(ns, netip.PrefixFrom(hcBackAddrs[i], 24).String(), h.mux, "")
		h.mux.SetMaster(muxIf, backBr)
		// Every probe of a stopped backend is refused, not only the
		// first few a second (the kernel's ICMP rate limit).
		ns.Sysctl("net/ipv4/icmp_ratelimit", "0")
		h.back[i] = ns
	}
	for i := range 3 { // two with live sessions, one for new flows
		ns := h.lab.NewNamespace(fmt.Sprintf("hcclient%d", i))
		ns.DisableIPv6()
		_, muxIf := h.lab.Connect(ns, netip.PrefixFrom(clientAddr(i), 24).String(), h.mux, "")
		h.mux.SetMaster(muxIf, front)
		h.clients = append(h.clients, ns)
	}
	var bs [2]*hcBackend
	for i := range bs {
		bs[i] = p.start(h, i)
	}
	var backends string
	for i, a := range hcBackAddrs {
		if p.serverIDs != nil {
			backends += fmt.Sprintf("      - {address: %q, server_id: %q}\n", netip.AddrPortFrom(a, p.port), p.serverIDs[i])
		} else {
			backends += fmt.Sprintf("      - %q\n", netip.AddrPortFrom(a, p.port))
		}
	}
	config := fmt.Sprintf(`workers: 2
listeners:
  - name: hc
    address: %q
    handler: proxy
    balance: round-robin
    idle_timeout: 60s
    backends:
%s%srecovery:
  enabled: false
sessions:
  max: 10000
log:
  level: debug
`, h.listen, backends, p.listener(h))
	h.d = startDaemon(t, h.lab, h.mux, h.dir, config, "proxy", p.port)
	h.logs = append(h.logs, h.d.Config, h.d.Log)
	// udpmux binds its listeners before it opens its control socket.
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, err := controlRequest(h.sock, handoff.TypeStatus)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("udpmux status: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return h, bs
}

// backends returns the listener's backends as udpmux's status shows them.
func (h *hcLab) backends() [2]proxy.BackendStatus {
	h.t.Helper()
	out, err := controlRequest(h.sock, handoff.TypeStatus)
	if err != nil {
		h.t.Fatalf("udpmux status: %v", err)
	}
	var st controlStatus
	if err := json.Unmarshal(out, &st); err != nil || len(st.Proxies["hc"].Backends) != 2 {
		h.t.Fatalf("udpmux status: %v\n%s", err, out)
	}
	return [2]proxy.BackendStatus(st.Proxies["hc"].Backends)
}

// waitBackend0 polls udpmux's status until backend 0's check reads want
// and udpmux picks it (or not) accordingly, and returns when it first did;
// backend 1 must read up and healthy all along. It fails the test after
// bound.
func (h *hcLab) waitBackend0(want string, since time.Time, bound time.Duration) (proxy.BackendStatus, time.Time) {
	h.t.Helper()
	for {
		bs := h.backends()
		now := time.Now()
		if bs[1].Check != "up" || !bs[1].Healthy {
			h.t.Fatalf("the healthy backend reads %+v", bs[1])
		}
		if bs[0].Check == want && bs[0].Healthy == (want == "up") {
			return bs[0], now
		}
		if now.Sub(since) > bound {
			h.t.Fatalf("backend 0 reads %+v %v after the change; want %s", bs[0], now.Sub(since).Round(time.Millisecond), want)
		}
		time.Sleep(20 * time.Millisecond) // a status poll, bounded above
	}
}

// newFlowsGoToBackend1 opens new sessions from the spare client namespace
// and checks that udpmux put each on backend 1.
func (h *hcLab) newFlowsGoToBackend1() {
	h.t.Helper()
	ns := h.clients[2]
	want := netip.AddrPortFrom(hcBackAddrs[1], h.proto.port)
	for range 4 {
		port := h.proto.flow(h, ns)
		peer := netip.AddrPortFrom(clientAddr(2), port)
		deadline := time.Now().Add(2 * time.Second)
		for {
			rows, text, err := daemonSessions(h.sock)
			if err != nil {
				h.t.Fatalf("udpmux sessions: %v", err)
			}
			var row *sessionRow
			for i := range rows {
				if rows[i].Peer == peer {
					row = &rows[i]
				}
			}
			if row != nil {
				if row.Backend != want {
					h.t.Fatalf("a new session from %v went to %v while backend 0 is down:\n%s", peer, row.Backend, text)
				}
				break
			}
			if time.Now().After(deadline) {
				h.t.Fatalf("no session from %v:\n%s", peer, text)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// hcFailure is one way of making backend 0 fail and bringing it back.
type hcFailure struct {
	name string
	// fail makes the running backend b fail; restore brings it back and
	// returns it (a new one if it was stopped) once it serves.
	fail    func(h *hcLab, b *hcBackend)
	restore func(h *hcLab, b *hcBackend) *hcBackend
	// reason is the kind of the last failed probe udpmux reports.
	reason func(p *hcProto) string
}

var hcFailures = []hcFailure{
	{
		name: "firewalled",
		fail: func(h *hcLab, b *hcBackend) {
			h.back[0].Nft(fmt.Sprintf("table inet hcdrop {\n\tchain input { type filter hook input priority 0; policy accept; udp dport %d drop; }\n}\n", h.proto.port))
		},
		restore: func(h *hcLab, b *hcBackend) *hcBackend {
			h.back[0].Nft("delete table inet hcdrop\n")
			return b
		},
		reason: func(*hcProto) string { return "timeout" },
	},
	{
		name: "hung",
		fail: func(h *hcLab, b *hcBackend) {
			if err := syscall.Kill(-b.proc.Cmd.Process.Pid, syscall.SIGSTOP); err != nil {
				h.t.Fatal(err)
			}
		},
		restore: func(h *hcLab, b *hcBackend) *hcBackend {
			if err := syscall.Kill(-b.proc.Cmd.Process.Pid, syscall.SIGCONT); err != nil {
				h.t.Fatal(err)
			}
			return b
		},
		reason: func(*hcProto) string { return "timeout" },
	},
	{
		name: "stopped",
		fail: func(h *hcLab, b *hcBackend) {
			if b.stopped != nil {
				b.stopped()
				return
			}
			b.proc.Stop(netlab.StopGrace)
		},
		restore: func(h *hcLab, b *hcBackend) *hcBackend { return h.proto.start(h, 0) },
		reason:  func(p *hcProto) string { return p.refused },
	},
}

// runHealth is the health check test of one kind of backend: see hcLab.
func runHealth(t *testing.T, p *hcProto) {
	start := time.Now()
	h, bs := newHCLab(t, p)
	// Both backends answer their probes before anything else.
	h.waitBackend0("up", time.Now(), hcUpBound)
	for deadline := time.Now().Add(hcUpBound); ; {
		st := h.backends()
		if st[0].ProbesOK >= hcRise && st[1].ProbesOK >= hcRise {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backends not answering their probes: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A session on each backend: round-robin gives the first to one, the
	// second to the other.
	var lives [2]hcLive
	var on [2]netip.AddrPort // each client's backend
	for i := range lives {
		lives[i] = p.live(h, i)
		rows, text, err := daemonSessions(h.sock)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if r.Peer.Addr() == clientAddr(i) {
				on[i] = r.Backend
			}
		}
		if !on[i].IsValid() {
			t.Fatalf("client %d has no session:\n%s", i, text)
		}
	}
	healthy := -1
	for i, b := range on {
		if b.Addr() == hcBackAddrs[1] {
			healthy = i
		}
	}
	if healthy < 0 || on[0] == on[1] {
		t.Fatalf("the clients' sessions are on %v: want one on each backend", on)
	}
	t.Logf("client %d's session is on the healthy backend %v", healthy, on[healthy])

	b := bs[0]
	for _, f := range hcFailures {
		failed := time.Now()
		f.fail(h, b)
		st, down := h.waitBackend0("down", failed, hcDownBound)
		if st.LastFailure == nil || st.LastFailure.Kind != f.reason(p) {
			t.Errorf("%s: the last failure reads %+v; want a %s", f.name, st.LastFailure, f.reason(p))
		}
		h.newFlowsGoToBackend1()
		b = f.restore(h, b)
		back := time.Now()
		_, up := h.waitBackend0("up", back, hcUpBound)
		t.Logf("%s %s: down after %v (%s: %s), up %v after it served again",
			p.name, f.name, down.Sub(failed).Round(time.Millisecond), st.LastFailure.Kind, st.LastFailure.Reason, up.Sub(back).Round(time.Millisecond))
	}
	if lost := lives[healthy].stop(t); lost != "" {
		t.Errorf("the session on the healthy backend lost %s while backend 0 failed and came back", lost)
	}
	lives[1-healthy].stop(t)
	h.d.Stop(t)
	t.Logf("%s: three failures and returns in %v", p.name, time.Since(start).Round(time.Millisecond))
}

// pingLive is a continuous ping over a client's tunnel.
type pingLive struct{ p *tsPing }

func (l pingLive) stop(t *testing.T) string {
	l.p.stop()
	log, err := l.p.result()
	if err != nil {
		return err.Error()
	}
	if len(log.Lost) > 0 || log.Sent < 10 {
		return fmt.Sprintf("%d of %d echo requests (seq %v)", len(log.Lost), log.Sent, log.Lost)
	}
	return ""
}

// startPingLive pings target over dev from ns until the first answer.
func startPingLive(h *hcLab, ns *netlab.Namespace, dev string, target netip.Addr) hcLive {
	h.t.Helper()
	p := startTSPing(h.lab, ns, dev, target)
	for deadline := time.Now().Add(10 * time.Second); !p.answered(); {
		if time.Now().After(deadline) {
			h.t.Fatalf("no answer over %s to %v from %s:\n%s", dev, target, ns, p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return pingLive{p}
}

// sendFrom sends p to udpmux's listener from a new socket in ns and
// returns its port; the socket stays open until the test ends, so that
// the session's client is still there.
func (h *hcLab) sendFrom(ns *netlab.Namespace, p []byte) uint16 {
	h.t.Helper()
	var c *net.UDPConn
	if err := ns.Do(func() error {
		var err error
		c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(h.listen))
		return err
	}); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	if _, err := c.Write(p); err != nil {
		h.t.Fatal(err)
	}
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

// randomBytes returns n random bytes.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestHealthChecksEcho checks generic probes against echo servers (udpmux's
// own echo handler, in the backends' namespaces), with a nonce the answer
// must echo.
func TestHealthChecksEcho(t *testing.T) {
	runHealth(t, &hcProto{
		name:  "echo",
		port:  7000,
		setup: func(*hcLab) {},
		listener: func(*hcLab) string {
			return "    dissector: flow\n" + hcHealth("generic", "      generic:\n        send: \"udpmux-health {nonce}\"\n        expect_prefix: \"udpmux-health {nonce}\"\n")
		},
		start: func(h *hcLab, i int) *hcBackend {
			dir, err := os.MkdirTemp(h.dir, fmt.Sprintf("echo%d-", i))
			if err != nil {
				h.t.Fatal(err)
			}
			listen := netip.AddrPortFrom(hcBackAddrs[i], 7000)
			d := startDaemon(h.t, h.lab, h.back[i], dir, fmt.Sprintf("workers: 1\nlisteners:\n  - {name: echo, address: %q, handler: echo}\n", listen), "echo", listen.Port())
			h.logs = append(h.logs, d.Log)
			return &hcBackend{proc: d.proc, stopped: func() { d.Stop(h.t) }}
		},
		live: func(h *hcLab, i int) hcLive {
			return startEchoLive(h, h.clients[i])
		},
		flow:    func(h *hcLab, ns *netlab.Namespace) uint16 { return h.sendFrom(ns, []byte("hello")) },
		refused: "refused",
	})
}

// echoLive sends a numbered datagram every 50 ms on one socket through
// udpmux and counts those that came back.
type echoLive struct {
	c         *net.UDPConn
	stopc     chan struct{}
	wg        sync.WaitGroup
	mu        sync.Mutex
	sent      int
	got       map[int]bool
	sendError error
}

func startEchoLive(h *hcLab, ns *netlab.Namespace) hcLive {
	h.t.Helper()
	l := &echoLive{stopc: make(chan struct{}), got: map[int]bool{}}
	if err := ns.Do(func() error {
		var err error
		l.c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(h.listen))
		return err
	}); err != nil {
		h.t.Fatal(err)
	}
	l.wg.Go(func() {
		buf := make([]byte, 64)
		for {
			n, err := l.c.Read(buf)
			if err != nil {
				return
			}
			if seq, err := strconv.Atoi(strings.TrimPrefix(string(buf[:n]), "live ")); err == nil {
				l.mu.Lock()
				l.got[seq] = true
				l.mu.Unlock()
			}
		}
	})
	l.wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for seq := 0; ; seq++ {
			if _, err := l.c.Write(fmt.Appendf(nil, "live %d", seq)); err != nil {
				l.mu.Lock()
				l.sendError = err
				l.mu.Unlock()
			}
			l.mu.Lock()
			l.sent = seq + 1
			l.mu.Unlock()
			select {
			case <-l.stopc:
				return
			case <-tick.C:
			}
		}
	})
	for deadline := time.Now().Add(5 * time.Second); ; {
		l.mu.Lock()
		n := len(l.got)
		l.mu.Unlock()
		if n > 0 {
			return l
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("no echo through udpmux from %s", ns)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (l *echoLive) stop(t *testing.T) string {
	close(l.stopc)
	// The last datagrams' echoes: a round trip is well under a second.
	deadline := time.Now().Add(time.Second)
	for {
		l.mu.Lock()
		done := len(l.got) >= l.sent
		l.mu.Unlock()
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	l.c.Close()
	l.wg.Wait()
	var lost []int
	for seq := range l.sent {
		if !l.got[seq] {
			lost = append(lost, seq)
		}
	}
	if len(lost) > 0 || l.sendError != nil {
		return fmt.Sprintf("%d of %d datagrams (%v; send error %v)", len(lost), l.sent, lost, l.sendError)
	}
	return ""
}

// hcOpenVPN is the OpenVPN lab's state: its PKI and tls-crypt key.
type hcOpenVPN struct {
	pki      *pki
	tlsCrypt string
}

// TestHealthChecksOpenVPN checks OpenVPN probes against OpenVPN servers
// that protect their control channel with tls-crypt: the probe wraps its
// hard reset with the servers' key, as a client does.
func TestHealthChecksOpenVPN(t *testing.T) {
	requireOpenVPN(t)
	runHealth(t, &hcProto{
		name: "openvpn",
		port: 1194,
		setup: func(h *hcLab) {
			key := filepath.Join(h.dir, "tc.key")
			if out, err := exec.Command(openvpnPath, "--genkey", "tls-crypt", key).CombinedOutput(); err != nil {
				t.Fatalf("openvpn --genkey tls-crypt: %v\n%s", err, out)
			}
			h.state = &hcOpenVPN{pki: newPKI(t, h.dir), tlsCrypt: key}
		},
		listener: func(h *hcLab) string {
			return "    dissector: openvpn\n" + hcHealth("openvpn", fmt.Sprintf("      openvpn:\n        tls_crypt: %q\n", h.state.(*hcOpenVPN).tlsCrypt))
		},
		start: func(h *hcLab, i int) *hcBackend {
			o := h.state.(*hcOpenVPN)
			dir, err := os.MkdirTemp(h.dir, fmt.Sprintf("ovpn%d-", i))
			if err != nil {
				h.t.Fatal(err)
			}
			s := startServer(h.t, h.lab, h.back[i], o.pki, dir, netip.AddrPortFrom(hcBackAddrs[i], 1194),
				netip.MustParsePrefix("10.8.0.0/24"), "--tls-crypt", o.tlsCrypt)
			h.logs = append(h.logs, s.Log)
			if err := waitLog(s.Log, initDone, s.proc, 10*time.Second); err != nil {
				h.t.Fatal(err)
			}
			return &hcBackend{proc: s.proc}
		},
		live: func(h *hcLab, i int) hcLive {
			o := h.state.(*hcOpenVPN)
			c := startClient(h.t, h.lab, h.clients[i], o.pki, h.dir, fmt.Sprintf("client%d", i), h.listen, "--tls-crypt", o.tlsCrypt)
			h.logs = append(h.logs, c.Log)
			if _, err := c.WaitUp(20 * time.Second); err != nil {
				h.t.Fatal(err)
			}
			return startPingLive(h, h.clients[i], clientDev, netip.MustParseAddr("10.8.0.1"))
		},
		flow: func(h *hcLab, ns *netlab.Namespace) uint16 {
			// A client's hard reset: opcode 7, a session ID, no acks,
			// packet-id 0 (the servers drop it: it lacks tls-crypt).
			return h.sendFrom(ns, append(append([]byte{7 << 3}, randomBytes(8)...), 0, 0, 0, 0, 0))
		},
		refused: "refused",
	})
}

// hcWireGuard is the WireGuard lab's state: the backends' and the
// clients' keys and the health peer's.
type hcWireGuard struct {
	backend, health wgKey
	backendFile     string
	healthFile      string
	clients         []wgKey
}

// TestHealthChecksWireGuard checks WireGuard probes against wireguard-go
// backends that list udpmux's health peer (`wg set IF peer PUBKEY`, no
// allowed IPs).
func TestHealthChecksWireGuard(t *testing.T) {
	netlab.RequireTools(t, netlab.ToolWireGuardGo, netlab.ToolWG)
	requireTun(t, "wireguard-go's")
	const port = 51820
	tunnel := netip.MustParsePrefix("10.77.0.1/24")
	runHealth(t, &hcProto{
		name: "wireguard",
		port: port,
		setup: func(h *hcLab) {
			w := &hcWireGuard{backend: newWGKey(t), health: newWGKey(t)}
			w.backendFile = w.backend.writeKey(t, h.dir, "backend.key")
			w.healthFile = w.health.writeKey(t, h.dir, "health.key")
			for range 2 {
				w.clients = append(w.clients, newWGKey(t))
			}
			h.state = w
		},
		listener: func(h *hcLab) string {
			w := h.state.(*hcWireGuard)
			return fmt.Sprintf("    dissector: wireguard\n    wireguard:\n      private_key: %q\n", w.backendFile) +
				hcHealth("wireguard", fmt.Sprintf("      wireguard:\n        private_key: %q\n", w.healthFile))
		},
		start: func(h *hcLab, i int) *hcBackend {
			w := h.state.(*hcWireGuard)
			dev := startWireGuard(h.t, h.lab, h.back[i], h.dir, fmt.Sprintf("hcback%d", i))
			args := []string{"listen-port", strconv.Itoa(port), "private-key", w.backendFile,
				"peer", w.health.Public} // the health peer: no allowed IPs, no traffic
			for c, k := range w.clients {
				args = append(args, "peer", k.Public, "allowed-ips", netip.PrefixFrom(wgClientTunnel(c).Addr(), 32).String())
			}
			dev.Set(args...)
			dev.Up(tunnel)
			h.logs = append(h.logs, dev.Log)
			return &hcBackend{proc: dev.proc}
		},
		live: func(h *hcLab, i int) hcLive {
			w := h.state.(*hcWireGuard)
			name := fmt.Sprintf("hcclient%d", i)
			dev := startWireGuard(h.t, h.lab, h.clients[i], h.dir, name)
			dev.Set("private-key", w.clients[i].writeKey(h.t, h.dir, name+".key"),
				"peer", w.backend.Public, "endpoint", h.listen.String(), "allowed-ips", tunnel.Masked().String())
			dev.Up(wgClientTunnel(i))
			h.logs = append(h.logs, dev.Log)
			return startPingLive(h, h.clients[i], dev.Name, tunnel.Addr())
		},
		flow: func(h *hcLab, ns *netlab.Namespace) uint16 {
			// An initiation's shape with nothing valid in it: udpmux keys
			// it by its 4-tuple and the backend drops it.
			return h.sendFrom(ns, append([]byte{1, 0, 0, 0}, randomBytes(144)...))
		},
		refused: "refused",
	})
}

// hcQUIC is the QUIC lab's state: quicgo's programs.
type hcQUIC struct{ echo, client string }

// TestHealthChecksQUIC checks QUIC probes (version negotiation) against
// quic-go servers (quicgo's quicecho) with QUIC-LB server IDs.
func TestHealthChecksQUIC(t *testing.T) {
	const port = 4433
	runHealth(t, &hcProto{
		name: "quic",
		port: port,
		setup: func(h *hcLab) {
			echo, client := quicPrograms(t, h.dir)
			h.state = &hcQUIC{echo: echo, client: client}
		},
		listener: func(h *hcLab) string {
			return fmt.Sprintf("    dissector: quic\n    quic:\n      lb_configs: [%q]\n", quicLBConfig) + hcHealth("quic", "")
		},
		start: func(h *hcLab, i int) *hcBackend {
			q := h.state.(*hcQUIC)
			out := &syncBuffer{}
			log := filepath.Join(h.dir, fmt.Sprintf("quicecho%d-%d.log", i, time.Now().UnixNano()))
			f, err := os.Create(log)
			if err != nil {
				h.t.Fatal(err)
			}
			h.t.Cleanup(func() { f.Close() })
			cmd := h.back[i].Command(q.echo, "-listen", netip.AddrPortFrom(hcBackAddrs[i], port).String(),
				"-server-id", quicBackends[i].SID, "-quiclb", quicLBConfig)
			cmd.Stdout, cmd.Stderr = out, f
			proc := h.lab.Start(cmd)
			h.logs = append(h.logs, log)
			for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), `"event":"listening"`); {
				if proc.Exited() || time.Now().After(deadline) {
					h.t.Fatalf("quicecho %d did not start:\n%s", i, out.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			return &hcBackend{proc: proc}
		},
		live: func(h *hcLab, i int) hcLive {
			return startQUICLive(h, i)
		},
		flow: func(h *hcLab, ns *netlab.Namespace) uint16 {
			// An Initial's header with a random connection ID (no source
			// connection ID, no token, a two-octet length: 18 octets), the
			// rest of 1200 octets its payload, as clients pad theirs; the
			// backend gets nothing it can use.
			p := append([]byte{0xc0, 0, 0, 0, 1, 8}, randomBytes(8)...)
			p = append(p, 0, 0, 0x40|(1200-18)>>8, (1200-18)&0xff)
			return h.sendFrom(ns, append(p, make([]byte, 1200-len(p))...))
		},
		refused:   "refused",
		serverIDs: []string{quicBackends[0].SID, quicBackends[1].SID},
	})
}

// quicLive is a quicclient with one connection and its stream, sending a
// counter every 50 ms until stopped.
type quicLive struct {
	proc           *netlab.Process
	stdout, stderr *syncBuffer
}

func startQUICLive(h *hcLab, i int) hcLive {
	h.t.Helper()
	q := h.state.(*hcQUIC)
	l := &quicLive{stdout: &syncBuffer{}, stderr: &syncBuffer{}}
	cmd := h.clients[i].Command(q.client, "-server", h.listen.String(), "-bind", clientAddr(i).String(),
		"-conns", "1", "-duration", "0", "-interval", "50ms")
	cmd.Stdout, cmd.Stderr = l.stdout, l.stderr
	l.proc = h.lab.Start(cmd)
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(l.stdout.String(), `"event":"connected"`); {
		if l.proc.Exited() || time.Now().After(deadline) {
			h.t.Fatalf("quicclient %d did not connect:\n%s\n%s", i, l.stdout.String(), l.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return l
}

func (l *quicLive) stop(t *testing.T) string {
	l.proc.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-l.proc.Done():
	case <-time.After(10 * time.Second):
		return "everything: quicclient did not end after SIGTERM"
	}
	var rep quicReport
	if err := json.Unmarshal([]byte(lastLine(l.stdout.String())), &rep); err != nil || len(rep.Connections) != 1 {
		return fmt.Sprintf("everything: no report (%v):\n%s\n%s", err, l.stdout.String(), l.stderr.String())
	}
	c := rep.Connections[0]
	if !rep.OK || c.Lost > 0 || c.Error != "" || c.Sent < 10 {
		return fmt.Sprintf("%d of %d echoes (error %q, %d late)", c.Lost, c.Sent, c.Error, c.Late)
	}
	return ""
}
