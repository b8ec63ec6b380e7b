package main

import (
	"fmt"
	"slices"
)

// Scenario kinds: what the server does with each datagram.
const (
	kindSink  = "sink"  // the server reads and drops
	kindEcho  = "echo"  // the server returns every datagram
	kindProxy = "proxy" // the server relays to echo backends and back
)

// Series: which table of RESULTS.md a configuration belongs to.
const (
	seriesMatrix   = "matrix"         // the sink, echo and proxy tables
	seriesGrowth   = "growth"         // echo cost as concurrent flows grow
	seriesListener = "listener"       // net.Conn-per-peer listeners (pion, mux.Listen)
	seriesTunnel   = "tunnel"         // the proxy with WireGuard transport messages
	seriesOpenVPN  = "tunnel-openvpn" // the proxy with OpenVPN P_DATA_V2 packets
	seriesGRO      = "gro"            // bursts of 1400-byte datagrams, with and without GRO on the veths
	seriesFlood    = "flood"          // established sessions while new sources flood the server beyond its capacity
)

// Generator protocols (loadgen -proto).
const (
	protoPlain     = ""          // the wire header at offset 0
	protoWireGuard = "wireguard" // WireGuard type-4 messages around it
	protoOpenVPN   = "openvpn"   // OpenVPN P_DATA_V2 packets around it
)

// config is one point of the matrix.
type config struct {
	Kind   string  `json:"kind"`
	Flows  int     `json:"flows"`
	Size   int     `json:"size"`
	Rate   float64 `json:"rate"`   // 0 = the generator's maximum
	Burst  int     `json:"burst"`  // datagrams per flow per sendmmsg
	Series string  `json:"series"` // which table (series… constants)
	Proto  string  `json:"proto,omitempty"`
	// Flood is the number of new sources that send floodRate datagrams a
	// second beside the measured flows in each measured run (not the
	// warm-up), from the same generator core; the server then holds at
	// most Flows+floodRoom sessions, so most of them find it full.
	Flood int `json:"flood,omitempty"`
	// GRO names the server-side veth with generic receive offload turned
	// on for this configuration ("vs": datagrams from the clients, "vsb":
	// from the backends), or is empty for GRO off on both.
	GRO string `json:"gro,omitempty"`
}

func (c config) String() string {
	rate := "max"
	if c.Rate > 0 {
		rate = fmt.Sprintf("%gk/s", c.Rate/1000)
	}
	s := fmt.Sprintf("%s %s %d flows %dB %s", c.Series, c.Kind, c.Flows, c.Size, rate)
	if c.Proto != "" {
		s += " " + c.Proto
	}
	if c.GRO != "" {
		s += " gro:" + c.GRO
	}
	if c.Flood > 0 {
		s += fmt.Sprintf(" flood:%d", c.Flood)
	}
	return s
}

// shape is a number of flows and a datagram size.
type shape struct{ flows, size int }

// scenario is one set of peers measured on one set of configurations, with
// one server per peer serving all of them.
type scenario struct {
	part     string          // the -only name that selects it
	series   string          // config.Series of its configurations
	kind     string          // what the server does (kind… constants)
	peers    []string        // the first is the reference of its ratios
	searched map[string]bool // peers whose RFC 2544 throughput is searched
	crossCk  bool            // one run per peer with the SCHED_IDLE spinner
	profiled map[string]bool // peers profiled with perf in one extra run
	configs  []config
	// capacity, if not 0, bounds the server's sessions (udpmux's
	// sessions.max, connected's -max-sessions).
	capacity int
}

// Part names that -only may give beyond the scenario kinds.
const (
	partListener  = "listener"
	partTunnel    = "tunnel"
	partGRO       = "gro"
	partFlowtable = "flowtable"
	partConnected = "connected" // the connected-socket peer: growth and flood
)

// parts are what -only may name.
var parts = []string{kindSink, kindEcho, kindProxy, partListener, partTunnel, partGRO, partFlowtable, partConnected}

// growthFlows are the flow counts of the "how cost grows" series, measured
// at growthRate with one datagram per flow per send.
var growthFlows = []int{256, 10000, 100000}

const growthRate = 50000

// The flood series: floodSources new sources sending floodRate datagrams a
// second in all, while the server has room for floodRoom sessions beyond
// the established flows.
const (
	floodSources = 20000
	floodRate    = 50000
	floodRoom    = 1000
)

// Sizes of the tunnel series: WireGuard transport messages are 32 bytes
// plus a multiple of 16.
var tunnelSizes = []int{64, 1392}

// Sizes of the OpenVPN tunnel series: a P_DATA_V2 packet of an AEAD cipher
// is its 8-byte header, the ciphertext (any length) and a 16-byte tag.
var tunnelOpenVPNSizes = []int{64, 1400}

// groBurst is the burst per flow of the GRO series: bulk tunnel traffic.
const groBurst = 16

// Peers of each scenario.
var (
	sinkPeers     = []string{"bare", "gonet", "gnet", "udpmux"}
	echoPeers     = []string{"bare-gso", "bare", "gonet", "gnet", "udpmux"}
	growthPeers   = []string{"bare-gso", "bare", "udpmux"}
	proxyPeers    = []string{"nginx", "udpmux", "udpmux-fast", "nat", "route"}
	listenerPeers = []string{"pion", "muxlisten"}
	tunnelPeers   = []string{"udpmux", "udpmux-wg", "udpmux-wg-fast", "nat"}
	ovpnPeers     = []string{"udpmux", "udpmux-ovpn", "udpmux-ovpn-fast", "nat"}
	groEchoPeers  = []string{"udpmux", "bare-gro"}
	groProxyPeers = []string{"udpmux"}
	floodPeers    = []string{"udpmux", "connected"}
)

// set returns a set of names.
func set(names ...string) map[string]bool {
	m := map[string]bool{}
	for _, n := range names {
		m[n] = true
	}
	return m
}

// scenarios returns every scenario of a session, in the order they run.
func (h *harness) scenarios() []scenario {
	full := []shape{{256, 64}, {256, 1400}, {10000, 64}, {10000, 1400}}
	sink := []shape{{256, 64}, {256, 1400}}
	tunnel := []shape{{256, tunnelSizes[0]}, {256, tunnelSizes[1]}, {10000, tunnelSizes[0]}, {10000, tunnelSizes[1]}}
	ovpn := []shape{{256, tunnelOpenVPNSizes[0]}, {256, tunnelOpenVPNSizes[1]}, {10000, tunnelOpenVPNSizes[0]}, {10000, tunnelOpenVPNSizes[1]}}
	if h.opts.quick {
		full = []shape{{256, 64}, {10000, 64}}
		sink, tunnel, ovpn = full[:1], tunnel[:2], ovpn[:2]
	}
	plain := func(series, kind string, shapes []shape) []config {
		return h.configs(config{Kind: kind, Burst: 4, Series: series}, shapes)
	}
	groCfgs := func(kind, dev string) []config {
		base := config{Kind: kind, Burst: groBurst, Series: seriesGRO}
		off := h.configs(base, []shape{{256, 1400}})
		base.GRO = dev
		return append(off, h.configs(base, []shape{{256, 1400}})...)
	}
	var growth []config
	for _, f := range growthFlows {
		growth = append(growth, config{Kind: kindEcho, Flows: f, Size: 64, Rate: growthRate, Burst: 1, Series: seriesGrowth})
	}
	wg := config{Kind: kindProxy, Burst: 4, Series: seriesTunnel, Proto: protoWireGuard}
	ov := config{Kind: kindProxy, Burst: 4, Series: seriesOpenVPN, Proto: protoOpenVPN}
	all := []scenario{
		{part: kindSink, series: seriesMatrix, kind: kindSink, peers: sinkPeers, crossCk: true, configs: plain(seriesMatrix, kindSink, sink)},
		{part: kindEcho, series: seriesMatrix, kind: kindEcho, peers: echoPeers, crossCk: true,
			searched: set("bare-gso", "bare", "udpmux"), profiled: set("bare-gso", "udpmux"), configs: plain(seriesMatrix, kindEcho, full)},
		{part: kindEcho, series: seriesGrowth, kind: kindEcho, peers: growthPeers, configs: growth},
		{part: kindProxy, series: seriesMatrix, kind: kindProxy, peers: proxyPeers, crossCk: true,
			searched: set(proxyPeers...), profiled: set("udpmux", "udpmux-fast", "nat"), configs: plain(seriesMatrix, kindProxy, full)},
		{part: partListener, series: seriesListener, kind: kindEcho, peers: listenerPeers, crossCk: true,
			searched: set(listenerPeers...), profiled: set("muxlisten"), configs: plain(seriesListener, kindEcho, full)},
		{part: partTunnel, series: seriesTunnel, kind: kindProxy, peers: tunnelPeers, crossCk: true, profiled: set("udpmux-wg"), configs: h.configs(wg, tunnel)},
		// Searched for the fast path's throughput goal against kernel NAT.
		{part: partTunnel, series: seriesOpenVPN, kind: kindProxy, peers: ovpnPeers, crossCk: true,
			searched: set(ovpnPeers...), profiled: set("udpmux-ovpn"), configs: h.configs(ov, ovpn)},
		{part: partGRO, series: seriesGRO, kind: kindEcho, peers: groEchoPeers, configs: groCfgs(kindEcho, "vs")},
		{part: partGRO, series: seriesGRO, kind: kindProxy, peers: groProxyPeers, configs: groCfgs(kindProxy, "vsb")},
	}
	// The connected-socket peer beside udpmux at the growth series' flow
	// counts, and in a flood of new sources beyond capacity at each. With
	// the echo part in the session, growth has bare-gso and udpmux already.
	connGrowth := []string{"connected"}
	if !h.opts.includes(kindEcho) {
		connGrowth = []string{"bare-gso", "udpmux", "connected"}
	}
	all = append(all, scenario{part: partConnected, series: seriesGrowth, kind: kindEcho, peers: connGrowth, configs: growth})
	for _, f := range growthFlows {
		c := config{Kind: kindEcho, Flows: f, Size: 64, Rate: growthRate, Burst: 1, Series: seriesFlood, Flood: floodSources}
		all = append(all, scenario{part: partConnected, series: seriesFlood, kind: kindEcho, peers: floodPeers,
			configs: []config{c}, capacity: f + floodRoom})
	}
	if h.opts.quick {
		all = slices.DeleteFunc(all, func(s scenario) bool { return s.series == seriesGrowth || s.series == seriesFlood })
	}
	return all
}

// configs returns base at every shape, first at each fixed rate, then at
// the generator's maximum (rate 0), which is where a throughput search
// starts from: a fixed rate that held is its lower bound.
func (h *harness) configs(base config, shapes []shape) []config {
	var out []config
	for _, s := range shapes {
		c := base
		c.Flows, c.Size = s.flows, s.size
		for _, r := range append(slices.Clone(h.opts.rates), 0) {
			c.Rate = r
			out = append(out, c)
		}
	}
	return out
}
