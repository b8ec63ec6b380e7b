package main

import (
	"os"
	"strings"
	"testing"
)

// Each udpmux peer runs the daemon with its dissector, and the -fast ones
// with the fast path, in a configuration like the others'.
func TestUdpmuxPeerConfigs(t *testing.T) {
	want := map[string]struct {
		dissector string
		fast      bool
	}{
		"udpmux":           {"flow", false},
		"udpmux-fast":      {"flow", true},
		"udpmux-wg":        {"wireguard", false},
		"udpmux-wg-fast":   {"wireguard", true},
		"udpmux-ovpn":      {"openvpn", false},
		"udpmux-ovpn-fast": {"openvpn", true},
	}
	if len(want) != len(udpmuxPeers) {
		t.Errorf("udpmuxPeers %v, want the peers %v", udpmuxPeers, want)
	}
	h := &harness{opts: options{work: t.TempDir()}}
	for peer, w := range want {
		if !udpmuxPeers[peer] {
			t.Errorf("%s: not a udpmux peer", peer)
		}
		d, fast := udpmuxMode(peer)
		if d != w.dissector || fast != w.fast {
			t.Errorf("%s: dissector %s, fast %v; want %s, %v", peer, d, fast, w.dissector, w.fast)
		}
		path, err := h.udpmuxConf(kindProxy, d, fast, 0)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		conf := string(b)
		if !strings.Contains(conf, "    dissector: "+w.dissector+"\n") || strings.Contains(conf, "fast_path: nftables") != w.fast ||
			!strings.Contains(conf, "  - name: "+benchListener+"\n") || !strings.Contains(conf, "backends: ") {
			t.Errorf("%s: configuration\n%s", peer, conf)
		}
	}
}
