package main

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

func TestParseOnly(t *testing.T) {
	tests := []struct {
		list    string
		want    []string // nil: everything runs
		wantErr bool
	}{
		{list: "", want: nil},
		{list: "proxy", want: []string{"proxy"}},
		{list: "sink,flowtable", want: []string{"flowtable", "sink"}},
		{list: "proxy,proxy", want: []string{"proxy"}},
		{list: "nginx", wantErr: true},
		{list: "proxy,", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseOnly(tt.list)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseOnly(%q) error = %v, want error %v", tt.list, err, tt.wantErr)
			continue
		}
		if tt.wantErr {
			continue
		}
		if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, tt.want) {
			t.Errorf("parseOnly(%q) = %v, want %v", tt.list, keys, tt.want)
		}
		o := options{only: got}
		for _, p := range parts {
			if want := tt.want == nil || slices.Contains(tt.want, p); o.includes(p) != want {
				t.Errorf("parseOnly(%q): includes(%q) = %v, want %v", tt.list, p, o.includes(p), want)
			}
		}
	}
}

func TestParseRates(t *testing.T) {
	got, err := parseRates("20000, 40000")
	if err != nil || !slices.Equal(got, []float64{20000, 40000}) {
		t.Errorf("parseRates = %v, %v", got, err)
	}
	for _, bad := range []string{"", "0", "x", "20000,"} {
		if _, err := parseRates(bad); err == nil {
			t.Errorf("parseRates(%q) did not fail", bad)
		}
	}
}

func TestParseEnv(t *testing.T) {
	tests := []struct {
		list string
		want []string
		ok   bool
	}{
		{"", nil, true},
		{"GOMAXPROCS=1", []string{"GOMAXPROCS=1"}, true},
		{" GOMAXPROCS=1  GODEBUG=gctrace=1 ", []string{"GOMAXPROCS=1", "GODEBUG=gctrace=1"}, true},
		{"A=", []string{"A="}, true},
		{"GOMAXPROCS", nil, false},
		{"=1", nil, false},
	}
	for _, tt := range tests {
		got, err := parseEnv(tt.list)
		if (err == nil) != tt.ok || !slices.Equal(got, tt.want) {
			t.Errorf("parseEnv(%q) = %q, %v; want %q, ok %v", tt.list, got, err, tt.want, tt.ok)
		}
	}
}

func TestTopSymbols(t *testing.T) {
	report := `# Samples: 10K of event 'cpu-clock'
#
# Overhead  Shared Object      Symbol
# ........  .................  ......
#
    31.02%  [kernel.kallsyms]  [k] handle_softirqs
     9.10%  [kernel.kallsyms]  [k] native_write_msr
     5.00%  udpmux             [.] github.com/udpmux/udpmux/mux.(*loop).run

`
	got := topSymbols(report, 2)
	want := "    31.02%  [kernel.kallsyms]  [k] handle_softirqs\n     9.10%  [kernel.kallsyms]  [k] native_write_msr"
	if got != want {
		t.Errorf("topSymbols = %q, want %q", got, want)
	}
}

// The full session's scenarios: every shape at the fixed rate, then at the
// maximum; no configuration twice for one peer (the growth series runs in
// two parts, the connected peer's apart).
func TestScenarios(t *testing.T) {
	h := &harness{opts: options{rates: []float64{20000}}}
	want := map[string]int{"sink/matrix": 4, "echo/matrix": 8, "echo/growth": 3, "proxy/matrix": 8,
		"echo/listener": 8, "proxy/tunnel": 8, "proxy/tunnel-openvpn": 8, "echo/gro": 4, "proxy/gro": 4, "echo/flood": 1}
	type measured struct {
		c    config
		peer string
	}
	seen := map[measured]bool{}
	for _, sc := range h.scenarios() {
		key := sc.kind + "/" + sc.series
		if got := len(sc.configs); got != want[key] {
			t.Errorf("%s: %d configurations, want %d", key, got, want[key])
		}
		for i, c := range sc.configs {
			for _, p := range sc.peers {
				if seen[measured{c, p}] {
					t.Errorf("%s: %v twice for %s", key, c, p)
				}
				seen[measured{c, p}] = true
			}
			if sc.series != seriesGrowth && sc.series != seriesFlood && (i%2 == 0) != (c.Rate > 0) {
				t.Errorf("%s: %v out of order (fixed rate first, then the maximum)", key, c)
			}
			// The sizes loadgen takes for each protocol (its parseFlags).
			switch c.Proto {
			case protoWireGuard:
				if c.Size < 16+24 || (c.Size-32)%16 != 0 {
					t.Errorf("%s: %v: not a WireGuard transport message's size", key, c)
				}
			case protoOpenVPN:
				if c.Size < 8+24 || c.Flows > 0xFFFFFF {
					t.Errorf("%s: %v: too small for the P_DATA_V2 header and the wire header, or too many peer-ids", key, c)
				}
			}
		}
		for _, p := range sc.peers {
			if (strings.HasPrefix(p, "udpmux-") || p == "udpmux") && !udpmuxPeers[p] {
				t.Errorf("%s: peer %s is not a udpmux peer that startServer knows", key, p)
			}
		}
		for p := range sc.searched {
			if !slices.Contains(sc.peers, p) {
				t.Errorf("%s: searched peer %s is not a peer", key, p)
			}
		}
	}
}

// ONLY=tunnel runs both tunnel series, each with its protocol.
func TestTunnelPart(t *testing.T) {
	h := &harness{opts: options{rates: []float64{20000}, only: map[string]bool{partTunnel: true}}}
	protos := map[string]string{}
	for _, sc := range h.scenarios() {
		if sc.part != partTunnel {
			continue
		}
		for _, c := range sc.configs {
			protos[sc.series] = c.Proto
		}
		if sc.series == seriesOpenVPN && !slices.Equal(sc.peers, []string{"udpmux", "udpmux-ovpn", "udpmux-ovpn-fast", "nat"}) {
			t.Errorf("OpenVPN tunnel peers %v", sc.peers)
		}
	}
	if want := map[string]string{seriesTunnel: protoWireGuard, seriesOpenVPN: protoOpenVPN}; !maps.Equal(protos, want) {
		t.Errorf("tunnel part: series and protocols %v, want %v", protos, want)
	}
}
