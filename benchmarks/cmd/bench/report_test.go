package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// RESULTS.md has a table for the OpenVPN tunnel series, and under it what
// the kernel forwarded for its fast peer.
func TestOpenVPNReport(t *testing.T) {
	out := filepath.Join(t.TempDir(), "RESULTS.md")
	h := &harness{opts: options{out: out, runs: 3, rates: []float64{20000}, only: map[string]bool{partTunnel: true}}}
	h.rec.Only = partTunnel
	c := config{Kind: kindProxy, Flows: 256, Size: 1400, Rate: 20000, Burst: 4, Series: seriesOpenVPN, Proto: protoOpenVPN}
	for _, peer := range ovpnPeers {
		r := &result{Config: c, Peer: peer, Runs: runsOf(3, 20, 0)}
		if peer == "udpmux-ovpn-fast" {
			r.Kernel = &kernelRec{Offloaded: 256, Sent: 200000, Received: 199990, Rx: 199744, Tx: 199734}
		}
		h.rec.Results = append(h.rec.Results, r)
	}
	if err := writeResults(h); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	for _, want := range []string{
		"## Tunnel: OpenVPN data packets through the proxy",
		"| 256 | 1400 | 20000 | off | udpmux-ovpn-fast |",
		"| 256 | 1400 | 20000 | udpmux-ovpn-fast | 256 | 200000 | 199744 | 99.9 % | 199734 | 199990 |",
		"| fast path: OpenVPN data packets, CPU per round trip ≤ 1.2× kernel NAT's | 256 flows 1400B at 20000/s: 1.00× (20.00 vs 20.00 µs) | met |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("RESULTS.md lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "| 256 | 1400 | 20000 | nat | 0 |") {
		t.Error("the kernel table has a row for nat, which has no fast path")
	}
}
