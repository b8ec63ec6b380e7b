package main

import (
	"strings"
	"testing"
)

// runsOf returns n runs with the given CPU 1 cost and loss.
func runsOf(n int, coreUs, lossPct float64) []run {
	out := make([]run, n)
	for i := range out {
		out[i] = run{CorePerDgram: coreUs, LossPct: lossPct, DeliveredPPS: 1000}
	}
	return out
}

// proxySession is a recorded proxy scenario at one shape: nginx, udpmux and
// nat at a fixed rate and at the maximum with their searches.
func proxySession(udpmuxCPU, natCPU, nginxLoss, udpmuxTP, nginxTP, natTP float64, udpmuxAtMax bool) *harness {
	fixed := config{Kind: kindProxy, Flows: 256, Size: 64, Rate: 20000, Burst: 4, Series: seriesMatrix}
	atMax := fixed
	atMax.Rate = 0
	h := &harness{}
	add := func(peer string, cpu, loss, tp float64, bound bool) {
		h.rec.Results = append(h.rec.Results,
			&result{Config: fixed, Peer: peer, Runs: runsOf(3, cpu, loss)},
			&result{Config: atMax, Peer: peer, Runs: runsOf(3, cpu, 5), Search: &searchRec{Throughput: tp, AtMax: bound}})
	}
	add("nginx", 30, nginxLoss, nginxTP, false)
	add("udpmux", udpmuxCPU, 0, udpmuxTP, udpmuxAtMax)
	add("nat", natCPU, 0, natTP, true)
	return h
}

// goalStatus returns the status of the goal whose text starts with prefix.
func goalStatus(t *testing.T, h *harness, prefix string) (string, goal) {
	t.Helper()
	for _, g := range h.goals() {
		if strings.HasPrefix(g.text, prefix) {
			return g.status(), g
		}
	}
	t.Fatalf("no goal %q", prefix)
	return "", goal{}
}

func TestProxyGoals(t *testing.T) {
	tests := []struct {
		name              string
		h                 *harness
		nginxTP, nginxCPU string
		natCPU, natTP     string
	}{
		{"all met", proxySession(15, 12, 0, 50000, 20000, 60000, false), statusMet, statusMet, statusMet, statusMet},
		{"throughput 1.9x nginx", proxySession(15, 12, 0, 38000, 20000, 60000, false), statusMissed, statusMet, statusMet, statusMissed},
		{"CPU 0.7x nginx, 2.1x nat", proxySession(21, 10, 0, 50000, 20000, 60000, false), statusMet, statusMissed, statusMissed, statusMet},
		// nginx loses at the fixed rate: no load step of nginx to compare at.
		{"nginx does not hold", proxySession(21, 14, 3, 50000, 20000, 60000, false), statusMet, statusNotMeasured, statusMet, statusMet},
		// udpmux at the generator's maximum below 0.75x nat: not decided.
		{"udpmux generator-bound", proxySession(15, 12, 0, 40000, 20000, 60000, true), statusMet, statusMet, statusMet, statusNotMeasured},
	}
	for _, tt := range tests {
		for prefix, want := range map[string]string{
			"proxy throughput (RFC 2544)":             tt.nginxTP,
			"proxy CPU per round trip ≤ 0.6× nginx's": tt.nginxCPU,
			"proxy CPU per round trip ≤ 1.5× kernel":  tt.natCPU,
			"proxy throughput ≥ 0.75× kernel NAT's":   tt.natTP,
		} {
			if got, g := goalStatus(t, tt.h, prefix); got != want {
				t.Errorf("%s: goal %q = %s (%s), want %s", tt.name, prefix, got, g.measured(), want)
			}
		}
	}
}

func TestGoalStatus(t *testing.T) {
	met := check{found: true, met: true}
	missed := check{found: true}
	absent := check{}
	tests := []struct {
		checks []check
		want   string
	}{
		{nil, statusNotMeasured},
		{[]check{absent}, statusNotMeasured},
		{[]check{met, met}, statusMet},
		{[]check{met, absent}, statusPartly},
		{[]check{met, missed, absent}, statusMissed},
	}
	for _, tt := range tests {
		if got := (goal{checks: tt.checks}).status(); got != tt.want {
			t.Errorf("status of %+v = %s, want %s", tt.checks, got, tt.want)
		}
	}
}

func TestGROAndLookupGoals(t *testing.T) {
	h := &harness{}
	off := config{Kind: kindEcho, Flows: 256, Size: 1400, Rate: 20000, Burst: groBurst, Series: seriesGRO}
	on := off
	on.GRO = "vs"
	h.rec.Results = []*result{
		{Config: off, Peer: "udpmux", Runs: runsOf(3, 10, 0)},
		{Config: on, Peer: "udpmux", Runs: runsOf(3, 8, 0)},
	}
	if got, g := goalStatus(t, h, "with GRO"); got != statusMissed || !strings.Contains(g.measured(), "0.80×") {
		t.Errorf("GRO goal at 0.8x = %s (%s), want missed", got, g.measured())
	}
	h.rec.Results[1].Runs = runsOf(3, 7, 0)
	if got, _ := goalStatus(t, h, "with GRO"); got != statusMet {
		t.Errorf("GRO goal at 0.7x = %s, want met", got)
	}

	h.rec.Flowtable.Maps = parseBench(`BenchmarkLookup/1M/flowtable-batch-2   100  40.0 ns/op  0 B/op  0 allocs/op
BenchmarkLookup/1M/sharded-map-2       100  100 ns/op  0 B/op  0 allocs/op
BenchmarkLookup/1M/flowtable-batch-2   100  44.0 ns/op  0 B/op  0 allocs/op
BenchmarkLookup/1M/sharded-map-2       100  90 ns/op  0 B/op  0 allocs/op
`, func(string) bool { return true })
	if got, g := goalStatus(t, h, "batched flow-table"); got != statusMet || !strings.Contains(g.measured(), "0.44×") {
		t.Errorf("lookup goal = %s (%s), want met at 0.44x", got, g.measured())
	}
	h.rec.Flowtable.Maps[0].Allocs = 1
	if got, _ := goalStatus(t, h, "batched flow-table"); got != statusMissed {
		t.Errorf("lookup goal with an allocation = %s, want missed", got)
	}
}

// The OpenVPN tunnel series: udpmux-ovpn-fast against kernel NAT, CPU at
// the fixed rate and throughput from the searches.
func TestOpenVPNFastPathGoals(t *testing.T) {
	session := func(fastCPU, fastTP float64, fastAtMax bool) *harness {
		fixed := config{Kind: kindProxy, Flows: 256, Size: 64, Rate: 20000, Burst: 4, Series: seriesOpenVPN, Proto: protoOpenVPN}
		atMax := fixed
		atMax.Rate = 0
		h := &harness{}
		add := func(peer string, cpu, tp float64, bound bool) {
			h.rec.Results = append(h.rec.Results,
				&result{Config: fixed, Peer: peer, Runs: runsOf(3, cpu, 0)},
				&result{Config: atMax, Peer: peer, Runs: runsOf(3, cpu, 0), Search: &searchRec{Throughput: tp, AtMax: bound}})
		}
		add("udpmux-ovpn-fast", fastCPU, fastTP, fastAtMax)
		add("nat", 20, 60000, true)
		// The WireGuard series' peer of the same name and shape must not
		// count for OpenVPN.
		wg := fixed
		wg.Series, wg.Proto = seriesTunnel, protoWireGuard
		h.rec.Results = append(h.rec.Results, &result{Config: wg, Peer: "nat", Runs: runsOf(3, 1, 0)})
		return h
	}
	const cpuGoal, tpGoal = "fast path: OpenVPN data packets, CPU", "fast path: OpenVPN data packets, throughput"
	tests := []struct {
		name    string
		h       *harness
		cpu, tp string
	}{
		{"met", session(23, 70000, false), statusMet, statusMet},
		{"CPU 1.3x", session(26, 70000, false), statusMissed, statusMet},
		{"throughput 0.9x", session(20, 54000, false), statusMet, statusMissed},
		{"throughput 0.9x at the generator's maximum", session(20, 54000, true), statusMet, statusNotMeasured},
	}
	for _, tt := range tests {
		if got, g := goalStatus(t, tt.h, cpuGoal); got != tt.cpu {
			t.Errorf("%s: CPU goal %s (%s), want %s", tt.name, got, g.measured(), tt.cpu)
		}
		if got, g := goalStatus(t, tt.h, tpGoal); got != tt.tp {
			t.Errorf("%s: throughput goal %s (%s), want %s", tt.name, got, g.measured(), tt.tp)
		}
	}
	if got, _ := goalStatus(t, &harness{}, cpuGoal); got != statusNotMeasured {
		t.Errorf("without the series: CPU goal %s", got)
	}
}
