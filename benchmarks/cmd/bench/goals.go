package main

import (
	"fmt"
	"strings"
)

// The goals of issue 12 (and the tunnel goal of the WireGuard dissector),
// each a ratio of two figures measured in one session.
const (
	goalProxyVsNginxThroughput = 2.0  // udpmux proxy throughput ≥ this × nginx's
	goalProxyVsNginxCPU        = 0.6  // CPU per round trip ≤ this × nginx's where nginx holds
	goalProxyVsNATCPU          = 1.5  // CPU per round trip ≤ this × kernel NAT's at equal load
	goalProxyVsNATThroughput   = 0.75 // throughput ≥ this × kernel NAT's
	goalEchoVsGSOCPU           = 1.1  // echo CPU per datagram ≤ this × the bare loop with GSO
	goalEchoVsGSOThroughput    = 0.95 // echo throughput ≥ this × the bare loop with GSO
	goalListenerVsPion         = 2.0  // mux.Listen echo throughput ≥ this × pion's udp.Listener
	goalLookupVsMap            = 0.5  // batched flow-table lookup at 1M ≤ this × the sharded Go map
	goalGROCPU                 = 0.75 // CPU per datagram with GRO ≤ this × without
	goalTunnelCPU              = 1.1  // dissector wireguard CPU per round trip ≤ this × flow's
	// Issue 23: with fast_path: nftables the kernel forwards established
	// sessions' data.
	goalFastVsNATCPU        = 1.2  // CPU per round trip ≤ this × kernel NAT's at equal load
	goalFastVsNATThroughput = 0.95 // throughput ≥ this × kernel NAT's
)

// check is one measured ratio of a goal.
type check struct {
	label string
	value float64 // the ratio
	found bool    // both figures were measured
	met   bool
	note  string // said after the ratio
}

// goal is one row of the goals table.
type goal struct {
	text   string
	checks []check
}

// Goal statuses.
const (
	statusMet         = "met"
	statusMissed      = "missed"
	statusNotMeasured = "not measured"
	statusPartly      = "not measured in full (the measured part met it)"
)

// status is missed if any measured check missed, met if every check was
// measured and met, and not measured otherwise.
func (g goal) status() string {
	measured, missing := 0, 0
	for _, c := range g.checks {
		switch {
		case !c.found:
			missing++
		case !c.met:
			return statusMissed
		default:
			measured++
		}
	}
	switch {
	case measured == 0:
		return statusNotMeasured
	case missing > 0:
		return statusPartly
	}
	return statusMet
}

// measured prints every check of g.
func (g goal) measured() string {
	if len(g.checks) == 0 {
		return "nothing to compare in this session"
	}
	var parts []string
	for _, c := range g.checks {
		s := c.label + ": "
		if c.found {
			s += fmt.Sprintf("%.2f×", c.value)
		} else {
			s += "–"
		}
		if c.note != "" {
			s += " (" + c.note + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// goals returns every goal with its checks from the session's record.
func (h *harness) goals() []goal {
	return []goal{
		{fmt.Sprintf("proxy throughput (RFC 2544) ≥ %.1f× nginx's, all four configurations", goalProxyVsNginxThroughput),
			h.throughputChecks(seriesMatrix, kindProxy, "udpmux", "nginx", goalProxyVsNginxThroughput)},
		{fmt.Sprintf("proxy CPU per round trip ≤ %.1f× nginx's at every fixed rate nginx holds", goalProxyVsNginxCPU),
			h.cpuChecks(seriesMatrix, kindProxy, "udpmux", "nginx", goalProxyVsNginxCPU, true)},
		{fmt.Sprintf("proxy CPU per round trip ≤ %.1f× kernel NAT's at equal load", goalProxyVsNATCPU),
			h.cpuChecks(seriesMatrix, kindProxy, "udpmux", "nat", goalProxyVsNATCPU, false)},
		{fmt.Sprintf("proxy throughput ≥ %.2f× kernel NAT's", goalProxyVsNATThroughput),
			h.throughputChecks(seriesMatrix, kindProxy, "udpmux", "nat", goalProxyVsNATThroughput)},
		{fmt.Sprintf("echo CPU per datagram ≤ %.1f× the bare loop with GSO at equal load", goalEchoVsGSOCPU),
			h.cpuChecks(seriesMatrix, kindEcho, "udpmux", "bare-gso", goalEchoVsGSOCPU, false)},
		{fmt.Sprintf("echo throughput ≥ %.2f× the bare loop with GSO", goalEchoVsGSOThroughput),
			h.throughputChecks(seriesMatrix, kindEcho, "udpmux", "bare-gso", goalEchoVsGSOThroughput)},
		{fmt.Sprintf("mux.Listen echo throughput ≥ %.0f× pion's udp.Listener (loss < %.1f %%)", goalListenerVsPion, lossLimitPct),
			h.throughputChecks(seriesListener, kindEcho, "muxlisten", "pion", goalListenerVsPion)},
		{fmt.Sprintf("batched flow-table lookup at 1M entries ≤ %.1f× the time of the sharded Go map, 0 allocations", goalLookupVsMap),
			h.lookupChecks()},
		{fmt.Sprintf("with GRO on the veths: udpmux's CPU per datagram for 1400-byte bursts ≤ %.2f× without (at least 25 %% below)", goalGROCPU),
			h.groChecks()},
		{fmt.Sprintf("tunnel: `dissector: wireguard` CPU per round trip ≤ %.1f× `dissector: flow`'s", goalTunnelCPU),
			h.cpuChecks(seriesTunnel, kindProxy, "udpmux-wg", "udpmux", goalTunnelCPU, false)},
		{fmt.Sprintf("fast path: proxy CPU per round trip ≤ %.1f× kernel NAT's at equal load", goalFastVsNATCPU),
			h.cpuChecks(seriesMatrix, kindProxy, "udpmux-fast", "nat", goalFastVsNATCPU, false)},
		{fmt.Sprintf("fast path: proxy throughput ≥ %.2f× kernel NAT's", goalFastVsNATThroughput),
			h.throughputChecks(seriesMatrix, kindProxy, "udpmux-fast", "nat", goalFastVsNATThroughput)},
		{fmt.Sprintf("fast path: WireGuard transport messages, CPU per round trip ≤ %.1f× kernel NAT's", goalFastVsNATCPU),
			h.cpuChecks(seriesTunnel, kindProxy, "udpmux-wg-fast", "nat", goalFastVsNATCPU, false)},
		{fmt.Sprintf("fast path: OpenVPN data packets, CPU per round trip ≤ %.1f× kernel NAT's", goalFastVsNATCPU),
			h.cpuChecks(seriesOpenVPN, kindProxy, "udpmux-ovpn-fast", "nat", goalFastVsNATCPU, false)},
		{fmt.Sprintf("fast path: OpenVPN data packets, throughput ≥ %.2f× kernel NAT's", goalFastVsNATThroughput),
			h.throughputChecks(seriesOpenVPN, kindProxy, "udpmux-ovpn-fast", "nat", goalFastVsNATThroughput)},
	}
}

// writeGoals writes the goals table with a status per goal.
func (h *harness) writeGoals(w func(string, ...any)) {
	w("## Goals\n\nEach goal is a ratio of two figures measured in this session; a goal counts as met only if every configuration it names was measured and met it.\n\n")
	w("| goal | measured | status |\n|---|---|---|\n")
	for _, g := range h.goals() {
		w("| %s | %s | %s |\n", g.text, g.measured(), g.status())
	}
	w("\n")
}

// shapeLabel names a configuration's shape in a check.
func shapeLabel(c config) string {
	s := fmt.Sprintf("%d flows %dB", c.Flows, c.Size)
	if c.Rate > 0 {
		s += fmt.Sprintf(" at %.0f/s", c.Rate)
	}
	return s
}

// throughputChecks compares the searched throughput of peer with ref's at
// every shape of a table: met when peer's ≥ atLeast × ref's. A peer whose
// throughput is the generator's maximum may be faster than measured, so a
// shortfall then is not a miss.
func (h *harness) throughputChecks(series, kind, peer, ref string, atLeast float64) []check {
	var out []check
	for _, c := range h.tableOf(series, kind).configs {
		if c.Rate != 0 {
			continue
		}
		p, r := h.find(c, peer), h.find(c, ref)
		ck := check{label: shapeLabel(c)}
		if p != nil && p.Search != nil && r != nil && r.Search != nil && r.Search.Throughput > 0 {
			ck.found = true
			ck.value = p.Search.Throughput / r.Search.Throughput
			ck.met = ck.value >= atLeast
			ck.note = fmt.Sprintf("%.0f vs %.0f/s", p.Search.Throughput, r.Search.Throughput)
			if !ck.met && p.Search.AtMax {
				ck.found, ck.note = false, ck.note+", "+peer+" at the generator's maximum"
			}
		}
		out = append(out, ck)
	}
	return out
}

// holds reports whether a majority of r's runs stayed under the loss limit.
func holds(r *result) bool {
	if !ok(r) {
		return false
	}
	decided, held := verdict(losses(r.Runs), len(r.Runs))
	return decided && held
}

// cpuChecks compares CPU 1's cost per datagram of peer with ref's at every
// fixed rate of a table: met when peer's ≤ atMost × ref's. With
// whereRefHolds, only the rates at which ref held are compared.
func (h *harness) cpuChecks(series, kind, peer, ref string, atMost float64, whereRefHolds bool) []check {
	var out []check
	for _, c := range h.tableOf(series, kind).configs {
		if c.Rate == 0 {
			continue
		}
		p, r := h.find(c, peer), h.find(c, ref)
		if whereRefHolds && ok(r) && !holds(r) {
			continue
		}
		out = append(out, cpuCheck(shapeLabel(c), p, r, atMost))
	}
	return out
}

// cpuCheck compares the CPU 1 cost of two results.
func cpuCheck(label string, p, r *result, atMost float64) check {
	ck := check{label: label}
	if v, found := ratioOf(p, r, mCore); found {
		ck.found, ck.value, ck.met = true, v, v <= atMost
		ck.note = fmt.Sprintf("%.2f vs %.2f µs", median(p.Runs, mCore.get), median(r.Runs, mCore.get))
	}
	return ck
}

// groChecks compares udpmux's cost with GRO on against the same
// configuration with GRO off, in each direction, at the fixed rates.
func (h *harness) groChecks() []check {
	var out []check
	for _, kind := range []string{kindEcho, kindProxy} {
		dir := map[string]string{kindEcho: "listener", kindProxy: "upstream"}[kind]
		for _, c := range h.tableOf(seriesGRO, kind).configs {
			if c.Rate == 0 || c.GRO == "" {
				continue
			}
			off := c
			off.GRO = ""
			out = append(out, cpuCheck(dir+" "+shapeLabel(c), h.find(c, "udpmux"), h.find(off, "udpmux"), goalGROCPU))
		}
	}
	return out
}

// lookupChecks compares the batched flow-table lookup at 1M entries with
// the sharded Go map.
func (h *harness) lookupChecks() []check {
	ft := h.rec.Flowtable
	switch {
	case ft.MapsErr != "":
		return []check{{label: "1M entries", note: "not measured: " + short(ft.MapsErr)}}
	case len(ft.Maps) == 0:
		return []check{{label: "1M entries", note: "the flow table was not measured in this session"}}
	}
	batch, hasB := ft.mapStat("1M", "flowtable-batch")
	sharded, hasS := ft.mapStat("1M", "sharded-map")
	ck := check{label: "1M entries, LookupBatch ÷ sharded map"}
	if hasB && hasS && sharded.Ns > 0 {
		ck.found, ck.value = true, batch.Ns/sharded.Ns
		ck.met = ck.value <= goalLookupVsMap && batch.Allocs == 0
		ck.note = fmt.Sprintf("%.1f vs %.1f ns per lookup, %.0f allocs/op", batch.Ns, sharded.Ns, batch.Allocs)
	}
	return []check{ck}
}
