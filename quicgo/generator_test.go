package quicgo

import (
	"bytes"
	"sync"
	"testing"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlog"

	"github.com/udpmux/udpmux/quiclb"
)

// TestGeneratorCIDs: every connection ID decodes to the server, has the
// configuration's length, and none repeats, for each algorithm, from
// several goroutines at once.
func TestGeneratorCIDs(t *testing.T) {
	for _, cfg := range []quiclb.Config{
		testLB,
		{Rotation: 0, ServerIDLen: 3, NonceLen: 5},                                       // plaintext
		{Rotation: 2, ServerIDLen: 4, NonceLen: 12, Key: testLB.Key},                     // single pass
		{Rotation: 6, ServerIDLen: 4, NonceLen: 15, Key: testLB.Key, EncodeLength: true}, // 20 octets
		{Rotation: 3, ServerIDLen: 1, NonceLen: 4, Key: testLB.Key},                      // 6 octets
	} {
		t.Run(cfg.Algorithm().String(), func(t *testing.T) {
			sid, _ := quiclb.ServerIDFromBytes(bytes.Repeat([]byte{0xa5}, cfg.ServerIDLen))
			g, err := NewGenerator(cfg, sid)
			if err != nil {
				t.Fatal(err)
			}
			if g.ConnectionIDLen() != cfg.CIDLen() || g.Encoder().ServerID() != sid {
				t.Fatalf("length %d, server %v", g.ConnectionIDLen(), g.Encoder().ServerID())
			}
			dec, _ := quiclb.NewDecoder(cfg)
			var mu sync.Mutex
			seen := map[quic.ConnectionID]bool{}
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() {
					for range 2500 {
						id, err := g.GenerateConnectionID()
						if err != nil {
							t.Error(err)
							return
						}
						if id.Len() != cfg.CIDLen() {
							t.Errorf("%v: %d octets", id, id.Len())
						}
						if r := dec.Decode(id.Bytes()); !r.Routable() || r.ServerID != sid {
							t.Errorf("%v decodes to %+v", id, r)
						}
						mu.Lock()
						if seen[id] {
							t.Errorf("%v twice", id)
						}
						seen[id] = true
						mu.Unlock()
					}
				})
			}
			wg.Wait()
		})
	}
	if _, err := NewGenerator(testLB, mustSID(t, "010203")); err == nil {
		t.Error("a 3-octet server ID for a 2-octet configuration")
	}
	if _, err := NewGenerator(quiclb.Config{Rotation: 7, ServerIDLen: 2, NonceLen: 4}, mustSID(t, "0102")); err == nil {
		t.Error("rotation 7 accepted")
	}
}

// TestServerIssuesQUICLBCIDs runs a quic-go server with the Generator and
// a client over loopback, for QUIC v1 and v2, and checks every connection
// ID the server issues and the client uses: the SCIDs of the server's long
// headers, the CIDs of its NEW_CONNECTION_ID frames (seen in the client's
// qlog events), and the DCIDs of every packet the client sends after the
// server's first, on the handshake path and on two paths it migrates to.
// All decode to the server's ID, the client uses a new one on each path
// (RFC 9000, section 9.5), and the stream carries on across migrations.
func TestServerIssuesQUICLBCIDs(t *testing.T) {
	for _, v := range []quic.Version{quic.Version1, quic.Version2} {
		t.Run(v.String(), func(t *testing.T) {
			sid := mustSID(t, "0a01")
			srv := startServer(t, testLB, sid, []quic.Version{v}, nil)
			var rec recorder
			c := dial(t, srv.addr, []quic.Version{v}, rec.tracer())
			if c.conn.ConnectionState().Version != v {
				t.Fatalf("version %v", c.conn.ConnectionState().Version)
			}
			c.roundTrip()
			for range 2 {
				tr := c.migrate()
				c.roundTrip()
				if got, want := c.conn.LocalAddr().String(), tr.Conn.LocalAddr().String(); got != want {
					t.Errorf("local address %v after switching to %v", got, want)
				}
			}

			dec, _ := quiclb.NewDecoder(testLB)
			check := func(what string, id quic.ConnectionID) {
				t.Helper()
				if r := dec.Decode(id.Bytes()); !r.Routable() || r.ServerID != sid {
					t.Errorf("%s %v decodes to %+v", what, id, r)
				}
			}
			newIDs := rec.newConnIDs()
			if len(newIDs) == 0 {
				t.Fatal("no NEW_CONNECTION_ID frames")
			}
			for _, id := range newIDs {
				check("NEW_CONNECTION_ID", id)
			}
			var scids, dcids int
			answered := false
			// By local address: qlog's tuple IDs move (after a switch the
			// tuple "" is the new path), TupleAssigned says where.
			dcidsByTuple := map[string]map[quic.ConnectionID]bool{}
			localOf := map[string]string{}
			for _, ev := range rec.all() {
				switch e := ev.(type) {
				case qlog.StartedConnection:
					localOf[""] = e.Local.IPv4.String()
				case qlog.TupleAssigned:
					localOf[e.TupleID] = e.Local.IPv4.String()
				case qlog.PacketReceived:
					if e.Header.SrcConnectionID.Len() > 0 {
						check("server SCID", e.Header.SrcConnectionID)
						scids++
					}
					answered = true
				case qlog.PacketSent:
					if !answered {
						continue // the client's own DCID, before the server's answer
					}
					check("client DCID", e.Header.DestConnectionID)
					dcids++
					local, ok := localOf[e.Tuple]
					if !ok {
						t.Fatalf("packet sent on unknown tuple %q", e.Tuple)
					}
					if dcidsByTuple[local] == nil {
						dcidsByTuple[local] = map[quic.ConnectionID]bool{}
					}
					dcidsByTuple[local][e.Header.DestConnectionID] = true
				}
			}
			t.Logf("%d NEW_CONNECTION_ID CIDs, %d server SCIDs, %d client packets with server DCIDs, tuples %d", len(newIDs), scids, dcids, len(dcidsByTuple))
			if scids == 0 || dcids == 0 || len(dcidsByTuple) != 3 {
				t.Fatalf("server SCIDs or client DCIDs missing, or not sent from 3 addresses: %v", dcidsByTuple)
			}
			// No CID is used on two tuples.
			usedOn := map[quic.ConnectionID]string{}
			for tuple, ids := range dcidsByTuple {
				for id := range ids {
					if other, ok := usedOn[id]; ok && other != tuple {
						t.Errorf("%v used from %v and %v", id, other, tuple)
					}
					usedOn[id] = tuple
				}
			}
		})
	}
}
