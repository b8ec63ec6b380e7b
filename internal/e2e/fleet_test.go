//go:build linux

package e2e

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/internal/netlab"
)

// The fleet lab (issue #21): udpmux on three hosts behind a router that
// spreads the clients' flows over them by ECMP, the way a fleet runs it.
// Every host holds the service address (the VIP) on a dummy interface and
// runs udpmux with configs/fleet/udpmux.yaml, which announces the VIP over
// BGP to the router, FRR with configs/fleet/frr.conf (BFD, graceful restart
// helper, maximum-paths; the kernel hashes flows by their ports,
// fib_multipath_hash_policy=1). The backends sit on a segment of their own
// that every host reaches from an address of its own; the hosts do not
// forward, so the clients reach the backends only through udpmux.
//
//	clients 198.18.2.10+k ─ br1 ─ 198.18.2.1 [router] 198.18.1.1 ─ br0 ─┬─ 198.18.1.11 [host1] 198.19.0.11 ─┐
//	                                                                  ├─ 198.18.1.12 [host2] 198.19.0.12 ─┼─ br0 [backnet] ─┬─ 198.19.0.2 [backend0]
//	                                                                  └─ 198.18.1.13 [host3] 198.19.0.13 ─┘                 └─ 198.19.0.3 [backend1]
//
// Each host has 198.18.0.100 (the VIP) on lo and serves WireGuard on
// :51820, OpenVPN on :1194 and QUIC on :443 there. Each backend runs a
// wireguard-go (:51820, the same key and peers on both, tunnel address
// 10.77.0.1), an OpenVPN server with --float (backend0 :1194 with
// 10.8.0.0/24, backend1 :1195 with 10.9.0.0/24) and a quicecho (:4434,
// server IDs 0a01 and 0b02).

// The fleet lab's addresses and ports.
var (
	fleetVIP         = netip.MustParseAddr("198.18.0.100")
	fleetVIPRoute    = netip.PrefixFrom(fleetVIP, 32)
	fleetRouterLAN   = netip.MustParseAddr("198.18.1.1") // the router on the hosts' LAN
	fleetRouterFront = netip.MustParseAddr("198.18.2.1") // and on the clients'
	fleetWGListen    = netip.AddrPortFrom(fleetVIP, 51820)
	fleetOVPNListen  = netip.AddrPortFrom(fleetVIP, 1194)
	fleetQUICListen  = netip.AddrPortFrom(fleetVIP, 443)
)

// fleetHosts is the number of udpmux hosts.
const fleetHosts = 3

// fleetHostAddr is host h's address on the hosts' LAN (h from 1), which it
// peers with the router from.
func fleetHostAddr(h int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + h)}) }

// fleetHostBack is host h's own address towards the backends.
func fleetHostBack(h int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, 0, byte(10 + h)}) }

// fleetClientAddr is the k-th client namespace's address.
func fleetClientAddr(k int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 2, byte(10 + k)}) }

// fleetBackendAddr is backend b's address (b from 0).
func fleetBackendAddr(b int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, 0, byte(2 + b)}) }

// fleetConfigFile returns the path of a file of configs/fleet.
func fleetConfigFile(name string) string {
	return filepath.Join(cmp.Or(sourceDir(), "."), "..", "..", "configs", "fleet", name)
}

// fleetLab is the fleet's namespaces, router and hosts.
type fleetLab struct {
	t        *testing.T
	lab      *netlab.Lab
	dir      string
	router   *netlab.Namespace
	front    string // the router's bridge to the clients
	frr      *netlab.FRR
	backends []*netlab.Namespace // backend b is backends[b]
	backnet  *netlab.Namespace   // the backends' segment (a bridge)
	hosts    []*fleetHost        // host h is hosts[h-1]
	clients  int                 // client namespaces made
	logs     []string            // files to print if the test fails
}

// fleetHost is one udpmux host.
type fleetHost struct {
	N      int // from 1
	NS     *netlab.Namespace
	Addr   netip.Addr
	config string // its udpmux config
	sock   string // its control socket
	d      *daemon
	gens   int // udpmux processes started (not counting upgrades)
}

// String names the host in messages.
func (h *fleetHost) String() string { return fmt.Sprintf("host%d", h.N) }

// newFleetLab builds the fleet's namespaces: the router (forwarding, L4
// multipath hashing; FRR starts with startRouter), the hosts with the VIP,
// and the backends' segment with two backend namespaces. No process runs
// yet.
func newFleetLab(t *testing.T) *fleetLab {
	t.Helper()
	lab := netlab.New(t)
	f := &fleetLab{t: t, lab: lab, dir: t.TempDir()}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("UDPMUX_E2E_DUMP") == "1" {
			dumpLogs(t, f.logs...)
		}
	})
	f.router = lab.NewNamespace("router")
	f.router.DisableIPv6()
	hostsLAN := f.router.AddBridge("br0")
	f.router.AddAddr(hostsLAN, netip.PrefixFrom(fleetRouterLAN, 24).String())
	f.front = f.router.AddBridge("br1")
	f.router.AddAddr(f.front, netip.PrefixFrom(fleetRouterFront, 24).String())
	f.router.EnableForwarding()
	// Hash the flows by their ports too: the clients are few addresses.
	f.router.Sysctl("net/ipv4/fib_multipath_hash_policy", "1")

	f.backnet = lab.NewNamespace("backnet")
	f.backnet.DisableIPv6()
	f.backnet.AddBridge("br0")
	for b := range 2 {
		ns := lab.NewNamespace(fmt.Sprintf("backend%d", b))
		ns.DisableIPv6()
		_, swIf := lab.Connect(ns, netip.PrefixFrom(fleetBackendAddr(b), 24).String(), f.backnet, "")
		f.backnet.SetMaster(swIf, "br0")
		f.backends = append(f.backends, ns)
	}
	for h := 1; h <= fleetHosts; h++ {
		ns := lab.NewNamespace(fmt.Sprintf("host%d", h))
		ns.DisableIPv6()
		_, rIf := lab.Connect(ns, netip.PrefixFrom(fleetHostAddr(h), 24).String(), f.router, "")
		f.router.SetMaster(rIf, hostsLAN)
		_, swIf := lab.Connect(ns, netip.PrefixFrom(fleetHostBack(h), 24).String(), f.backnet, "")
		f.backnet.SetMaster(swIf, "br0")
		// The VIP on the loopback interface: the kernel may lack the
		// dummy module, and the router reaches the VIP by its next hops,
		// never by ARP.
		ns.AddAddr("lo", fleetVIPRoute.String())
		ns.AddRoute("default", fleetRouterLAN.String())
		f.hosts = append(f.hosts, &fleetHost{N: h, NS: ns, Addr: fleetHostAddr(h)})
	}
	return f
}

// addClient adds a client namespace on the router's clients' bridge, with
// the router as its default gateway, and returns it and its address.
func (f *fleetLab) addClient(label string) (*netlab.Namespace, netip.Addr) {
	f.t.Helper()
	k := f.clients
	f.clients++
	ns := f.lab.NewNamespace(label)
	ns.DisableIPv6()
	_, rIf := f.lab.Connect(ns, netip.PrefixFrom(fleetClientAddr(k), 24).String(), f.router, "")
	f.router.SetMaster(rIf, f.front)
	ns.AddRoute("default", fleetRouterFront.String())
	return ns, fleetClientAddr(k)
}

// startRouter starts FRR in the router's namespace with
// configs/fleet/frr.conf as it is, but for its logging to syslog: the
// machine's, shared by every namespace.
func (f *fleetLab) startRouter() {
	f.t.Helper()
	netlab.RequireFRR(f.t)
	b, err := os.ReadFile(fleetConfigFile("frr.conf"))
	if err != nil {
		f.t.Fatal(err)
	}
	const syslog = "log syslog informational\n"
	conf := string(b)
	if !strings.Contains(conf, syslog) {
		f.t.Fatalf("configs/fleet/frr.conf lacks %q, which the fleet test leaves out", syslog)
	}
	f.frr = f.lab.StartFRR(f.router, strings.Replace(conf, syslog, "", 1))
	// What bgpd did with the hosts' sessions, for the logs of a failure:
	// debugging is no part of the file an operator copies.
	if out, err := f.frr.Configure("log stdout debugging", "debug bgp neighbor-events", "debug bgp graceful-restart", "debug bgp updates in"); err != nil {
		f.t.Fatalf("%v\n%s", err, out)
	}
}

// fleetHostEdits are the strings of configs/fleet/udpmux.yaml that differ
// from host to host or from the lab to a real host, each found exactly once
// in the file: what replaces them (see hostConfig).
type fleetHostEdits struct {
	routerID, keyFile, sock string
}

// hostConfig returns configs/fleet/udpmux.yaml as host h runs it: its own
// router ID, the backends' WireGuard key at keyFile, its control socket
// at sock. It fails the test if the file lacks what the lab relies on.
func (f *fleetLab) hostConfig(h int, e fleetHostEdits) string {
	f.t.Helper()
	b, err := os.ReadFile(fleetConfigFile("udpmux.yaml"))
	if err != nil {
		f.t.Fatal(err)
	}
	config := string(b)
	for _, r := range []struct{ old, new string }{
		{"router_id: " + fleetHostAddr(1).String(), "router_id: " + e.routerID},
		{"private_key: /etc/udpmux/wg.key", fmt.Sprintf("private_key: %q", e.keyFile)},
		{"socket: /run/udpmux/udpmux.sock", fmt.Sprintf("socket: %q", e.sock)},
	} {
		if n := strings.Count(config, r.old); n != 1 {
			f.t.Fatalf("configs/fleet/udpmux.yaml has %q %d times; the fleet test replaces it for host %d and wants it once", r.old, n, h)
		}
		config = strings.Replace(config, r.old, r.new, 1)
	}
	// What the lab's backends and clients are set up for.
	for _, want := range []string{quicLBConfig, fleetWGListen.String(), fleetOVPNListen.String(), fleetQUICListen.String(), "restart_time: 2s"} {
		if !strings.Contains(config, want) {
			f.t.Fatalf("configs/fleet/udpmux.yaml lacks %q, which the fleet test's lab is set up for", want)
		}
	}
	return config
}

// bgpRejected reports whether the daemon's output says that it does not
// know the bgp section or listeners' announce settings.
var bgpRejected = regexp.MustCompile(`(?i)invalid keys?:[^\n]*\b(bgp|announce)\b|unknown (key|field)s?\W{0,3}(bgp|announce)\b`)

// startHost starts udpmux on host h with its config and returns when its
// listeners are bound.
func (f *fleetLab) startHost(h *fleetHost) {
	f.t.Helper()
	h.gens++
	dir := filepath.Join(f.dir, fmt.Sprintf("%s-%d", h, h.gens))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		f.t.Fatal(err)
	}
	h.d = startDaemonWith(f.t, f.lab, h.NS, dir, h.config, fleetWGListen.Port(), func(out string) string {
		if bgpRejected.MatchString(out) {
			return "udpmux bgp (announcing the VIP) not available"
		}
		return ""
	})
	f.logs = append(f.logs, h.d.Log)
}

// serving returns the hosts whose udpmux runs.
func (f *fleetLab) serving() []*fleetHost {
	var out []*fleetHost
	for _, h := range f.hosts {
		if h.d != nil {
			out = append(out, h)
		}
	}
	return out
}

// nextHops returns the router's kernel next hops for the VIP as hosts.
func (f *fleetLab) nextHops() ([]int, error) {
	hops, err := f.router.RouteNextHops(fleetVIPRoute)
	if err != nil {
		return nil, err
	}
	return f.hostsOf(hops)
}

// hostsOf maps host addresses to host numbers.
func (f *fleetLab) hostsOf(addrs []netip.Addr) ([]int, error) {
	var out []int
	for _, a := range addrs {
		h := slices.IndexFunc(f.hosts, func(h *fleetHost) bool { return h.Addr == a })
		if h < 0 {
			return out, fmt.Errorf("next hop %v is no host", a)
		}
		out = append(out, h+1)
	}
	slices.Sort(out)
	return out, nil
}

// fleetRoutePoll is how often the test looks at the router's route.
const fleetRoutePoll = 10 * time.Millisecond

// waitNextHops waits until the router's kernel route to the VIP has
// exactly the hosts want (sorted) as next hops, and returns when it saw
// that first. It fails the test after timeout.
func (f *fleetLab) waitNextHops(want []int, timeout time.Duration) time.Time {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got, err := f.nextHops()
		now := time.Now()
		if err == nil && slices.Equal(got, want) {
			return now
		}
		if now.After(deadline) {
			f.t.Fatalf("the router's route to %v goes to hosts %v (%v) after %v; want %v", fleetVIP, got, err, timeout, want)
		}
		time.Sleep(fleetRoutePoll)
	}
}

// hostNumbers returns the numbers of hosts.
func hostNumbers(hosts []*fleetHost) []int {
	var out []int
	for _, h := range hosts {
		out = append(out, h.N)
	}
	slices.Sort(out)
	return out
}

// fleetFlow is one client's flow through the fleet: a WireGuard or OpenVPN
// tunnel with a ping through it every 0.2 s, or a QUIC connection with an
// echo on its stream every fleetQUICInterval. Its answers, in arrival
// order, are pingReply values either way.
type fleetFlow struct {
	Name     string
	Kind     string         // "WireGuard", "OpenVPN", "QUIC"
	Src      netip.AddrPort // the client's socket: with Dst, what the router hashes
	Dst      netip.AddrPort
	Interval time.Duration
	replies  func() []pingReply
}

// carrier returns the host the router sends the flow to: the kernel's
// multipath choice for its addresses and ports, as `ip route get` computes
// it for a datagram coming in from the clients.
func (f *fleetLab) carrier(fl *fleetFlow) (int, error) {
	out, err := f.router.Command("ip", "-j", "route", "get", fl.Dst.Addr().String(), "from", fl.Src.Addr().String(),
		"iif", f.front, "ipproto", "udp", "sport", strconv.Itoa(int(fl.Src.Port())), "dport", strconv.Itoa(int(fl.Dst.Port()))).Output()
	if err != nil {
		return 0, fmt.Errorf("ip route get for %s: %v", fl.Name, err)
	}
	var routes []struct {
		Gateway string `json:"gateway"`
	}
	if err := json.Unmarshal(out, &routes); err != nil || len(routes) != 1 {
		return 0, fmt.Errorf("ip route get for %s: %q: %v", fl.Name, out, err)
	}
	gw, err := netip.ParseAddr(routes[0].Gateway)
	if err != nil {
		return 0, fmt.Errorf("ip route get for %s: no gateway in %q", fl.Name, out)
	}
	hs, err := f.hostsOf([]netip.Addr{gw})
	if err != nil {
		return 0, err
	}
	return hs[0], nil
}

// carriers returns the host that carries each flow now.
func (f *fleetLab) carriers(flows []*fleetFlow) []int {
	f.t.Helper()
	out := make([]int, len(flows))
	for i, fl := range flows {
		h, err := f.carrier(fl)
		if err != nil {
			f.t.Fatal(err)
		}
		out[i] = h
	}
	return out
}

// busiest returns the serving host that carries the most flows (the first
// such), and how many.
func (f *fleetLab) busiest(carriers []int) (*fleetHost, int) {
	var best *fleetHost
	most := -1
	for _, h := range f.serving() {
		n := 0
		for _, c := range carriers {
			if c == h.N {
				n++
			}
		}
		if n > most {
			best, most = h, n
		}
	}
	return best, most
}

// waitFlowsAnswered waits until every flow has had a request sent at or
// after since answered, or until the deadline; it returns whether all had.
func waitFlowsAnswered(flows []*fleetFlow, since, deadline time.Time) bool {
	for {
		all := true
		for _, fl := range flows {
			_, ok := pingLog{Replies: fl.replies()}.recovery(since)
			all = all && ok
		}
		if all || time.Now().After(deadline) {
			return all
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// flowOutage is what a flow went through in a window of a scenario.
type flowOutage struct {
	Recovery time.Duration // from the window's start to the first answer of a request sent in it
	Answered bool          // some request sent in the window was answered
	Gap      time.Duration // the longest time without an answer in the window
	Lost     []int         // requests sent in the window never answered
	LostLate int           // of those, the ones sent after the window's split time
}

// outage measures a flow's answers in the window [from, to]; split (not
// before from) divides its lost requests into early and late (LostLate) by
// when they were sent, which for a lost request is interpolated between
// the answered ones around it.
func outage(replies []pingReply, from, split, to time.Time) flowOutage {
	var o flowOutage
	l := pingLog{Replies: replies}
	o.Recovery, o.Answered = l.recovery(from)
	o.Gap = l.maxGap(from, to)
	bySeq := slices.Clone(replies)
	slices.SortFunc(bySeq, func(a, b pingReply) int { return a.Seq - b.Seq })
	for k := 1; k < len(bySeq); k++ {
		a, b := bySeq[k-1], bySeq[k]
		if b.Sent().Before(from) || a.Sent().After(to) {
			continue
		}
		for s := a.Seq + 1; s < b.Seq; s++ {
			sent := a.Sent().Add(time.Duration(int64(b.Sent().Sub(a.Sent())) * int64(s-a.Seq) / int64(b.Seq-a.Seq)))
			if sent.Before(from) || sent.After(to) {
				continue
			}
			o.Lost = append(o.Lost, s)
			if sent.After(split) {
				o.LostLate++
			}
		}
	}
	return o
}

// fleetQUICClient is a quicclient run with -echoes: its connections' sockets
// and echoes as they come.
type fleetQUICClient struct {
	proc           *netlab.Process
	stdout, stderr *syncBuffer

	mu     sync.Mutex
	parsed int                 // lines of stdout parsed
	local  map[int]string      // each connection's socket
	echoes map[int][]pingReply // each connection's echoes, in arrival order
	server map[int][]string    // and who answered each
}

// parse reads the output's new complete lines. An echo's arrival is when
// the test read its line (syncBuffer), in the clock of the events it is
// compared with. Holding q.mu.
func (q *fleetQUICClient) parse() {
	lines := q.stdout.Lines()[q.parsed:]
	q.parsed += len(lines)
	for _, line := range lines {
		var e struct {
			Event, Local, Server string
			Conn                 int
			Seq                  int
			Sent, Recv           int64
		}
		if json.Unmarshal([]byte(line.Text), &e) != nil {
			continue
		}
		switch e.Event {
		case "dialed":
			q.local[e.Conn] = e.Local
		case "echo":
			q.echoes[e.Conn] = append(q.echoes[e.Conn], pingReply{Seq: e.Seq, Recv: line.At, RTT: time.Duration(e.Recv - e.Sent)})
			q.server[e.Conn] = append(q.server[e.Conn], e.Server)
		}
	}
}

// replies returns connection c's echoes so far.
func (q *fleetQUICClient) replies(c int) []pingReply {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.parse()
	return slices.Clone(q.echoes[c])
}

// servers returns who answered connection c's echoes from the k-th on.
func (q *fleetQUICClient) servers(c, k int) map[string]int {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.parse()
	out := map[string]int{}
	for _, s := range q.server[c][min(k, len(q.server[c])):] {
		out[s]++
	}
	return out
}

// dialed returns connection c's socket once it is up.
func (q *fleetQUICClient) dialed(c int) (netip.AddrPort, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.parse()
	ap, err := netip.ParseAddrPort(q.local[c])
	return ap, err == nil
}

// openvpnEvents counts what an OpenVPN client's log shows of its tunnel
// being set up: completed initialisations, and restarts or renegotiations
// (see checkClientsUndisturbed).
func openvpnEvents(log string) (inits, restarts int) {
	inits = strings.Count(log, initDone)
	for _, line := range strings.Split(log, "\n") {
		for _, bad := range []string{"SIGUSR1", "Inactivity timeout", "(--ping-restart)", "process restarting", "soft reset"} {
			if strings.Contains(line, bad) {
				restarts++
				break
			}
		}
	}
	return inits, restarts
}

// routePoller watches the router's route to the VIP while a host is
// upgraded: the host must stay a next hop in the kernel and in zebra's RIB
// at every look.
type routePoller struct {
	stop, done chan struct{}

	mu     sync.Mutex
	looks  int
	misses []string // what each look that lacked the host saw
	stale  bool     // BGP marked the host's path stale at some look
}

// pollRoute starts looking at the router every interval for host's place
// in the VIP's next hops.
func (f *fleetLab) pollRoute(host netip.Addr, interval time.Duration) *routePoller {
	p := &routePoller{stop: make(chan struct{}), done: make(chan struct{})}
	start := time.Now()
	go func() {
		defer close(p.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			kernel, kerr := f.router.RouteNextHops(fleetVIPRoute)
			rib, rerr := f.frr.RIBNextHops(fleetVIPRoute)
			paths, perr := f.frr.BGPPaths(fleetVIPRoute)
			stale := false
			for _, bp := range paths {
				stale = stale || bp.NextHop == host && bp.Stale
			}
			p.mu.Lock()
			p.looks++
			p.stale = p.stale || stale
			if kerr != nil || rerr != nil || perr != nil || !slices.Contains(kernel, host) || !slices.Contains(rib, host) {
				p.misses = append(p.misses, fmt.Sprintf("at +%v: kernel %v (%v), RIB %v (%v), BGP %+v (%v)",
					time.Since(start).Round(time.Millisecond), kernel, kerr, rib, rerr, paths, perr))
			}
			p.mu.Unlock()
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return p
}

// end stops the poller and returns its looks, the ones that lacked the
// host, and whether BGP's path was ever stale.
func (p *routePoller) end() (looks int, misses []string, stale bool) {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.looks, p.misses, p.stale
}

// fleetBGPStatus is the bgp part of `udpmux status` (see cmd/udpmux's
// bgpStatus).
type fleetBGPStatus struct {
	Peers []struct {
		Address string `json:"address"`
		State   string `json:"state"`
		BFD     string `json:"bfd"`
	} `json:"peers"`
	Announced   []string          `json:"announced"`
	Withdrawals map[string]uint64 `json:"withdrawals"`
	Held        string            `json:"held"`
}

// bgpStatus asks the udpmux on control socket sock for its BGP status.
func bgpStatus(sock string) (fleetBGPStatus, error) {
	var st struct {
		PID int             `json:"pid"`
		BGP *fleetBGPStatus `json:"bgp"`
	}
	out, err := controlRequest(sock, handoff.TypeStatus)
	if err != nil {
		return fleetBGPStatus{}, err
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return fleetBGPStatus{}, fmt.Errorf("status %q: %v", out, err)
	}
	if st.BGP == nil {
		return fleetBGPStatus{}, fmt.Errorf("status has no bgp object:\n%s", out)
	}
	return *st.BGP, nil
}

// established reports whether every peer of the status is established.
func (s fleetBGPStatus) established() bool {
	for _, p := range s.Peers {
		if p.State != "established" {
			return false
		}
	}
	return len(s.Peers) > 0
}

// String renders the status for a log line.
func (s fleetBGPStatus) String() string {
	var b bytes.Buffer
	for _, p := range s.Peers {
		fmt.Fprintf(&b, "peer %s %s (BFD %s); ", p.Address, p.State, cmp.Or(p.BFD, "off"))
	}
	fmt.Fprintf(&b, "announced %v; withdrawals %v", s.Announced, s.Withdrawals)
	if s.Held != "" {
		fmt.Fprintf(&b, "; held: %s", s.Held)
	}
	return b.String()
}
