//go:build linux

package proxy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/udpmux/udpmux/dissect/quic"
	"github.com/udpmux/udpmux/quiclb"
	"github.com/udpmux/udpmux/session"
	"github.com/udpmux/udpmux/session/sessiontest"
)

// The routing tests put a QUIC dissector (package dissect/quic) in as the
// Router, with the backends' QUIC-LB server IDs: real packets, routed by
// the proxy's rules, on a sessiontest.Loop.

// routeLB is the tests' QUIC-LB configuration: four-pass, 2-octet server
// IDs, so that connection IDs are 9 octets.
var routeLB = quiclb.Config{Rotation: 1, ServerIDLen: 2, NonceLen: 6, Key: bytes.Repeat([]byte{0x5a}, 16), EncodeLength: true}

// routeIDs are the server IDs of the tests' three backends; unknownID is
// one no backend has.
var (
	routeIDs  = []string{"0a01", "0b02", "0c03"}
	unknownID = "0d04"
)

// newRouteUnit is newUnit for three backends with the server IDs routeIDs
// and a QUIC dissector as the Router; with known, the dissector knows the
// backends' server IDs, as udpmux's daemon sets it up, and finds any other
// unroutable.
func newRouteUnit(t *testing.T, known bool) *unit {
	t.Helper()
	dec, err := quiclb.NewDecoder(routeLB)
	if err != nil {
		t.Fatal(err)
	}
	var sids []quiclb.ServerID
	var ids [][]byte
	for _, s := range routeIDs {
		id, _ := quiclb.ParseServerID(s)
		sids, ids = append(sids, id), append(ids, id.Bytes())
	}
	if !known {
		sids = nil
	}
	d, err := quic.New(quic.Config{Decoder: dec, ServerIDs: sids})
	if err != nil {
		t.Fatal(err)
	}
	return newUnit(t, len(routeIDs), Config{Router: d, ServerIDs: ids})
}

// openWith opens the session that datagram p from client creates.
func (u *unit) openWith(client string, p []byte) *sessiontest.Session {
	u.t.Helper()
	s, err := u.l.OpenDatagram(netip.MustParseAddrPort(client), p)
	if err != nil {
		u.t.Fatalf("open %s: %v", client, err)
	}
	u.t.Cleanup(func() { s.End(session.ReasonShutdown) })
	return s
}

// backendOf returns the index of s's backend.
func (u *unit) backendOf(s *sessiontest.Session) int {
	return s.State().(*upstream).backend
}

// serverCID returns a new connection ID of the server with ID sid.
func serverCID(t *testing.T, sid string) []byte {
	t.Helper()
	id, _ := quiclb.ParseServerID(sid)
	e, err := quiclb.NewEncoder(routeLB, id)
	if err != nil {
		t.Fatal(err)
	}
	cid, err := e.NewCID()
	if err != nil {
		t.Fatal(err)
	}
	return cid
}

// oneRTT returns a short header packet to dcid.
func oneRTT(dcid []byte) []byte {
	return append(append([]byte{0x41}, dcid...), make([]byte, 40)...)
}

// clientInitial returns a client's first Initial of QUIC version 1 to
// dcid, padded to 1200 octets.
func clientInitial(dcid []byte) []byte {
	p := []byte{0xc0, 0, 0, 0, 1, byte(len(dcid))}
	p = append(p, dcid...)
	p = append(p, 8, 1, 2, 3, 4, 5, 6, 7, 8) // SCID
	p = append(p, 0)                         // no token
	p = binary.BigEndian.AppendUint16(p, 0x4000|1100)
	return append(p, make([]byte, 1200-len(p))...)
}

// clientDCID returns client i's random first DCID of 8 octets.
func clientDCID(i int) []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(i)*0x9e3779b97f4a7c15)
}

// TestRouteByServerID: a session whose first datagram carries a
// connection ID of a backend's server ID goes to that backend, from any
// client address, a short header or a long one.
func TestRouteByServerID(t *testing.T) {
	u := newRouteUnit(t, true)
	for b, sid := range routeIDs {
		for i := range 10 {
			client := fmt.Sprintf("198.51.100.%d:%d", 10*b+i+1, 2000+i)
			p := oneRTT(serverCID(t, sid))
			if i%2 == 1 {
				p = append([]byte{0xe0, 0, 0, 0, 1, 9}, serverCID(t, sid)...) // Handshake
				p = append(p, 0, 0x40, 30)
				p = append(p, make([]byte, 30)...)
			}
			if s := u.openWith(client, p); u.backendOf(s) != b {
				t.Errorf("%s: a connection ID of server %s went to backend %d; want %d", client, sid, u.backendOf(s), b)
			}
		}
	}
	if st := u.h.Stats(); st.Routed != 30 || st.RouteFallbacks != 0 {
		t.Errorf("Routed %d, RouteFallbacks %d; want 30 and 0", st.Routed, st.RouteFallbacks)
	}
}

// TestRouteFallsBackToTheDCIDsHash: a session whose first datagram names
// no backend that can take it is balanced by a hash of its DCID, so that
// the same DCID from any client address, and on any udpmux with the same
// backends, goes to the same backend: a client's Initial (the DCID is the
// client's random choice), a server ID no backend has, and that of a
// backend that is down.
func TestRouteFallsBackToTheDCIDsHash(t *testing.T) {
	type packet struct {
		dcid []byte
		p    []byte
	}
	initials := func(t *testing.T) []packet {
		var ps []packet
		for i := range 30 {
			ps = append(ps, packet{clientDCID(i), clientInitial(clientDCID(i))})
		}
		return ps
	}
	oneRTTs := func(sid string) func(t *testing.T) []packet {
		return func(t *testing.T) []packet {
			var ps []packet
			for range 30 {
				cid := serverCID(t, sid)
				ps = append(ps, packet{cid, oneRTT(cid)})
			}
			return ps
		}
	}
	tests := []struct {
		name     string
		known    bool // the dissector knows the backends' server IDs
		down     int  // the backend marked down, or -1
		packets  func(t *testing.T) []packet
		fallback uint64 // RouteFallbacks per session
	}{
		{"initial", true, -1, initials, 0},
		// The proxy finds no backend with the server ID.
		{"unknown server ID", false, -1, oneRTTs(unknownID), 1},
		// The dissector finds the DCID unroutable: no server ID.
		{"server ID the dissector does not know", true, -1, oneRTTs(unknownID), 0},
		{"backend down", true, 0, oneRTTs(routeIDs[0]), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, other := newRouteUnit(t, tt.known), newRouteUnit(t, tt.known) // two udpmux instances
			if tt.down >= 0 {
				for _, x := range []*unit{u, other} {
					x.h.bal.MarkDown(tt.down, x.clk.Now())
					x.h.bal.settle() // the Maglev table without it
				}
			}
			used := map[int]int{}
			ps := tt.packets(t)
			for i, pk := range ps {
				a := u.openWith(fmt.Sprintf("198.51.100.%d:1000", i+1), pk.p)
				b := u.openWith(fmt.Sprintf("203.0.113.%d:%d", i+1, 3000+i), pk.p)
				c := other.openWith(fmt.Sprintf("192.0.2.%d:4000", i+100), pk.p)
				ba := u.backendOf(a)
				if ba != u.backendOf(b) || ba != other.backendOf(c) {
					t.Fatalf("DCID %x: backends %d and %d from two client addresses, %d on another udpmux", pk.dcid, ba, u.backendOf(b), other.backendOf(c))
				}
				if ba == tt.down {
					t.Fatalf("DCID %x: on backend %d, which is down", pk.dcid, ba)
				}
				used[ba]++
			}
			if n := 3; tt.down >= 0 && len(used) != n-1 || tt.down < 0 && len(used) != n {
				t.Errorf("the DCIDs' sessions went to backends %v; want them spread over every healthy one", used)
			}
			if st := u.h.Stats(); st.Routed != 0 || st.RouteFallbacks != tt.fallback*uint64(2*len(ps)) {
				t.Errorf("Routed %d, RouteFallbacks %d; want 0 and %d", st.Routed, st.RouteFallbacks, tt.fallback*uint64(2*len(ps)))
			}
			if tt.down < 0 {
				return
			}
			// Once its back-off has ended, the backend takes its sessions
			// again.
			u.clk.Advance(time.Minute)
			if s := u.openWith("198.51.100.250:1000", ps[0].p); u.backendOf(s) != tt.down || u.h.Stats().Routed != 1 {
				t.Errorf("after the back-off: backend %d, Routed %d; want %d and 1", u.backendOf(s), u.h.Stats().Routed, tt.down)
			}
		})
	}
}

// TestRouteNeedsNoRouter: without a Router the first datagram makes no
// difference: a session goes where its key puts it, as with Open.
func TestRouteNeedsNoRouter(t *testing.T) {
	u := newUnit(t, 3, Config{})
	for i := range 30 {
		client := fmt.Sprintf("198.51.100.%d:%d", i+1, 5000+i)
		s := u.openWith(client, oneRTT(serverCID(t, routeIDs[i%3])))
		want, _ := u.h.bal.Pick(sessionHash(s.Key()))
		if got := u.backendOf(s); got != want {
			t.Errorf("%s: backend %d; want %d, its key's", client, got, want)
		}
	}
}

// TestServerIDsConfig: what New refuses about server IDs.
func TestServerIDsConfig(t *testing.T) {
	d, _ := quic.New(quic.Config{})
	backends := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.1:2")}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"without a router", Config{ServerIDs: [][]byte{{1}, {2}}}, "server IDs without a router"},
		{"too few", Config{Router: d, ServerIDs: [][]byte{{1}}}, "1 server IDs for 2 backends"},
		{"twice", Config{Router: d, ServerIDs: [][]byte{{1}, {1}}}, "backends 127.0.0.1:1 and 127.0.0.1:2 have the same server ID 01"},
	} {
		tc.cfg.Backends = backends
		if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want an error with %q", tc.name, err, tc.want)
		}
	}
	if _, err := New(Config{Backends: backends, Router: d, ServerIDs: [][]byte{{1}, nil}}); err != nil {
		t.Errorf("a backend without a server ID: %v", err)
	}
}
