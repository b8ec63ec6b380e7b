//go:build linux

package e2e

import (
	"cmp"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/netlab"
)

// The WireGuard lab. Clients sit on a bridge in the udpmux namespace as in
// the OpenVPN lab; each backend is a wireguard-go process in a namespace of
// its own on a second bridge there. Both backends have the same private key
// and every client as a peer (AllowedIPs its /32), and the same tunnel
// address 10.77.0.1 (in separate namespaces), so a client could be served by
// either: which one serves it shows only in their `wg show dump`.
//
//	client_i 198.18.0.10+i ─┐                              ┌─ 198.19.0.2 [wgback0] :51820 10.77.0.1
//	 (roams to .210+i)      ├─ br0 198.18.0.2 [mux] 198.19.0.1 br1 ─┤
//	 wg 10.77.0.10+i :51900 ┘                              └─ 198.19.0.3 [wgback1] :51821 10.77.0.1
var (
	wgListen       = netip.AddrPortFrom(muxFrontAddr, 51820) // udpmux's listener
	wgBackends     = []netip.AddrPort{netip.MustParseAddrPort("198.19.0.2:51820"), netip.MustParseAddrPort("198.19.0.3:51821")}
	wgServerTunnel = netip.MustParsePrefix("10.77.0.1/24") // every backend's tunnel address
)

// wgClientPort is every client's WireGuard listen port (each is alone in its
// namespace); the NAT moves it.
const wgClientPort = 51900

// wgClientTunnel is client i's tunnel address.
func wgClientTunnel(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, 0, byte(10 + i)}), 24)
}

type wgBackend struct {
	Name   string
	NS     *netlab.Namespace
	Dev    *wgDev
	Listen netip.AddrPort
}

type wgClient struct {
	Name     string
	NS       *netlab.Namespace
	Dev      *wgDev
	Link     string
	Key      wgKey
	Tunnel   netip.Prefix
	Endpoint netip.AddrPort // where it sends: a backend (direct) or udpmux
}

type wgLab struct {
	t        *testing.T
	lab      *netlab.Lab
	dir      string
	direct   bool
	mux      *netlab.Namespace
	front    string // the clients' bridge in mux
	back     string // the backends' bridge in mux
	key      wgKey  // the backends' key
	KeyFile  string // the backends' private key file
	backends []*wgBackend
	clients  []*wgClient
	logs     []string
	end      time.Time
}

// wait returns d, or less if the test's budget ends sooner.
func (w *wgLab) wait(d time.Duration) time.Duration { return max(min(d, time.Until(w.end)), 0) }

// newWGLab builds the WireGuard lab with n clients, whose endpoint is
// backend i%2 (direct: the udpmux namespace routes between the bridges) or
// udpmux's listener (otherwise: no forwarding, the clients reach the
// backends only through a process there). Nothing has been sent yet when it
// returns: a client's first handshake waits for its first datagram. The
// backends' key is made by the caller (keyFile holds its private half),
// since the config the daemon is checked with names the file.
//
// With transparent, the backends route the clients' network through the
// udpmux namespace, which delivers their replies to udpmux's sockets bound
// to the clients' addresses (source: client; transparentRouting).
func newWGLab(t *testing.T, direct, transparent bool, n int, key wgKey, keyFile, dir string, start time.Time) *wgLab {
	t.Helper()
	lab := netlab.New(t)
	w := &wgLab{t: t, lab: lab, dir: dir, direct: direct, key: key, KeyFile: keyFile, end: start.Add(roamBudget)}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("UDPMUX_E2E_DUMP") == "1" {
			for _, d := range w.devs() {
				if out, err := d.wg("show", d.Name); err == nil {
					t.Logf("==== wg show %s (%s):\n%s", d.Name, d.NS.Label(), out)
				}
			}
			dumpLogs(t, w.logs...)
		}
	})
	w.mux = lab.NewNamespace("mux")
	front := w.mux.AddBridge("br0")
	w.front = front
	w.mux.AddAddr(front, netip.PrefixFrom(muxFrontAddr, 24).String())
	back := w.mux.AddBridge("br1")
	w.back = back
	w.mux.AddAddr(back, netip.PrefixFrom(muxBackAddr, 24).String())
	if direct {
		w.mux.EnableForwarding()
	}
	var clientKeys []wgKey
	for range n {
		clientKeys = append(clientKeys, newWGKey(t))
	}
	for i, listen := range wgBackends {
		name := fmt.Sprintf("wgback%d", i)
		ns := lab.NewNamespace(name)
		ns.DisableIPv6()
		_, muxIf := lab.Connect(ns, netip.PrefixFrom(listen.Addr(), 24).String(), w.mux, "")
		w.mux.SetMaster(muxIf, back)
		if direct || transparent {
			ns.AddRoute("198.18.0.0/24", muxBackAddr.String())
		}
		dev := startWGBackend(t, lab, ns, dir, name, listen.Port(), w.KeyFile, clientKeys)
		w.backends = append(w.backends, &wgBackend{Name: name, NS: ns, Dev: dev, Listen: listen})
		w.logs = append(w.logs, dev.Log)
	}
	if transparent {
		transparentRouting(t, w.mux, back)
	}
	for i := range n {
		name := fmt.Sprintf("wgclient%d", i)
		ns := lab.NewNamespace(name)
		ns.DisableIPv6()
		link, muxIf := lab.Connect(ns, netip.PrefixFrom(clientAddr(i), 24).String(), w.mux, "")
		w.mux.SetMaster(muxIf, front)
		ep := wgListen
		if direct {
			ns.AddRoute("198.19.0.0/24", muxFrontAddr.String())
			ep = wgBackends[i%len(wgBackends)]
		}
		dev := startWGClient(t, lab, ns, dir, name, i, clientKeys[i], key.Public, ep)
		w.clients = append(w.clients, &wgClient{Name: name, NS: ns, Dev: dev, Link: link, Key: clientKeys[i], Tunnel: wgClientTunnel(i), Endpoint: ep})
		w.logs = append(w.logs, dev.Log)
	}
	return w
}

// startWGBackend runs a WireGuard backend in ns: wireguard-go listening
// on port with the private key in keyFile (every backend has the same),
// every client of clientKeys as a peer (client i's tunnel address its
// allowed IPs), and the backends' tunnel address.
func startWGBackend(t *testing.T, lab *netlab.Lab, ns *netlab.Namespace, dir, name string, port uint16, keyFile string, clientKeys []wgKey) *wgDev {
	t.Helper()
	dev := startWireGuard(t, lab, ns, dir, name)
	args := []string{"listen-port", strconv.Itoa(int(port)), "private-key", keyFile}
	for c, k := range clientKeys {
		args = append(args, "peer", k.Public, "allowed-ips", netip.PrefixFrom(wgClientTunnel(c).Addr(), 32).String())
	}
	dev.Set(args...)
	dev.Up(wgServerTunnel)
	return dev
}

// startWGClient runs WireGuard client i in ns: wireguard-go on
// wgClientPort with key, the backends' public key as its peer at endpoint
// ep, and its tunnel address. Nothing is sent until its first datagram.
func startWGClient(t *testing.T, lab *netlab.Lab, ns *netlab.Namespace, dir, name string, i int, key wgKey, backendPub string, ep netip.AddrPort) *wgDev {
	t.Helper()
	keyFile := key.writeKey(t, dir, name+".key")
	dev := startWireGuard(t, lab, ns, dir, name)
	dev.Set("listen-port", strconv.Itoa(wgClientPort), "private-key", keyFile,
		"peer", backendPub, "endpoint", ep.String(), "allowed-ips", wgServerTunnel.Masked().String())
	dev.Up(wgClientTunnel(i))
	return dev
}

func (w *wgLab) devs() []*wgDev {
	var out []*wgDev
	for _, b := range w.backends {
		out = append(out, b.Dev)
	}
	for _, c := range w.clients {
		out = append(out, c.Dev)
	}
	return out
}

// roamers returns the clients as roamers pinging their backend's tunnel
// address over WireGuard.
func (w *wgLab) roamers() []*roamer {
	var rs []*roamer
	for i, c := range w.clients {
		r := &roamer{Name: c.Name, NS: c.NS, Link: c.Link, SPort: wgClientPort, Addr: clientAddr(i), Alt: roamAltAddr(i), Dev: c.Dev.Name, Target: wgServerTunnel.Addr()}
		r.addAlt()
		rs = append(rs, r)
	}
	return rs
}

// wgState is what the lab's WireGuard devices report at one moment.
type wgState struct {
	client     []wgPeer            // each client's view of its (only) peer, the backends' key
	backend    []map[string]wgPeer // each backend's peers by public key
	clientHS   []int               // handshake messages each client logged
	backendHS  []int
	servedBy   []int // per client: the backend that has a handshake with it, -1 none or several
	servedErrs []error
}

// state reads every device's dump and log.
func (w *wgLab) state() wgState {
	w.t.Helper()
	var s wgState
	for _, b := range w.backends {
		peers, err := b.Dev.Dump()
		if err != nil {
			w.t.Fatal(err)
		}
		s.backend = append(s.backend, peers)
		s.backendHS = append(s.backendHS, b.Dev.Handshakes())
	}
	for _, c := range w.clients {
		peers, err := c.Dev.Dump()
		if err != nil {
			w.t.Fatal(err)
		}
		p, ok := peers[w.key.Public]
		if !ok {
			w.t.Fatalf("%s: wg dump lacks the backends' peer %s", c.Name, w.key.Public)
		}
		s.client = append(s.client, p)
		s.clientHS = append(s.clientHS, c.Dev.Handshakes())
		served, err := -1, error(nil)
		var with []string
		for bi, peers := range s.backend {
			if peers[c.Key.Public].Handshake != 0 {
				with = append(with, w.backends[bi].Name)
				served = bi
			}
		}
		switch len(with) {
		case 0:
			err = fmt.Errorf("%s has a handshake with no backend", c.Name)
		case 1:
		default:
			served, err = -1, fmt.Errorf("%s has had handshakes with several backends: %v", c.Name, with)
		}
		s.servedBy = append(s.servedBy, served)
		s.servedErrs = append(s.servedErrs, err)
	}
	return s
}

// wgRoamOptions choose a WireGuard roaming test's variant.
type wgRoamOptions struct {
	direct  bool // clients talk to the backends directly, no udpmux
	key     bool // give udpmux the backends' private key (wireguard: {private_key: FILE})
	upgrade bool // upgrade udpmux (SIGUSR2) in the middle of the moves
	fast    bool // fast_path: nftables (the udpmux namespace forwards)
	clients int  // tunnels; 0 means roamClients
	// transparent has udpmux send from the clients' addresses (source:
	// client), so that the backends see them as directly.
	transparent bool
}

// fastPathExtra is the listener's fast_path key, with fast.
func fastPathExtra(fast bool) string {
	if !fast {
		return ""
	}
	return "    fast_path: nftables\n"
}

// wgListenerExtra is the listener's WireGuard options in the config: with
// key, the map that gives the dissector the backends' private key.
func wgListenerExtra(key bool, keyFile string) string {
	if !key {
		return ""
	}
	return fmt.Sprintf("    wireguard:\n      private_key: %q\n", keyFile)
}

// sourceClientKey is the listener key of udpmux's transparent source, in
// the roaming config (see roamingConfig).
const sourceClientKey = "    source: client\n"

// runWireGuardRoaming is the WireGuard roaming test: roamClients tunnels,
// each client behind its NAT rebinding its source port roamRounds-1 times
// and changing its source address once, interleaved, while each pings its
// backend over the tunnel every 0.2 s. It checks that after each move the
// tunnel carried traffic again within roamRecovery; that no client or
// backend made a new handshake (latest handshakes and the handshake
// messages in wireguard-go's logs unchanged); that each client is still
// served by the backend it started on, which received its traffic
// throughout, and no other backend ever had a handshake with it; and the
// backend's view of the client's endpoint: the client's last mapping
// (direct: WireGuard follows it) or udpmux's unchanged upstream socket.
// With transparent, the backend sees the client as direct. Through udpmux,
// it also checks that udpmux holds one session per client afterwards, with
// fast all of them in the kernel, and shuts down cleanly, and with
// transparent and upgrade that no echo request sent during the upgrade was
// lost (see runRoaming). It returns the run, for more checks.
func runWireGuardRoaming(t *testing.T, o wgRoamOptions) *wgRun {
	r := setupWireGuard(t, o)
	runRoaming(t, r.tunnelCase())
	return r
}

// wgRun is a WireGuard test set up by setupWireGuard.
type wgRun struct {
	o      wgRoamOptions
	w      *wgLab
	d      *daemon // nil when direct
	sock   string  // udpmux's control socket
	rs     []*roamer
	before wgState
	start  time.Time
	// configFor is udpmux's config with the control socket sock.
	configFor func(sock string) string
	// via is, once a udpmux that never saw the sessions has recovered
	// them, the upstream socket of each client's session there, which its
	// backend must see it at (see check).
	via []netip.AddrPort
}

// tunnelCase is r as the roaming and spoofing runners see it.
func (r *wgRun) tunnelCase() *tunnelCase {
	return &tunnelCase{name: "WireGuard", lab: r.w.lab, mux: r.w.mux, bridge: r.w.front, listen: wgListen, d: r.d, sock: r.sock,
		rs: r.rs, start: r.start, wait: r.w.wait, upgrade: r.o.upgrade, transparent: r.o.transparent, fast: r.o.fast,
		burst: wgSpoofBurst(nil), check: r.check}
}

// setupWireGuard builds the WireGuard lab with roamClients clients (or
// o.clients), through
// udpmux (which it starts) or direct, starts each client's continuous ping
// and records which backend serves each client: backend i%2 from the
// client's own address (direct) or any backend from udpmux's address.
func setupWireGuard(t *testing.T, o wgRoamOptions) *wgRun {
	t.Helper()
	r := &wgRun{o: o, start: time.Now()}
	requireRoaming(t, true)
	dir := t.TempDir()
	key := newWGKey(t)
	keyFile := key.writeKey(t, dir, "backend.key")
	r.sock = filepath.Join(dir, "ctl.sock")
	extra := wgListenerExtra(o.key, keyFile)
	if o.transparent {
		extra += sourceClientKey
	}
	r.configFor = func(sock string) string {
		return roamingConfig(wgListen, wgBackends, "wireguard", extra+fastPathExtra(o.fast), sock)
	}
	var config string
	if !o.direct {
		config = r.configFor(r.sock)
		if !o.fast { // validate checks this host's forwarding, not the lab's
			requireDissector(t, config, "wireguard")
		}
	}
	r.w = newWGLab(t, o.direct, o.transparent, cmp.Or(o.clients, roamClients), key, keyFile, dir, r.start)
	if o.fast {
		r.w.mux.EnableForwarding()
	}
	if !o.direct {
		r.d = startRoamingDaemon(t, r.w.lab, r.w.mux, dir, config, "wireguard", wgListen.Port())
		r.w.logs = append(r.w.logs, r.d.Config, r.d.Log)
	}
	r.rs = r.w.roamers()
	startRoamPings(t, r.w.lab, r.rs, r.w.wait)
	r.before = r.w.state()
	for i, c := range r.w.clients {
		if err := r.before.servedErrs[i]; err != nil {
			t.Fatalf("at the start: %v", err)
		}
		b := r.before.servedBy[i]
		ep := r.before.backend[b][c.Key.Public].Endpoint
		if o.transparent {
			if want := netip.AddrPortFrom(clientAddr(i), wgClientPort); ep != want {
				t.Fatalf("at the start: %s reaches %s from %v; want its own address %v (source: client)", c.Name, r.w.backends[b].Name, ep, want)
			}
		} else if o.direct {
			if want := netip.AddrPortFrom(clientAddr(i), wgClientPort); b != i%2 || ep != want {
				t.Fatalf("at the start: %s is served by %s from %v; want %s from %v", c.Name, r.w.backends[b].Name, ep, r.w.backends[i%2].Name, want)
			}
		} else if ep.Addr() != muxBackAddr {
			t.Fatalf("at the start: %s reaches %s from %v; want udpmux's backend-side address %v", c.Name, r.w.backends[b].Name, ep, muxBackAddr)
		}
		t.Logf("%s (%v) served by %s, which sees it at %v", c.Name, c.Tunnel.Addr(), r.w.backends[b].Name, ep)
	}
	return r
}

// check compares the devices' state now with the start (the pings have
// been stopped): the same backend serves each client, no new handshake,
// traffic reached that backend, which sees the client at its last mapping
// (direct: WireGuard follows it), at udpmux's unchanged upstream socket, or
// at the one a udpmux that recovered the session uses (via).
// during names the interval for the messages ("the moves").
func (r *wgRun) check(t *testing.T, during string) {
	t.Helper()
	w, before := r.w, r.before
	now := w.state()
	for i, c := range w.clients {
		b := before.servedBy[i]
		bname := w.backends[b].Name
		if err := now.servedErrs[i]; err != nil {
			t.Errorf("after %s: %v (a new handshake with another backend)", during, err)
		} else if now.servedBy[i] != b {
			t.Errorf("%s moved from %s to %s", c.Name, bname, w.backends[now.servedBy[i]].Name)
		}
		if was, is := before.client[i].Handshake, now.client[i].Handshake; was != is {
			t.Errorf("%s: latest handshake %s, was %s: it made a new handshake", c.Name, hsTime(is), hsTime(was))
		}
		was, is := before.backend[b][c.Key.Public], now.backend[b][c.Key.Public]
		if was.Handshake != is.Handshake {
			t.Errorf("%s: latest handshake with %s %s, was %s", bname, c.Name, hsTime(is.Handshake), hsTime(was.Handshake))
		}
		if now.clientHS[i] != before.clientHS[i] {
			t.Errorf("%s: wireguard-go logged %d handshake messages during %s", c.Name, now.clientHS[i]-before.clientHS[i], during)
		}
		if is.RX <= was.RX {
			t.Errorf("%s received nothing from %s during %s (rx %d -> %d)", bname, c.Name, during, was.RX, is.RX)
		}
		if r.o.direct || r.o.transparent {
			want := r.rs[i].mapping
			if !want.IsValid() {
				want = netip.AddrPortFrom(r.rs[i].Addr, r.rs[i].SPort)
			}
			if is.Endpoint != want {
				t.Errorf("%s sees %s at %v after %s; want its last mapping %v (WireGuard follows a roaming peer; with source: client udpmux sends from it)", bname, c.Name, is.Endpoint, during, want)
			}
		} else if r.via != nil {
			if !r.via[i].IsValid() {
				t.Errorf("%s sees %s at %v after %s: udpmux recovered no session for it", bname, c.Name, is.Endpoint, during)
			} else if is.Endpoint != r.via[i] {
				t.Errorf("%s sees %s at %v after %s; want the recovered session's upstream socket %v", bname, c.Name, is.Endpoint, during, r.via[i])
			}
		} else if is.Endpoint != was.Endpoint {
			t.Errorf("%s sees %s at %v after %s; it was %v: udpmux changed the session's upstream socket", bname, c.Name, is.Endpoint, during, was.Endpoint)
		}
		t.Logf("%s: started on %s (rx there %d -> %d bytes during %s), which sees it at %v now, latest handshake %s",
			c.Name, bname, was.RX, is.RX, during, is.Endpoint, hsTime(is.Handshake))
	}
	for bi := range w.backends {
		if d := now.backendHS[bi] - before.backendHS[bi]; d != 0 {
			t.Errorf("%s: wireguard-go logged %d handshake messages during %s", w.backends[bi].Name, d, during)
		}
	}
}

// hsTime renders a latest-handshake time.
func hsTime(unix int64) string {
	if unix == 0 {
		return "never"
	}
	return time.Unix(unix, 0).Format("15:04:05")
}

// TestWireGuardRoamingDirect validates the roaming harness with WireGuard
// alone: the clients talk straight to the backends (routed through the
// udpmux namespace, no udpmux), and WireGuard itself follows a peer whose
// authenticated datagrams come from a new address. See runWireGuardRoaming
// for the checks.
func TestWireGuardRoamingDirect(t *testing.T) {
	runWireGuardRoaming(t, wgRoamOptions{direct: true})
}

// TestWireGuardRoamingThroughUdpmux moves the clients while their tunnels
// go through udpmux (proxy to two backends, maglev, dissector wireguard
// with the backends' private key).
func TestWireGuardRoamingThroughUdpmux(t *testing.T) {
	runWireGuardRoaming(t, wgRoamOptions{key: true})
}

// TestWireGuardRoamingThroughUdpmuxNoKey is TestWireGuardRoamingThroughUdpmux
// without giving udpmux the private key: it can follow the clients only by
// what it learns from the backends' replies (receiver indexes).
func TestWireGuardRoamingThroughUdpmuxNoKey(t *testing.T) {
	runWireGuardRoaming(t, wgRoamOptions{})
}

// TestWireGuardRoamingFastPath is TestWireGuardRoamingThroughUdpmux with
// fast_path: nftables: the tunnels' transport messages go through the
// kernel, and their moves still through udpmux, which moves the kernel's
// elements with the session. Every session must be in the kernel at the end,
// and the kernel must have carried their pings.
func TestWireGuardRoamingFastPath(t *testing.T) {
	runWireGuardRoaming(t, wgRoamOptions{key: true, fast: true})
}

// TestWireGuardRoamingFastPathThroughUpgrade is
// TestWireGuardRoamingThroughUpgrade with the fast path: the successor
// claims the kernel's elements of the sessions it takes over.
func TestWireGuardRoamingFastPathThroughUpgrade(t *testing.T) {
	runWireGuardRoaming(t, wgRoamOptions{key: true, fast: true, upgrade: true})
}

// TestWireGuardRoamingThroughUpgrade upgrades udpmux (SIGUSR2) in the
// middle of the moves: the sessions, and what they learned about their
// clients, must survive it.
func TestWireGuardRoamingThroughUpgrade(t *testing.T) {
	runWireGuardRoaming(t, wgRoamOptions{key: true, upgrade: true})
}
