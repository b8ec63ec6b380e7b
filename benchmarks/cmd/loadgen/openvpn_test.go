package main

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/udpmux/udpmux/benchmarks/internal/wire"
	"github.com/udpmux/udpmux/dissect/openvpn"
	"github.com/udpmux/udpmux/fastpath"
	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
)

// ovpnPacket returns flow id's datagram number seq of size bytes, as
// sendBurst writes it with -proto openvpn.
func ovpnPacket(id uint32, seq uint64, size int) []byte {
	g := &generator{cfg: config{proto: protoOpenVPN}}
	b := make([]byte, size)
	g.putProto(b, id, seq)
	wire.Put(b[g.payloadOffset():], wire.Header{Flow: id, Seq: seq})
	return b
}

// The generator's OpenVPN packets are what udpmux's dissector accepts: the
// hard reset creates a session under the flow's session ID, a data packet
// looks its 4-tuple up and carries the flow's peer-id.
func TestOpenVPNPacketsDissect(t *testing.T) {
	var d openvpn.Dissector
	const scope = 3
	local := netip.MustParseAddrPort("198.18.0.2:9000")
	peer := netip.MustParseAddrPort("198.18.0.1:10007")
	hello := (&generator{cfg: config{proto: protoOpenVPN}}).hello(7)
	if !(&generator{cfg: config{proto: protoOpenVPN}}).isHello(hello) {
		t.Errorf("the hard reset % x is not recognised as its own echo", hello)
	}
	var sid [8]byte
	binary.BigEndian.PutUint64(sid[:], ovpnSessionID(7))
	wantCID, _ := flowtable.CIDKey(scope, sid[:])
	if dis := d.Dissect(hello, local, peer, scope); dis.Verdict != session.Create || dis.Key != wantCID {
		t.Errorf("hard reset: verdict %v key %v, want Create under the session ID", dis.Verdict, dis.Key)
	}
	wantID, _ := flowtable.IDKey(scope, openvpn.ClassPeerID, []byte{0, 0, 7})
	for _, size := range []int{ovpnDataHeaderLen + wire.HeaderLen, 64, 1400} {
		b := ovpnPacket(7, 41, size)
		if b[0] != 0x48 || binary.BigEndian.Uint32(b[4:]) != 42 {
			t.Errorf("data of %d bytes: header % x, want 48, peer-id 00 00 07, packet-id 42", size, b[:8])
		}
		dis := d.Dissect(b, local, peer, scope)
		if dis.Verdict != session.Lookup || dis.Key != flowtable.TupleKey(scope, local, peer) || dis.ID != wantID || !dis.IDRepeats {
			t.Errorf("data of %d bytes: %+v, want Lookup by the 4-tuple with the peer-id as ID", size, dis)
		}
		if h, err := wire.Parse(b[ovpnDataHeaderLen:]); err != nil || h.Flow != 7 || h.Seq != 41 {
			t.Errorf("data of %d bytes: header %+v, %v", size, h, err)
		}
	}
}

// The echo backend reflects a data packet unchanged, which is what the
// server's data packet to the client looks like to udpmux: the session's
// Track learns the peer-id from the first one (after the client's own),
// and each is data that the fast path forwards, so that the fourth on the
// session's socket offloads it (proxy.countReply).
func TestOpenVPNReflectedDataIsTheServers(t *testing.T) {
	var d openvpn.Dissector
	const scope = 3
	tr := d.Track(scope)
	own, ok := tr.Client(nil, hardReset(ovpnSessionID(9)), false)
	if !ok || own.Kind() != flowtable.KindCID {
		t.Errorf("hard reset: own key %v (%v), want the session ID", own, ok)
	}
	wantID, _ := flowtable.IDKey(scope, openvpn.ClassPeerID, []byte{0, 0, 9})
	for seq := range uint64(8) {
		p := ovpnPacket(9, seq, 64)
		if _, ok := tr.Client(nil, p, false); !ok {
			t.Fatalf("packet-id %d from the client: not plausible", seq+1)
		}
		if k := tr.Server(nil, p); k != wantID {
			t.Errorf("packet-id %d reflected: the Track files the session under %v, want the peer-id %v", seq+1, k, wantID)
		}
		if k, ok := fastpath.KindOf(fastpath.OpenVPN, p); !ok || k != fastpath.OpenVPNKey(0) {
			t.Errorf("packet-id %d reflected: fast-path kind %v (%v), want OpenVPN data on key 0", seq+1, k, ok)
		}
	}
	if _, ok := fastpath.KindOf(fastpath.OpenVPN, hardReset(ovpnSessionID(9))); ok {
		t.Error("the hard reset counts as data for the fast path")
	}
	// Another flow's packets carry another peer-id, which this session's
	// Track never takes.
	if k := tr.Server(nil, ovpnPacket(10, 0, 64)); k.Kind() != flowtable.KindNone {
		t.Errorf("another flow's packet: the Track files the session under %v", k)
	}
}

// Peer-ids are the flow ids: distinct, and never 0xFFFFFF (none).
func TestOpenVPNPeerIDs(t *testing.T) {
	seen := map[[3]byte]bool{}
	for id := range uint32(10000) {
		var pid [3]byte
		copy(pid[:], ovpnPacket(id, 0, 64)[1:4])
		if seen[pid] || pid == [3]byte{0xff, 0xff, 0xff} {
			t.Fatalf("flow %d: peer-id % x again or none", id, pid)
		}
		seen[pid] = true
		if ovpnSessionID(id) == 0 {
			t.Fatalf("flow %d: session ID 0", id)
		}
	}
}
