//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/netlab"
)

// Addresses of the VPN lab. Clients sit on a bridge in the udpmux namespace
// (198.18.0.0/24); the backends sit behind a veth pair (198.19.0.0/24).
//
//	client_i (198.18.0.10+i) ─┐
//	client_j (198.18.0.10+j) ─┼─ br0 198.18.0.2 [udpmux ns] 198.19.0.1 ── 198.19.0.2 [backend ns]
//	...                       ─┘                                          OpenVPN :1194 10.8.0.0/24
//	                                                                      OpenVPN :1195 10.9.0.0/24
var (
	muxFrontAddr = netip.MustParseAddr("198.18.0.2") // udpmux's client-side address
	muxBackAddr  = netip.MustParseAddr("198.19.0.1") // udpmux's backend-side address
	backendAddr  = netip.MustParseAddr("198.19.0.2")
	muxListen    = netip.AddrPortFrom(muxFrontAddr, 1194)
	serverNets   = []struct {
		port   uint16
		subnet netip.Prefix
	}{
		{1194, netip.MustParsePrefix("10.8.0.0/24")},
		{1195, netip.MustParsePrefix("10.9.0.0/24")},
	}
)

// Client counts. Maglev places each session by a hash of its source, so
// with two backends a batch of n clients all lands on one backend with
// probability 2^(1-n). The test starts clientBatch clients and, only if they
// all landed on the same backend, one more batch: the split assertion then
// fails with probability 2^(1-2*clientBatch) ≈ 3e-5 for a correct balancer.
const clientBatch = 8

// vpnLab is the namespace topology of the OpenVPN tests.
type vpnLab struct {
	t       *testing.T
	lab     *netlab.Lab
	dir     string
	pki     *pki
	mux     *netlab.Namespace
	backend *netlab.Namespace
	bridge  string
	back    string // the backends' bridge in mux, if any (vpnOptions.backBridge)
	direct  bool   // clients are routed straight to the backends, not through udpmux
	servers []*ovpnServer
	clients []*ovpnClient
	// clientArgs are extra options of every client (vpnOptions).
	clientArgs []string
	logs       []string  // files to print if the test fails
	end        time.Time // the test's overall deadline (vpnBudget from its start)
}

// wait returns d, or less if the test's overall budget ends sooner.
func (v *vpnLab) wait(d time.Duration) time.Duration {
	return max(min(d, time.Until(v.end)), 0)
}

// newVPNLab builds the namespaces and starts both OpenVPN servers. With
// direct set, the udpmux namespace routes between clients and backends (no
// udpmux runs); otherwise it does not forward and the clients have no route
// to the backends, so that they can reach them only through a process in
// it. The lab's logs are printed if the test fails, or always with
// UDPMUX_E2E_DUMP=1.
func newVPNLab(t *testing.T, direct bool) *vpnLab {
	t.Helper()
	return newVPNLabWith(t, vpnOptions{direct: direct})
}

// vpnOptions are newVPNLabWith's choices.
type vpnOptions struct {
	direct     bool     // see newVPNLab
	serverArgs []string // extra options of both servers, e.g. "--float"
	clientArgs []string // extra options of every client, e.g. "--reneg-sec", "6"
	// backBridge puts the backend namespace on a bridge in the udpmux
	// namespace, which holds udpmux's backend-side address, instead of
	// a veth pair: other namespaces can join it.
	backBridge bool
	// transparent routes the backends' replies to clients through the
	// udpmux namespace, which delivers them to udpmux's sockets bound to
	// the clients' addresses (source: client; transparentRouting).
	transparent bool
}

// newVPNLabWith is newVPNLab with more choices.
func newVPNLabWith(t *testing.T, o vpnOptions) *vpnLab {
	t.Helper()
	requireOpenVPN(t)
	direct := o.direct
	lab := netlab.New(t)
	v := &vpnLab{t: t, lab: lab, dir: t.TempDir(), direct: direct, clientArgs: o.clientArgs, end: time.Now().Add(vpnBudget)}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("UDPMUX_E2E_DUMP") == "1" {
			dumpLogs(t, v.logs...)
		}
	})
	v.pki = newPKI(t, v.dir)
	v.mux = lab.NewNamespace("mux")
	v.backend = lab.NewNamespace("backend")
	v.backend.DisableIPv6()
	v.bridge = v.mux.AddBridge("br0")
	v.mux.AddAddr(v.bridge, netip.PrefixFrom(muxFrontAddr, 24).String())
	backIf := ""
	if o.backBridge {
		v.back = v.mux.AddBridge("br1")
		v.mux.AddAddr(v.back, netip.PrefixFrom(muxBackAddr, 24).String())
		_, muxIf := lab.Connect(v.backend, netip.PrefixFrom(backendAddr, 24).String(), v.mux, "")
		v.mux.SetMaster(muxIf, v.back)
		backIf = v.back
	} else {
		backIf, _ = lab.Connect(v.mux, netip.PrefixFrom(muxBackAddr, 24).String(), v.backend, netip.PrefixFrom(backendAddr, 24).String())
	}
	if direct {
		v.mux.EnableForwarding()
		v.backend.AddRoute("198.18.0.0/24", muxBackAddr.String())
	}
	if o.transparent {
		transparentRouting(t, v.mux, backIf, v.backend)
	}
	for _, sn := range serverNets {
		s := startServer(t, lab, v.backend, v.pki, v.dir, netip.AddrPortFrom(backendAddr, sn.port), sn.subnet, o.serverArgs...)
		v.servers = append(v.servers, s)
		v.logs = append(v.logs, s.Log, s.Status)
	}
	for _, s := range v.servers {
		if err := waitLog(s.Log, initDone, s.proc, v.wait(serverUpTimeout)); err != nil {
			t.Fatalf("OpenVPN %s did not start: %v", s.Name, err)
		}
	}
	return v
}

// addClients creates n client namespaces on the bridge and starts an
// OpenVPN client in each, connecting to remote(i) where i numbers clients
// from 0 across calls.
func (v *vpnLab) addClients(n int, remote func(i int) netip.AddrPort) []*ovpnClient {
	v.t.Helper()
	var added []*ovpnClient
	for range n {
		i := len(v.clients)
		if i >= 200 {
			v.t.Fatal("too many clients for 198.18.0.0/24")
		}
		ns := v.lab.NewNamespace(fmt.Sprintf("client%d", i))
		ns.DisableIPv6()
		link, muxIf := v.lab.Connect(ns, netip.PrefixFrom(clientAddr(i), 24).String(), v.mux, "")
		v.mux.SetMaster(muxIf, v.bridge)
		if v.direct {
			ns.AddRoute("198.19.0.0/24", muxFrontAddr.String())
		}
		c := startClient(v.t, v.lab, ns, v.pki, v.dir, fmt.Sprintf("client%d", i), remote(i), v.clientArgs...)
		c.Link = link
		v.clients = append(v.clients, c)
		v.logs = append(v.logs, c.Log)
		added = append(added, c)
	}
	return added
}

// clientAddr returns the bridge address of client i.
func clientAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)}) }

// upResult is what waitUp learns about one client.
type upResult struct {
	client *ovpnClient
	tunnel netip.Prefix // its pushed tun address
	server *ovpnServer  // the backend whose subnet holds that address
	err    error
}

// waitUp waits (in parallel) for the clients' tunnels and maps each to the
// backend it landed on by its pushed address. It fails the test if any
// tunnel did not come up.
func (v *vpnLab) waitUp(clients []*ovpnClient) []upResult {
	v.t.Helper()
	res := make([]upResult, len(clients))
	timeout := v.wait(tunnelUpTimeout)
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := upResult{client: c}
			r.tunnel, r.err = c.WaitUp(timeout)
			if r.err == nil {
				for _, s := range v.servers {
					if s.Subnet.Contains(r.tunnel.Addr()) {
						r.server = s
					}
				}
				if r.server == nil {
					r.err = fmt.Errorf("%s: pushed address %v is in no backend's subnet", c.Name, r.tunnel)
				}
			}
			res[i] = r
		}()
	}
	wg.Wait()
	failed := false
	for _, r := range res {
		if r.err != nil {
			v.t.Errorf("tunnel: %v", r.err)
			failed = true
		}
	}
	if failed {
		v.t.FailNow()
	}
	return res
}

var pingRecvRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// pingAll pings, from every client's namespace over its tun device, the
// tunnel address of the backend it landed on: `ping -c 3 -W 2`, all 3 of
// which must be answered.
func (v *vpnLab) pingAll(ups []upResult) {
	v.t.Helper()
	errs := make([]error, len(ups))
	var wg sync.WaitGroup
	for i, u := range ups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			gw := u.server.Gateway.String()
			out, err := u.client.NS.Command("ping", "-c", "3", "-W", "2", "-I", clientDev, gw).CombinedOutput()
			m := pingRecvRE.FindStringSubmatch(string(out))
			switch {
			case err != nil:
				errs[i] = fmt.Errorf("%s: ping %s: %v\n%s", u.client.Name, gw, err, out)
			case m == nil || m[1] != "3" || m[2] != "3":
				errs[i] = fmt.Errorf("%s: ping %s: not all 3 answered\n%s", u.client.Name, gw, out)
			}
		}()
	}
	wg.Wait()
	failed := false
	for i, err := range errs {
		if err != nil {
			stats, _ := ups[i].client.NS.Command("ip", "-s", "link", "show", "dev", clientDev).CombinedOutput()
			v.t.Errorf("%v\n%s's %s counters:\n%s", err, ups[i].client.Name, clientDev, stats)
			failed = true
		}
	}
	if failed {
		stats, _ := v.backend.Command("ip", "-s", "link", "show").CombinedOutput()
		v.t.Logf("backend interface counters:\n%s", stats)
		v.t.FailNow()
	}
}

// checkServers checks each backend's view of its clients: its status file
// lists exactly the clients that landed on it, each once, with the tunnel
// address the client got, and with a source address accepted by wantSource;
// no two clients share a source address:port; and its log shows exactly one
// source address:port per client over the whole run (no reconnects from a
// new port, no floats). It returns each backend's status rows.
func (v *vpnLab) checkServers(ups []upResult, wantSource func(c *ovpnClient, src netip.AddrPort) error) map[*ovpnServer][]statusClient {
	v.t.Helper()
	status := map[*ovpnServer][]statusClient{}
	byServer := map[*ovpnServer][]upResult{}
	for _, u := range ups {
		byServer[u.server] = append(byServer[u.server], u)
	}
	for _, s := range v.servers {
		mine := byServer[s]
		var names []string
		tunnel := map[string]netip.Addr{}
		client := map[string]*ovpnClient{}
		for _, u := range mine {
			names = append(names, u.client.Name)
			tunnel[u.client.Name] = u.tunnel.Addr()
			client[u.client.Name] = u.client
		}
		sort.Strings(names)
		rows, err := s.WaitClients(names, v.wait(statusTimeout))
		if err != nil {
			v.t.Errorf("%v", err)
			continue
		}
		status[s] = rows
		seen := map[netip.AddrPort]string{}
		for _, r := range rows {
			if other, dup := seen[r.Real]; dup {
				v.t.Errorf("%s: clients %s and %s share source address %v", s.Name, other, r.CommonName, r.Real)
			}
			seen[r.Real] = r.CommonName
			if r.Virtual != tunnel[r.CommonName] {
				v.t.Errorf("%s: status gives %s tunnel address %v; client has %v", s.Name, r.CommonName, r.Virtual, tunnel[r.CommonName])
			}
			if err := wantSource(client[r.CommonName], r.Real); err != nil {
				v.t.Errorf("%s: %s: %v", s.Name, r.CommonName, err)
			}
		}
		logData, err := readFile(s.Log)
		if err != nil {
			v.t.Error(err)
			continue
		}
		peers := peerAddresses(logData)
		for _, r := range rows {
			if got := peers[r.CommonName]; len(got) != 1 || got[0] != r.Real.String() {
				v.t.Errorf("%s: log shows %s connecting from %v; want exactly its status address %v", s.Name, r.CommonName, got, r.Real)
			}
		}
		for cn := range peers {
			if _, ok := client[cn]; !ok {
				v.t.Errorf("%s: log shows %s connecting, but that client landed on another backend", s.Name, cn)
			}
		}
		v.t.Logf("%s (%v): %d clients: %s", s.Name, s.Subnet, len(rows), describeRows(rows))
	}
	return status
}

// checkUpstreamSockets checks udpmux's side of the sessions: in the udpmux
// namespace there is exactly one UDP socket connected to a backend per
// session, and those sockets are exactly the source addresses the backends
// list in their status files.
func (v *vpnLab) checkUpstreamSockets(status map[*ovpnServer][]statusClient) {
	v.t.Helper()
	v.checkSessionSockets(v.mux, status, false)
}

// checkSessionSockets is checkUpstreamSockets for the udpmux in namespace
// ns; with others set, udpmux may also hold upstream sockets of sessions
// that no backend lists (opened by datagrams that were not OpenVPN's, such
// as a spoofing test's).
func (v *vpnLab) checkSessionSockets(ns *netlab.Namespace, status map[*ovpnServer][]statusClient, others bool) {
	v.t.Helper()
	socks, err := udpSockets(ns)
	if err != nil {
		v.t.Error(err)
		return
	}
	backends := map[netip.AddrPort]bool{}
	for _, s := range v.servers {
		backends[s.Listen] = true
	}
	type pair struct{ local, remote netip.AddrPort }
	got := map[pair]int{}
	for _, s := range socks {
		if backends[s.Remote] {
			got[pair{s.Local, s.Remote}]++
		}
	}
	want := map[pair]int{}
	for s, rows := range status {
		for _, r := range rows {
			want[pair{r.Real, s.Listen}]++
		}
	}
	for p, n := range got {
		if n != 1 {
			v.t.Errorf("udpmux has %d sockets %v -> %v; want one per session", n, p.local, p.remote)
		}
		if want[p] == 0 && !others {
			v.t.Errorf("udpmux socket %v -> %v belongs to no session a backend lists", p.local, p.remote)
		}
	}
	for p := range want {
		if got[p] == 0 {
			v.t.Errorf("backend %v lists a client at %v, but udpmux has no socket %v connected to it", p.remote, p.local, p.local)
		}
	}
	if v.t.Failed() {
		v.t.Logf("UDP sockets in the udpmux namespace %s: %v", ns.Label(), socks)
	}
}

func describeRows(rows []statusClient) string {
	var parts []string
	for _, r := range rows {
		parts = append(parts, fmt.Sprintf("%s@%v=%v", r.CommonName, r.Real, r.Virtual))
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

// backendsUsed counts the distinct backends in ups.
func backendsUsed(ups []upResult) int {
	set := map[*ovpnServer]bool{}
	for _, u := range ups {
		set[u.server] = true
	}
	return len(set)
}

// TestOpenVPNDirect validates the OpenVPN scaffolding without udpmux: the
// clients are routed straight to the backends, client i to backend i%2.
// When TestOpenVPNThroughProxy fails, this test tells whether the lab
// (namespaces, certificates, OpenVPN configuration, log and status parsing)
// works at all.
func TestOpenVPNDirect(t *testing.T) {
	start := time.Now()
	v := newVPNLab(t, true)
	remote := func(i int) netip.AddrPort { return v.servers[i%2].Listen }
	clients := v.addClients(clientBatch, remote)
	ups := v.waitUp(clients)
	for i, u := range ups {
		if want := v.servers[i%2]; u.server != want {
			t.Errorf("%s connected to %s but got address %v from %s's subnet", u.client.Name, want.Name, u.tunnel, u.server.Name)
		}
	}
	v.pingAll(ups)
	v.checkServers(ups, func(c *ovpnClient, src netip.AddrPort) error {
		i := slices.Index(v.clients, c)
		if src.Addr() != clientAddr(i) {
			return fmt.Errorf("backend saw source %v; want the client's own address %v", src, clientAddr(i))
		}
		return nil
	})
	t.Logf("direct: %d clients up, pinged and checked in %v", len(ups), time.Since(start).Round(time.Millisecond))
}

// TestOpenVPNThroughProxy runs real OpenVPN clients through udpmux's proxy
// handler to two OpenVPN server processes and checks that every tunnel
// comes up and carries traffic, that sessions are spread over both backends
// (see clientBatch for why this is robust), and that each backend sees every
// client from exactly one source address:port, which is udpmux's
// backend-side address: traffic really went through udpmux, over one
// upstream socket per session; and that udpmux holds exactly those
// connected upstream sockets. Finally udpmux must shut down cleanly on
// SIGTERM.
func TestOpenVPNThroughProxy(t *testing.T) {
	start := time.Now()
	v, d, ups := startProxyLab(t, "")
	status := v.checkServers(ups, viaProxy)
	v.checkUpstreamSockets(status)
	d.Stop(t)
	t.Logf("proxy: %d clients up, pinged and checked in %v", len(ups), time.Since(start).Round(time.Millisecond))
}

// startProxyLab builds the VPN lab, runs udpmux's proxy handler between the
// clients and both backends (its config gets extra appended, e.g. a control
// section), starts clientBatch clients through it (a second batch if the
// first all landed on one backend), checks that sessions are spread over
// both backends, and pings every tunnel (pingAll).
func startProxyLab(t *testing.T, extra string) (*vpnLab, *daemon, []upResult) {
	t.Helper()
	requireOpenVPN(t)
	netlab.RequireRoot(t)
	udpmuxBinary(t) // build (or fail) before building the lab
	v := newVPNLab(t, false)
	var backends []string
	for _, s := range v.servers {
		backends = append(backends, fmt.Sprintf("%q", s.Listen.String()))
	}
	config := fmt.Sprintf(`workers: 2
batch: 64
listeners:
  - name: vpn
    address: %q
    handler: proxy
    dissector: flow
    idle_timeout: 60s
    backends: [%s]
    balance: maglev
sessions:
  max: 10000
  max_per_source: 0
`, muxListen.String(), strings.Join(backends, ", ")) + extra
	d := startDaemon(t, v.lab, v.mux, v.dir, config, "proxy", muxListen.Port())
	v.logs = append(v.logs, d.Config, d.Log)

	remote := func(int) netip.AddrPort { return muxListen }
	ups := v.waitUp(v.addClients(clientBatch, remote))
	if backendsUsed(ups) < 2 {
		t.Logf("all %d clients landed on %s; adding %d more", len(ups), ups[0].server.Name, clientBatch)
		ups = append(ups, v.waitUp(v.addClients(clientBatch, remote))...)
	}
	if n := backendsUsed(ups); n < 2 {
		t.Errorf("all %d sessions landed on %s: udpmux did not spread sessions over both backends", len(ups), ups[0].server.Name)
	}
	v.pingAll(ups)
	return v, d, ups
}

// viaProxy accepts a backend's view of a client's source address when it
// is udpmux's backend-side address (checkServers' wantSource for proxied
// clients).
func viaProxy(c *ovpnClient, src netip.AddrPort) error {
	if src.Addr() != muxBackAddr {
		return fmt.Errorf("backend saw source %v; want udpmux's backend-side address %v (traffic did not go through udpmux?)", src, muxBackAddr)
	}
	return nil
}

// readFile returns a file's contents as a string.
func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}
