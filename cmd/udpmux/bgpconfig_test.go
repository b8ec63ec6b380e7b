//go:build linux

package main

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// fleetHost is a fleet host's config: two proxy listeners on one VIP,
// announced to one router with BFD.
const fleetHost = `
listeners:
  - name: wg
    address: "198.18.0.100:51820"
    handler: proxy
    dissector: wireguard
    backends: ["10.0.2.1:51820", "10.0.2.2:51820"]
    announce:
      communities: ["65000:100", no-export]
      med: 10
  - name: ovpn
    address: "198.18.0.100:1194"
    handler: proxy
    dissector: openvpn
    backends: ["10.0.2.1:1194", "10.0.2.2:1194"]
    announce:
      prefix: 198.18.0.100/32
      communities: ["65000:100", no-export]
      med: 10
bgp:
  local_as: 65010
  router_id: 10.0.1.2
  peers:
    - address: 10.0.1.1
      as: 65000
      hold_time: 9s
      bfd: {interval: 300ms, multiplier: 3}
`

func TestFleetConfig(t *testing.T) {
	cfg, err := loadConfig(writeConfig(t, fleetHost))
	if err != nil {
		t.Fatal(err)
	}
	f := cfg.fleet
	if f == nil {
		t.Fatal("no fleet config")
	}
	sc := f.speaker
	if sc.LocalAS != 65010 || sc.RouterID != netip.MustParseAddr("10.0.1.2") || len(sc.Peers) != 1 {
		t.Fatalf("speaker %+v", sc)
	}
	p := sc.Peers[0]
	if p.AS != 65000 || p.HoldTime != 9*time.Second || p.BFD == nil || p.BFD.TxInterval != 300*time.Millisecond || p.BFD.Multiplier != 3 {
		t.Errorf("peer %+v, BFD %+v", p, p.BFD)
	}
	if !sc.GracefulRestart.Enabled || sc.GracefulRestart.RestartTime != 2*time.Second {
		t.Errorf("graceful restart %+v; want on, 2s by default", sc.GracefulRestart)
	}
	if f.drainTimeout != 30*time.Second || f.drainQuiet != 2*time.Second || len(f.vips) != 2 {
		t.Errorf("drain %v/%v, %d vips", f.drainTimeout, f.drainQuiet, len(f.vips))
	}
	r := f.vips[0].route
	if r.Prefix != netip.MustParsePrefix("198.18.0.100/32") || len(r.Communities) != 2 || r.Communities[1] != 0xFFFFFF01 || r.MED == nil || *r.MED != 10 {
		t.Errorf("route %+v", r)
	}
}

func TestFleetConfigErrorsNameTheKey(t *testing.T) {
	host := func(old, new string) string {
		if !strings.Contains(fleetHost, old) {
			t.Fatalf("%q is not in the config", old)
		}
		return strings.Replace(fleetHost, old, new, 1)
	}
	noBGP := fleetHost[:strings.Index(fleetHost, "bgp:")]
	tests := []configError{
		{"announce without bgp", noBGP, "listeners[0].announce: needs the bgp section"},
		{"bgp without announce", strings.ReplaceAll(host("      prefix: 198.18.0.100/32\n", ""),
			"    announce:\n      communities: [\"65000:100\", no-export]\n      med: 10\n", ""),
			"bgp: no listener announces its address"},
		{"a VIP the listener does not serve", host("prefix: 198.18.0.100/32", "prefix: 198.18.0.101/32"),
			"listeners[1].announce.prefix: 198.18.0.101/32 is not the listener's address as a host route (198.18.0.100/32)"},
		{"not a host route", host("prefix: 198.18.0.100/32", "prefix: 198.18.0.0/24"), "listeners[1].announce.prefix: 198.18.0.0/24 is not"},
		{"wildcard listener", host(`address: "198.18.0.100:51820"`, `address: "0.0.0.0:51820"`), "listeners[0].announce: the listener's address 0.0.0.0:51820 is a wildcard"},
		{"bad community", host(`communities: ["65000:100", no-export]`, `communities: ["65000:100000"]`), "listeners[0].announce.communities[0]: community"},
		{"med", host("med: 10", "med: -1"), "listeners[0].announce.med: -1 is not from 0 to 4294967295"},
		{"one VIP, two routes", host("med: 10", "med: 20"), "listeners[1].announce: 198.18.0.100/32 is announced by listener wg with other communities or med"},
		{"AS 0", host("local_as: 65010", "local_as: 0"), "bgp.local_as: 0 is not an AS number"},
		{"AS_TRANS", host("local_as: 65010", "local_as: 23456"), "bgp.local_as: AS 23456 is AS_TRANS"},
		{"AS too large", host("local_as: 65010", "local_as: 4294967296"), "bgp.local_as: 4294967296 is not an AS number"},
		{"router ID", host("router_id: 10.0.1.2", "router_id: 2001:db8::1"), "bgp.router_id: router ID 2001:db8::1 is not an IPv4 address"},
		{"router ID name", host("router_id: 10.0.1.2", "router_id: host1"), `bgp.router_id: "host1" is not an IPv4 address`},
		{"no peers", host("  peers:\n    - address: 10.0.1.1\n      as: 65000\n      hold_time: 9s\n      bfd: {interval: 300ms, multiplier: 3}\n", ""), "bgp.peers: none configured"},
		{"peer address", host("address: 10.0.1.1", "address: router"), `bgp.peers[0].address: "router" is not an IP address`},
		{"peer AS", host("as: 65000", "as: 65535"), "bgp.peers[0].as: AS 65535 is reserved"},
		{"hold time", host("hold_time: 9s", "hold_time: 2s"), "bgp.peers[0].hold_time, bgp.peers[0].keepalive: hold time 2s: must be 0 or at least 3s"},
		{"BFD interval", host("interval: 300ms", "interval: 1ms"), `bgp.peers[0].bfd.interval: "1ms" is not a duration from 10ms to 10s`},
		{"BFD multiplier", host("multiplier: 3", "multiplier: 300"), "bgp.peers[0].bfd.multiplier: 300 is not from 1 to 255"},
		{"no peer of the VIP's family", v6Host, "no bgp.peers address of 2001:db8::100/128's family"},
		{"restart time", fleetHost + "  graceful_restart: {restart_time: 1s}\n", `bgp.graceful_restart.restart_time: "1s" is not whole seconds from 2s to`},
		{"slow BFD", host("interval: 300ms", "interval: 500ms"), "bgp.peers[0].bfd: detection time 1.5s (interval × multiplier) is over 1s"},
		{"drain quiet", fleetHost + "  drain_quiet: 1m\n", "bgp.drain_quiet: 1m0s is longer than bgp.drain_timeout (30s)"},
		{"drain timeout", fleetHost + "  drain_timeout: never\n", `bgp.drain_timeout: "never" is not a positive duration`},
	}
	testConfigErrors(t, tests)
	// The IPv6 variant of the host with a peer of its family is fine.
	v6 := strings.Replace(v6Host, "  graceful_restart:", "    - {address: \"2001:db8:1::1\", as: 65000}\n  graceful_restart:", 1)
	cfg, err := loadConfig(writeConfig(t, v6))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.fleet.vips[0].route.Prefix; got != netip.MustParsePrefix("2001:db8::100/128") || len(cfg.fleet.speaker.Peers) != 2 {
		t.Errorf("IPv6 VIP %v, peers %v", got, cfg.fleet.speaker.Peers)
	}
}

// v6Host is fleetHost on an IPv6 VIP, still with an IPv4 router only.
var v6Host = strings.NewReplacer(`"198.18.0.100:`, `"[2001:db8::100]:`, "prefix: 198.18.0.100/32", "prefix: 2001:db8::100/128").Replace(fleetHost) +
	"  graceful_restart: {enabled: true}\n"
