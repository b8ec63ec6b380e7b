//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/netlab"
)

// The transparent source tests: udpmux with `source: client` sends each
// session's datagrams from its client's address, so that real OpenVPN and
// WireGuard backends see their clients as if they talked to them directly,
// also after the clients move and across an upgrade. The lab routes the
// backends' replies to clients through udpmux's namespace and sets it up
// as docs/operations.md says, with configs/transparent.nft as shipped.

// transparentNFT is the nftables file that operations.md documents, which
// the tests load with its interface set to the lab's.
const transparentNFT = "../../configs/transparent.nft"

// transparentRouting makes mux deliver to udpmux's transparent sockets what
// the backends, on the interface backIf, send to clients' addresses
// (configs/transparent.nft, and the ip rule and local route it names), and
// routes the clients' network (198.18.0.0/24, their roaming addresses
// included) from each namespace of backends through mux.
func transparentRouting(t *testing.T, mux *netlab.Namespace, backIf string, backends ...*netlab.Namespace) {
	t.Helper()
	text, err := os.ReadFile(transparentNFT)
	if err != nil {
		t.Fatal(err)
	}
	const def = `define backend_if = "eth1"`
	if !strings.Contains(string(text), def) {
		t.Fatalf("%s has no line %q for the test to set", transparentNFT, def)
	}
	mux.Nft(strings.Replace(string(text), def, fmt.Sprintf("define backend_if = %q", backIf), 1))
	mux.IP("rule", "add", "fwmark", "0x1", "lookup", "100")
	mux.IP("route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
	for _, ns := range backends {
		ns.AddRoute("198.18.0.0/24", muxBackAddr.String())
	}
}

// clientConnectArgs returns the OpenVPN server options that record each
// client's --client-connect environment in dir (see connectEnv).
func clientConnectArgs(t *testing.T, dir string) []string {
	t.Helper()
	script := filepath.Join(dir, "client-connect.sh")
	body := fmt.Sprintf("#!/bin/sh\nenv > %q/\"$common_name.env\"\n", dir)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return []string{"--script-security", "2", "--client-connect", script}
}

// connectEnv returns the address OpenVPN gave client cn's --client-connect
// script: untrusted_ip and untrusted_port.
func connectEnv(dir, cn string) (netip.AddrPort, error) {
	data, err := os.ReadFile(filepath.Join(dir, cn+".env"))
	if err != nil {
		return netip.AddrPort{}, err
	}
	var ip, port string
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "untrusted_ip="); ok {
			ip = v
		}
		if v, ok := strings.CutPrefix(line, "untrusted_port="); ok {
			port = v
		}
	}
	return netip.ParseAddrPort(ip + ":" + port)
}

// upgradeWindow is an upgrade in the middle of the moves: from SIGUSR2
// until the successor answered, right after a move of client mover.
type upgradeWindow struct {
	from, to time.Time
	mover    int
}

// upgradeAfterMove upgrades d after move k, m, and returns its window.
func upgradeAfterMove(t *testing.T, d *daemon, sock string, sessions, k int, m move, timeout time.Duration) *upgradeWindow {
	t.Helper()
	w := &upgradeWindow{from: time.Now(), mover: m.Client}
	u := d.Upgrade(t, sock, sessions, timeout)
	w.to = time.Now()
	t.Logf("upgrade after move %d: pid %d -> %d, %d sessions restored in %v", k+1, u.From, u.To, u.Restored, u.Took.Round(time.Millisecond))
	return w
}

// checkLossless checks that no echo request sent during the upgrade went
// unanswered, for every client but the one that had just moved (whose move
// may cost a request in flight).
func (w *upgradeWindow) checkLossless(t *testing.T, rs []*roamer, logs []pingLog) {
	t.Helper()
	for i, r := range rs {
		if i == w.mover {
			continue
		}
		if lost := logs[i].lostBetween(w.from, w.to, roamPingInterval); len(lost) > 0 {
			t.Errorf("%s: echo requests %v, sent during the upgrade (%v), went unanswered", r.Name, lost, w.to.Sub(w.from).Round(time.Millisecond))
		} else {
			t.Logf("%s: nothing lost during the upgrade (%v)", r.Name, w.to.Sub(w.from).Round(time.Millisecond))
		}
	}
}

// roamPingInterval is roamPingIntv as a duration.
const roamPingInterval = 200 * time.Millisecond

// lostBetween returns the lost echo requests sent between from and to, each
// sent, ping being periodic, interval after the one before: after the last
// answered request before it by as many intervals as their sequence numbers
// differ.
func (l pingLog) lostBetween(from, to time.Time, interval time.Duration) []int {
	var out []int
	for _, seq := range l.Lost {
		var ref *pingReply
		for i := range l.Replies {
			if r := &l.Replies[i]; r.Seq < seq && (ref == nil || r.Seq > ref.Seq) {
				ref = r
			}
		}
		if ref == nil {
			continue
		}
		sent := ref.Sent().Add(time.Duration(seq-ref.Seq) * interval)
		if !sent.Before(from) && !sent.After(to) {
			out = append(out, seq)
		}
	}
	return out
}

// TestTransparentOpenVPN runs OpenVPN through udpmux with source: client:
// each server's status file and its --client-connect environment
// (untrusted_ip, untrusted_port) show the client's own address and port,
// and after the clients move (new ports behind their NAT, a new address),
// with an upgrade of udpmux in the middle of the moves, the servers list
// each at its last mapping, with no renegotiation, no reconnection, no
// echo request lost during the upgrade, and one session per client; see
// runOpenVPNRoaming for the rest of the checks.
func TestTransparentOpenVPN(t *testing.T) {
	r := runOpenVPNRoaming(t, ovpnRoamOptions{transparent: true, upgrade: true})
	for i, u := range r.ups {
		port, err := tunnelPort(u.client.NS)
		if err != nil {
			t.Fatal(err)
		}
		want := netip.AddrPortFrom(clientAddr(i), port)
		if got := r.before[u.client.Name].Real; got != want {
			t.Errorf("%s: %s's status file listed it at %v at first; want its own address %v", u.client.Name, u.server.Name, got, want)
		}
		got, err := connectEnv(r.connectDir, u.client.Name)
		if err != nil || got != want {
			t.Errorf("%s: %s's --client-connect got untrusted_ip:untrusted_port %v (%v); want %v", u.client.Name, u.server.Name, got, err, want)
		}
		t.Logf("%s: %s saw it connect from %v (client-connect), listed it at %v, then at %v after its moves", u.client.Name, u.server.Name, got, r.before[u.client.Name].Real, r.rs[i].mapping)
	}
}

// TestTransparentWireGuard runs WireGuard (wireguard-go) through udpmux with
// source: client: `wg show endpoints` on the backends shows each client's
// own address, and after the clients move, with an upgrade of udpmux in
// the middle of the moves, its last mapping, with no new handshake and no
// echo request lost during the upgrade; see runWireGuardRoaming for the
// rest of the checks.
func TestTransparentWireGuard(t *testing.T) {
	r := runWireGuardRoaming(t, wgRoamOptions{key: true, transparent: true, upgrade: true})
	for i, c := range r.w.clients {
		b := r.w.backends[r.before.servedBy[i]]
		out, err := b.Dev.wg("show", b.Dev.Name, "endpoints")
		if err != nil {
			t.Fatal(err)
		}
		eps := parseEndpoints(string(out))
		want := r.rs[i].mapping
		if got := eps[c.Key.Public]; got != want {
			t.Errorf("%s: `wg show %s endpoints` on %s shows %v; want its last mapping %v", c.Name, b.Dev.Name, b.Name, got, want)
		}
		for k, ep := range eps {
			if ep.IsValid() && ep.Addr() == muxBackAddr {
				t.Errorf("%s lists peer %s at udpmux's own address %v", b.Name, k, ep)
			}
		}
		t.Logf("%s: %s shows it at %v", c.Name, b.Name, eps[c.Key.Public])
	}
}

// parseEndpoints parses `wg show DEV endpoints`: a public key and its
// endpoint per line, "(none)" for a peer never heard from.
func parseEndpoints(out string) map[string]netip.AddrPort {
	eps := map[string]netip.AddrPort{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		key, ep, ok := strings.Cut(line, "\t")
		if !ok {
			continue
		}
		eps[key], _ = netip.ParseAddrPort(strings.TrimSpace(ep))
	}
	return eps
}

func TestParseEndpoints(t *testing.T) {
	out := "aGVsbG8=\t198.18.0.10:40001\nd29ybGQ=\t(none)\n"
	eps := parseEndpoints(out)
	if eps["aGVsbG8="] != netip.MustParseAddrPort("198.18.0.10:40001") || eps["d29ybGQ="].IsValid() || len(eps) != 2 {
		t.Errorf("parseEndpoints = %v", eps)
	}
}

func TestLostBetween(t *testing.T) {
	at := func(ms int) time.Time { return time.Unix(1000, 0).Add(time.Duration(ms) * time.Millisecond) }
	l := pingLog{
		Replies: []pingReply{{Seq: 1, Recv: at(1), RTT: time.Millisecond}, {Seq: 5, Recv: at(801), RTT: time.Millisecond}},
		Lost:    []int{2, 3, 4},
	}
	// Sent at 200, 400 and 600 ms.
	if got := l.lostBetween(at(300), at(700), 200*time.Millisecond); !slices.Equal(got, []int{3, 4}) {
		t.Errorf("lostBetween(300ms, 700ms) = %v; want [3 4]", got)
	}
	if got := l.lostBetween(at(700), at(900), 200*time.Millisecond); len(got) != 0 {
		t.Errorf("lostBetween(700ms, 900ms) = %v; want none", got)
	}
}
