//go:build linux

package openvpn

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
	"github.com/udpmux/udpmux/session/sessiontest"
)

// newHolder returns a session of listener testScope whose keys a Track
// reads, of a loop that stands for the engine's.
func newHolder(t testing.TB) *sessiontest.Session {
	t.Helper()
	_, peer := captureAddrs(1)
	s, err := (&sessiontest.Loop{Handler: session.Discard{}, Scope: testScope}).Open(peer)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// dataV2 returns a P_DATA_V2 packet of an AEAD cipher.
func dataV2(key uint8, peer, pid uint32) []byte {
	p := packet(opDataV2<<opcodeShift|key, 60, []byte{byte(peer >> 16), byte(peer >> 8), byte(peer)})
	binary.BigEndian.PutUint32(p[4:], pid)
	return p
}

// clientSends has tr note the client's data packets on key with peer-id
// peer from its own address, packet-ids 1 to last or the run of
// replaceRun+1 that ends at last.
func clientSends(tr session.Track, held *sessiontest.Session, key uint8, peer, last uint32) {
	for pid := max(last, replaceRun+1) - replaceRun; pid <= last; pid++ {
		tr.Client(held, dataV2(key, peer, pid), false)
	}
}

// onKey1 has tr's session hold peer-id 7, its client send on key 1 and its
// server answer three times on key 1: both sequences found.
func onKey1(t *testing.T, tr session.Track, held *sessiontest.Session) {
	t.Helper()
	held.AddKey(mustPeerID(t, 7))
	clientSends(tr, held, 1, 7, 100)
	for pid := uint32(1); pid <= 3; pid++ {
		tr.Server(held, dataV2(1, 7, pid))
	}
}

// softReset2 is the client's soft reset to key 2.
var softReset2 = packet(opSoftResetV1<<opcodeShift|2, 14, testSIDs[0])

// TestTrack: what a session's client and server teach its Track, and what
// the Track believes of a packet on a new path.
func TestTrack(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, tr session.Track, held *sessiontest.Session)
	}{
		{"a data packet from elsewhere must continue the client's packet-ids", func(t *testing.T, tr session.Track, held *sessiontest.Session) {
			if _, ok := tr.Client(held, dataV2(1, 5, 77), true); !ok {
				t.Error("nothing known of the key yet: not plausible")
			}
			// Reordered (90) and forged in the client's name, out of its
			// sequence (0xFFFFFF00, which would make every move
			// implausible): the sequence stays.
			for _, pid := range []uint32{98, 99, 100, 90, 0xFFFFFF00} {
				tr.Client(held, dataV2(1, 5, pid), false)
			}
			for _, c := range []struct {
				key      uint8
				pid      uint32
				want     bool
				describe string
			}{
				{1, 100, false, "used already"},
				{1, 50, false, "older"},
				{1, 101, true, "the next"},
				{1, 100 + clientWindow, true, "as far ahead as may be"},
				{1, 101 + clientWindow, false, "further"},
				{2, 1, true, "a key the client has not used here"},
			} {
				if _, ok := tr.Client(held, dataV2(c.key, 5, c.pid), true); ok != c.want {
					t.Errorf("%s (key %d, packet-id %d): plausible %v", c.describe, c.key, c.pid, ok)
				}
			}
			for _, p := range [][]byte{packet(0x20, 100, testSIDs[0]), packet(0x30, 40, nil), dataV2(1, 5, 3)[:7]} {
				if own, ok := tr.Client(held, p, true); !ok || own.Kind() != flowtable.KindNone {
					t.Errorf("opcode %d, %d bytes: own %v plausible %v; want none, true", p[0]>>3, len(p), own, ok)
				}
			}
			// From its own address, a control packet names the client's
			// session ID.
			for _, op := range []byte{0x20, 0x28, 0x18, 0x38} {
				if own, _ := tr.Client(held, packet(op, 100, testSIDs[0]), false); own != mustCID(t, testSIDs[0]) {
					t.Errorf("opcode %d from the client's address: own %v", op>>3, own)
				}
			}
		}},
		{"the peer-id: the one the client uses, in its sequence once there is one", func(t *testing.T, tr session.Track, held *sessiontest.Session) {
			for _, c := range []struct {
				p      []byte
				client bool
				want   uint32 // 0xFFFFFF: none
			}{
				{dataV2(0, 7, 1), false, noPeerID}, // forged, maybe: the client has not spoken
				{dataV2(0, 7, 1), true, noPeerID},
				{dataV2(0, 7, 2), true, noPeerID},
				{dataV2(0, 7, 3), false, 7},
				{dataV2(0, noPeerID, 4), false, noPeerID},
				{packet(0x20, 100, testSIDs[0]), false, noPeerID},
				{dataV2(0, 8, 5), false, noPeerID},    // not the client's
				{dataV2(0, 7, 3), true, noPeerID},     // the third in sequence founds it
				{dataV2(0, 9, 90000), true, noPeerID}, // forged in its name, out of its sequence
				{dataV2(0, 7, 6), false, 7},
				{dataV2(0, 9, 4), true, noPeerID}, // and in it: the peer-id changes...
				{dataV2(0, 7, 7), false, noPeerID},
				{dataV2(0, 7, 5), true, noPeerID}, // ...until the client's next packet
				{dataV2(0, 7, 8), false, 7},
			} {
				if c.client {
					tr.Client(held, c.p, false)
					continue
				}
				want := flowtable.Key{}
				if c.want != noPeerID {
					want = mustPeerID(t, c.want)
				}
				if got := tr.Server(held, c.p); got != want {
					t.Errorf("% x: Server = %v, want %v", c.p[:8], got, want)
				}
			}
		}},
		{"what vouches: the next packet-ids of the server's sequence on the session's own socket", func(t *testing.T, tr session.Track, held *sessiontest.Session) {
			held.AddKey(mustPeerID(t, 7))
			clientSends(tr, held, 2, 7, 1)
			for pid := uint32(10); pid < 12; pid++ {
				tr.Server(held, dataV2(2, 7, pid))
				if tr.Vouches(held, dataV2(2, 7, pid+1)) {
					t.Fatalf("vouched after %d packets of the server's", pid-9)
				}
			}
			tr.Server(held, dataV2(2, 7, 12)) // the third in sequence founds it
			for _, c := range []struct {
				p    []byte
				want bool
			}{
				{dataV2(2, 7, 13), true},
				{dataV2(2, 7, 12+vouchWindow), true},
				{dataV2(2, 7, 13+vouchWindow), false},
				{dataV2(2, 7, 12), false},
				{dataV2(2, 7, 5), false},
				{dataV2(3, 7, 13), false}, // another key
				{dataV2(2, 8, 13), false}, // another peer-id
				{dataV2(2, noPeerID, 13), false},
				{dataV2(2, 7, 13)[:7], false},
				{packet(0x20, 100, testSIDs[0]), false},
			} {
				if got := tr.Vouches(held, c.p); got != c.want {
					t.Errorf("% x: Vouches = %v, want %v", c.p[:min(8, len(c.p))], got, c.want)
				}
			}
		}},
		{"forged packets on the session's socket do not move the server's sequence", func(t *testing.T, tr session.Track, held *sessiontest.Session) {
			held.AddKey(mustPeerID(t, 7))
			clientSends(tr, held, 0, 7, 1)
			for pid := uint32(1); pid <= 3; pid++ {
				tr.Server(held, dataV2(0, 7, pid))
			}
			// A forger's own sequence, far from the server's, one packet
			// short of replacing it; the server's next packet ends it.
			for i := uint32(0); i < replaceRun; i++ {
				tr.Server(held, dataV2(0, 7, 5000+i))
			}
			if tr.Vouches(held, dataV2(0, 7, 5000+replaceRun)) || !tr.Vouches(held, dataV2(0, 7, 4)) {
				t.Fatal("the forged run took the server's sequence's place")
			}
			tr.Server(held, dataV2(0, 7, 4))
			tr.Server(held, dataV2(0, 7, 5001+replaceRun))
			if tr.Vouches(held, dataV2(0, 7, 5002+replaceRun)) || !tr.Vouches(held, dataV2(0, 7, 5)) {
				t.Fatal("the forged run went on after the server's packet")
			}
			// A sequence that runs on by itself (the server's, after the
			// kernel dropped more than serverWindow of its packets) takes
			// the place of one that stopped.
			for i := uint32(0); i <= replaceRun; i++ {
				tr.Server(held, dataV2(0, 7, 9000+i))
			}
			if !tr.Vouches(held, dataV2(0, 7, 9001+replaceRun)) {
				t.Error("a sequence that ran on alone did not take the place of one that stopped")
			}
		}},
		{"before any data of the server's, a run on new paths vouches", func(t *testing.T, tr session.Track, held *sessiontest.Session) {
			held.AddKey(mustPeerID(t, 7))
			// A successor process whose client moved during the restart:
			// the server sends to the probe only.
			for _, c := range []struct {
				p    []byte
				want bool
			}{
				{dataV2(1, 7, 500), false},
				{dataV2(1, 7, 501), false},
				{dataV2(2, 7, 502), false}, // another key: the run starts again
				{dataV2(2, 7, 503), false},
				{dataV2(2, 8, 504), false}, // a peer-id the session does not hold: not in the run
				{dataV2(2, 7, 504), true},
			} {
				if got := tr.Vouches(held, c.p); got != c.want {
					t.Errorf("% x: Vouches = %v, want %v", c.p[:8], got, c.want)
				}
			}
			clientSends(tr, held, 2, 7, 1)
			tr.Server(held, dataV2(2, 7, 505)) // the server's, on a trusted path: a sequence to continue from now on
			if tr.Vouches(held, dataV2(2, 7, 900)) {
				t.Error("a packet that continues no sequence vouched once the Track had heard the server")
			}
		}},
		{"recovery: three data packets in sequence on one key, with a peer-id the session holds", func(t *testing.T, tr session.Track, held *sessiontest.Session) {
			held.AddKey(mustPeerID(t, 7))
			for i, c := range []struct {
				p    []byte
				want bool
			}{
				{dataV2(0, 7, 40), false},
				{dataV2(0, 7, 41), false},
				{dataV2(0, 9, 42), false}, // a peer-id the session does not hold: no part of a run
				{packet(0x20, 100, testSIDs[0]), false},
				{dataV2(0, 7, 42), true},
			} {
				if own, ok := tr.Recovers(held, c.p); ok != c.want || own.Kind() != flowtable.KindNone {
					t.Errorf("packet %d: Recovers = %v, %v", i, own, ok)
				}
			}
		}},
		{"while the kernel forwards the data, its counts move both sequences on (Skipped)", func(t *testing.T, tr session.Track, held *sessiontest.Session) {
			held.AddKey(mustPeerID(t, 7))
			clientSends(tr, held, 2, 7, 100)
			for pid := uint32(10); pid <= 12; pid++ {
				tr.Server(held, dataV2(2, 7, pid))
			}
			sk := tr.(session.Skipper)
			sk.Skipped(opDataV2<<opcodeShift|3, 50, 50)    // another key: nothing known of it
			sk.Skipped(opControlV1<<opcodeShift|2, 50, 50) // not data: ignored
			// The first count on key 2 holds the sightings above: which of
			// its 10 came before them is unknown, and the sequences stay.
			sk.Skipped(opDataV2<<opcodeShift|2, 10, 10)
			type vc = struct {
				pid  uint32
				want bool
			}
			vouches := func(when string, cases ...vc) {
				t.Helper()
				for _, c := range cases {
					if got := tr.Vouches(held, dataV2(2, 7, c.pid)); got != c.want {
						t.Errorf("%s: server packet-id %d: Vouches = %v, want %v", when, c.pid, got, c.want)
					}
				}
			}
			// vouchWindow, twice the pace (10), and the 10 left unsure.
			vouches("after a count that held a sighting", vc{12, false}, vc{13, true}, vc{12 + vouchWindow + 30, true}, vc{13 + vouchWindow + 30, false})
			sk.Skipped(opDataV2<<opcodeShift|2, 1000, 100) // the server went on to 112, the client to 1100
			vouches("after a count of 100", vc{13, false}, vc{112, false}, vc{113, true},
				vc{112 + vouchWindow + 200 + 10, true}, vc{113 + vouchWindow + 200 + 10, false})
			if _, ok := tr.Client(held, dataV2(2, 7, 1100), true); ok {
				t.Error("client packet-id 1100 from elsewhere: plausible, though the kernel forwarded it")
			}
			if _, ok := tr.Client(held, dataV2(2, 7, 1101), true); !ok {
				t.Error("client packet-id 1101 from elsewhere: not plausible")
			}
			if tr.Vouches(held, dataV2(3, 7, 51)) {
				t.Error("a key the Track never saw vouches after Skipped")
			}
		}},
		{"a renegotiated key: the server's data on it vouches before the client sends data on it", func(t *testing.T, tr session.Track, held *sessiontest.Session) {
			onKey1(t, tr, held)
			// Before the client negotiates key 2, the server's data on it
			// (forged, or not) founds nothing.
			for pid := uint32(1); pid <= 3; pid++ {
				tr.Server(held, dataV2(2, 7, pid))
			}
			if tr.Vouches(held, dataV2(2, 7, 4)) {
				t.Fatal("key 2's data vouches before the client negotiated key 2")
			}
			// From another address, the client's soft reset names nothing.
			tr.Client(held, softReset2, true)
			for pid := uint32(4); pid <= 6; pid++ {
				tr.Server(held, dataV2(2, 7, pid))
			}
			if tr.Vouches(held, dataV2(2, 7, 7)) {
				t.Fatal("key 2's data vouches after a soft reset from another address")
			}
			// The client's soft reset from its own address: the server
			// sends on key 2 at once, the client stays on key 1 for a while.
			tr.Client(held, softReset2, false)
			for pid := uint32(7); pid <= 9; pid++ {
				tr.Server(held, dataV2(2, 7, pid))
			}
			if !tr.Vouches(held, dataV2(2, 7, 10)) {
				t.Error("the server's next packet on the renegotiated key does not vouch")
			}
			if tr.Vouches(held, dataV2(3, 7, 10)) {
				t.Error("a key nobody negotiated vouches")
			}
		}},
		{"a client that moved as a renegotiation ended: a run on the new path vouches on the key it named", func(t *testing.T, tr session.Track, held *sessiontest.Session) {
			onKey1(t, tr, held)
			tr.Client(held, softReset2, false)
			// The server's first packets on key 2 go to the probe only.
			for _, c := range []struct {
				p    []byte
				want bool
			}{
				{dataV2(3, 7, 1), false}, // a key nobody named: never a run
				{dataV2(3, 7, 2), false},
				{dataV2(3, 7, 3), false},
				{dataV2(2, 7, 1), false},
				{dataV2(2, 7, 2), false},
				{dataV2(2, 7, 3), true},
			} {
				if got := tr.Vouches(held, c.p); got != c.want {
					t.Errorf("% x: Vouches = %v, want %v", c.p[:8], got, c.want)
				}
			}
		}},
		{"a key-id that comes round again starts both sequences again", func(t *testing.T, tr session.Track, held *sessiontest.Session) {
			held.AddKey(mustPeerID(t, 7))
			clientSends(tr, held, 1, 7, 3*clientWindow)
			for pid := uint32(1); pid <= 3; pid++ {
				tr.Server(held, dataV2(1, 7, 4*clientWindow+pid))
			}
			// Seven renegotiations later, a run of replaceRun steps.
			clientSends(tr, held, 1, 7, 1+replaceRun)
			if _, ok := tr.Client(held, dataV2(1, 7, 2+replaceRun), true); !ok {
				t.Error("the client's sequence did not start again")
			}
			for pid := uint32(1); pid <= 3; pid++ {
				tr.Server(held, dataV2(1, 7, pid))
			}
			if !tr.Vouches(held, dataV2(1, 7, 4)) {
				t.Error("the server's sequence did not start again")
			}
		}},
	}
	var d Dissector
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, d.Track(testScope), newHolder(t)) })
	}
}

// atoi is strconv.Atoi for a number the test made.
func atoi(t *testing.T, s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestCaptureTrack replays the captures of real OpenVPN 2.6 through a
// session's Track per client: the server's data packets form a sequence
// per key that vouches for its next packets (on a new path, after a move),
// the Track learns each client's own peer-id only, and the client's own
// data packets, from a new address halfway, are plausible.
func TestCaptureTrack(t *testing.T) {
	for _, c := range readCaptures(t) {
		t.Run(c.name, func(t *testing.T) {
			var d Dissector
			tracks, recovering := map[int]session.Track{}, map[int]session.Track{}
			recovered := map[int]int{} // the server's data packets it took
			helds := map[int]*sessiontest.Session{}
			vouched, data := map[string]int{}, map[string]int{}
			early := map[string]int{}    // the server's packets on a key before its client named it
			firstKey := map[int]string{} // each client's first key with the server's data
			used := map[string]bool{}
			spoke := map[int]bool{} // clients that sent data
			for i, g := range c.grams {
				tr, held := tracks[g.client], helds[g.client]
				if tr == nil {
					tr, held = d.Track(testScope), newHolder(t)
					tracks[g.client], helds[g.client] = tr, held
					recovering[g.client] = d.Track(testScope)
				}
				where := fmt.Sprintf("datagram %d (client %d, opcode %d, key-id %d)", i, g.client, g.payload[0]>>3, g.payload[0]&7)
				key := fmt.Sprintf("%d/%d", g.client, g.payload[0]&7)
				if g.toServer {
					isData := g.payload[0]>>opcodeShift == opDataV2
					spoke[g.client] = spoke[g.client] || isData
					moved := g.client == 1 && i == len(c.grams)/2
					own, ok := tr.Client(held, g.payload, moved)
					// Data on the key, or a control packet from the client's
					// own address, which names it.
					used[key] = used[key] || isData || !moved && own.Kind() == flowtable.KindCID
					want := mustCID(t, c.clients[g.client].sessionID)
					if isData || moved {
						want = flowtable.Key{}
					}
					if !ok || own != want {
						t.Errorf("%s: own %v plausible %v; want %v", where, own, ok, want)
					}
					continue
				}
				if g.payload[0]>>opcodeShift != opDataV2 {
					continue
				}
				// A udpmux that never saw the client, asking the server from
				// the moment it holds the client's peer-id (its data carry it).
				if r := recovering[g.client]; r != nil && held.Holds(mustPeerID(t, uint32(c.clients[g.client].peerID))) {
					recovered[g.client]++
					if _, ok := r.Recovers(held, g.payload); ok {
						recovering[g.client] = nil
					}
				}
				data[key]++
				if _, ok := firstKey[g.client]; !ok {
					firstKey[g.client] = key
				}
				if !used[key] || !spoke[g.client] {
					early[key]++ // the key not named yet, or no peer-id: teaches nothing
				}
				if tr.Vouches(held, g.payload) {
					vouched[key]++
				}
				k := tr.Server(held, g.payload)
				want := mustPeerID(t, uint32(c.clients[g.client].peerID))
				if !spoke[g.client] {
					want = flowtable.Key{} // the client has used no peer-id yet
				}
				if k != want {
					t.Errorf("%s: Server = %v, want %v", where, k, want)
				}
				held.AddKey(k)
			}
			// Every packet of the server's vouches but those that find the
			// sequence (startRun + 1; on a renegotiated key, whose sequence
			// a run founds, startRun) and those before the client named the
			// key, in a control packet or data, or sent data at all (no
			// peer-id to check yet); those on a renegotiated key before the
			// client's first data on it vouch (a server begins a
			// renegotiated key first).
			for n := range c.clients {
				if recovering[n] != nil || recovered[n] != startRun+1 {
					t.Errorf("client %d: recovered after %d of the server's data packets; want %d", n, recovered[n], startRun+1)
				}
			}
			for key, n := range data {
				want := n - early[key] - startRun - 1
				if c, _, _ := strings.Cut(key, "/"); firstKey[atoi(t, c)] != key {
					want++ // a renegotiated key: the run that founds its sequence vouches
				}
				if want < 3 || vouched[key] != want {
					t.Errorf("client/key %s: %d of the server's %d data packets vouch (%d before the client's first); want %d", key, vouched[key], n, early[key], want)
				}
			}
			if len(data) < 3 {
				t.Errorf("server data on %d client/keys: %v", len(data), data)
			}
		})
	}
}

// FuzzTrack: whatever a session's client and server send, a Track never
// changes a datagram, learns only a P_DATA_V2 packet's peer-id, if any, and
// vouches only for a P_DATA_V2 packet with a peer-id the session holds.
func FuzzTrack(f *testing.F) {
	addFuzzSeeds(f, false)
	f.Fuzz(func(t *testing.T, p []byte) {
		var d Dissector
		tr, held := d.Track(testScope), newHolder(t)
		orig := append([]byte(nil), p...)
		for _, moved := range []bool{false, true} {
			own, _ := tr.Client(held, p, moved)
			if d.Dissect(p, testLocal, testPeer, testScope).Key.Kind() != flowtable.KindCID || moved {
				if own.Kind() != flowtable.KindNone {
					t.Fatalf("Client (moved %v) named an own key %v", moved, own)
				}
			} else if own != d.Dissect(p, testLocal, testPeer, testScope).Key {
				t.Fatalf("Client named %v for a control packet", own)
			}
		}
		for range 3 {
			k := tr.Server(held, p)
			if w, _ := reply(p, testScope); k != w && k.Kind() != flowtable.KindNone {
				t.Fatalf("Server = %v; the packet's peer-id key is %v", k, w)
			}
			held.AddKey(k)
		}
		_, recovers := tr.Recovers(held, p)
		if tr.Vouches(held, p) || recovers {
			if _, _, _, ok := data(p); !ok {
				t.Fatalf("vouched or recovered for % x", p)
			}
		}
		if string(p) != string(orig) {
			t.Fatal("the Track changed the datagram")
		}
	})
}
