//go:build linux

package openvpn

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
)

// captureFile is one file of testdata/, written by TestMakeCaptures.
type captureFile struct {
	name    string
	clients map[int]clientTruth
	grams   []capturedDatagram
}

// readCapture reads a capture: comment lines start with '#'; "client N
// session-id HEX peer-id N" says what OpenVPN said of client N; "N> HEX"
// is a datagram from client N to the server and "N< HEX" one from the
// server to client N.
func readCapture(path string) (captureFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return captureFile{}, err
	}
	defer f.Close()
	c := captureFile{name: strings.TrimSuffix(filepath.Base(path), ".txt"), clients: map[int]clientTruth{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<18)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		fail := func(format string, args ...any) error {
			return fmt.Errorf("%s:%d: %s", path, line, fmt.Sprintf(format, args...))
		}
		fields := strings.Fields(text)
		switch {
		case len(fields) == 0 || strings.HasPrefix(text, "#"):
		case fields[0] == "client":
			if len(fields) != 6 || fields[2] != "session-id" || fields[4] != "peer-id" {
				return c, fail("bad client line %q", text)
			}
			n, err1 := strconv.Atoi(fields[1])
			sid, err2 := hex.DecodeString(fields[3])
			pid, err3 := strconv.ParseUint(fields[5], 10, 24)
			if err1 != nil || err2 != nil || err3 != nil || len(sid) != 8 {
				return c, fail("bad client line %q", text)
			}
			c.clients[n] = clientTruth{sessionID: sid, peerID: int(pid)}
		case len(fields) == 2 && len(fields[0]) == 2 && (fields[0][1] == '>' || fields[0][1] == '<'):
			n, err := strconv.Atoi(fields[0][:1])
			if err != nil {
				return c, fail("bad client number in %q", fields[0])
			}
			if _, ok := c.clients[n]; !ok {
				return c, fail("datagram of client %d before its client line", n)
			}
			p, err := hex.DecodeString(fields[1])
			if err != nil || len(p) == 0 {
				return c, fail("bad payload")
			}
			c.grams = append(c.grams, capturedDatagram{client: n, toServer: fields[0][1] == '>', payload: p})
		default:
			return c, fail("unknown line %.40q", text)
		}
	}
	if err := sc.Err(); err != nil {
		return c, fmt.Errorf("%s: %v", path, err)
	}
	return c, nil
}

// captureVariantNames are the captures the tests expect.
var captureVariantNames = []string{"plain", "tls-auth", "tls-crypt", "tls-crypt-v2"}

func readCaptures(t testing.TB) []captureFile {
	t.Helper()
	var cs []captureFile
	for _, name := range captureVariantNames {
		c, err := readCapture(filepath.Join("testdata", name+".txt"))
		if err != nil {
			t.Fatal(err)
		}
		if len(c.clients) != 2 || len(c.grams) == 0 {
			t.Fatalf("%s: %d clients and %d datagrams; want 2 clients and some datagrams", name, len(c.clients), len(c.grams))
		}
		cs = append(cs, c)
	}
	return cs
}

// captureAddrs are the addresses the captures' datagrams are dissected
// with: the capture keeps no addresses, and the keys of data packets only
// need each client to have its own.
func captureAddrs(n int) (local, peer netip.AddrPort) {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(n), 1}), 1194),
		netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(n), 2}), uint16(40000+n))
}

// TestCaptures feeds every datagram of the captures to Dissect (those from
// clients) and Reply (those from the server), and checks the results
// against what OpenVPN said of each client: no datagram of a client is
// dropped, its control packets are keyed by the session ID from its log,
// the server's P_DATA_V2 teach the peer-id from the server's status file,
// and the client's P_DATA_V2 carry that same peer-id as their ID.
func TestCaptures(t *testing.T) {
	for _, c := range readCaptures(t) {
		t.Run(c.name, func(t *testing.T) {
			var d Dissector
			seen := map[string]int{} // "client/direction/opcode/key-id"
			learned := map[int]map[flowtable.Key]bool{}
			for i, g := range c.grams {
				truth := c.clients[g.client]
				op, kid := g.payload[0]>>3, g.payload[0]&7
				dir := "<"
				if g.toServer {
					dir = ">"
				}
				seen[fmt.Sprintf("%d%s%d/%d", g.client, dir, op, kid)]++
				where := fmt.Sprintf("datagram %d (client %d%s, opcode %d, key-id %d, %d bytes)", i, g.client, dir, op, kid, len(g.payload))
				local, peer := captureAddrs(g.client)
				if !g.toServer {
					k, ok := reply(g.payload, testScope)
					if op != opDataV2 {
						if ok {
							t.Errorf("%s: Reply learned %v from a server packet that is not P_DATA_V2", where, k)
						}
						continue
					}
					if w := mustPeerID(t, uint32(truth.peerID)); !ok || k != w {
						t.Errorf("%s: Reply = %v, %v; want %v (peer-id %d)", where, k, ok, w, truth.peerID)
					}
					if learned[g.client] == nil {
						learned[g.client] = map[flowtable.Key]bool{}
					}
					learned[g.client][k] = true
					continue
				}
				got := d.Dissect(g.payload, local, peer, testScope)
				if got.Verdict == session.Drop {
					t.Errorf("%s: dropped", where)
					continue
				}
				switch op {
				case opHardResetClientV2, opHardResetClientV3:
					w := session.Dissection{Key: mustCID(t, truth.sessionID), Verdict: session.Create}
					if got != w {
						t.Errorf("%s: got %+v; want %+v (session ID %x)", where, got, w, truth.sessionID)
					}
				case opSoftResetV1, opControlV1, opAckV1, opControlWKCV1:
					w := session.Dissection{Key: mustCID(t, truth.sessionID), Verdict: session.Lookup}
					if got != w {
						t.Errorf("%s: got %+v; want %+v (session ID %x)", where, got, w, truth.sessionID)
					}
				case opDataV2:
					w := session.Dissection{
						Key:       flowtable.TupleKey(testScope, local, peer),
						ID:        mustPeerID(t, uint32(truth.peerID)),
						IDRepeats: true,
						Verdict:   session.Lookup,
					}
					if got != w {
						t.Errorf("%s: got %+v; want %+v", where, got, w)
					}
				default:
					t.Errorf("%s: a client sent an opcode the test does not know", where)
				}
			}
			for n, truth := range c.clients {
				w := mustPeerID(t, uint32(truth.peerID))
				if len(learned[n]) != 1 || !learned[n][w] {
					t.Errorf("client %d: Reply learned %v; want only %v", n, learned[n], w)
				}
			}
			if a, b := c.clients[1], c.clients[2]; bytes.Equal(a.sessionID, b.sessionID) || a.peerID == b.peerID {
				t.Errorf("the two clients share a session ID or a peer-id: %+v, %+v", a, b)
			}
			// What each capture is for: hard resets, control, acks and
			// data from both clients, and client 1's renegotiation.
			hardReset := opHardResetClientV2
			if c.name == "tls-crypt-v2" {
				hardReset = opHardResetClientV3
			}
			for _, k := range []string{
				fmt.Sprintf("1>%d/0", hardReset), fmt.Sprintf("2>%d/0", hardReset),
				"1>4/0", "2>4/0", "1>5/0", "2>5/0", "1>9/0", "2>9/0", "1<9/0", "2<9/0",
				"1>3/1", "1>4/1", "1>9/1", "1<9/1",
			} {
				if seen[k] == 0 {
					t.Errorf("the capture holds no datagram %s (client, direction, opcode/key-id)", k)
				}
			}
			if c.name == "tls-crypt-v2" && seen["1>11/0"] == 0 {
				t.Error("the tls-crypt-v2 capture holds no P_CONTROL_WKC_V1")
			}
		})
	}
}

// TestCaptureFloat replays each capture through a small model of the
// engine's flow table, with client 1 moving to a new port halfway, and
// checks that each of its datagrams from the new address finds client 1's
// session, by its session ID or by the peer-id learned from the server,
// and never client 2's.
func TestCaptureFloat(t *testing.T) {
	for _, c := range readCaptures(t) {
		t.Run(c.name, func(t *testing.T) {
			var d Dissector
			unique := map[flowtable.Key]int{}   // key -> session (1 or 2)
			shared := map[flowtable.Key][]int{} // ID key -> sessions
			sessionOf := map[int]int{}          // client -> session
			moved := false
			var found, fromNewAddr int
			for i, g := range c.grams {
				local, peer := captureAddrs(g.client)
				if g.client == 1 && i >= len(c.grams)/2 {
					peer = netip.AddrPortFrom(peer.Addr(), peer.Port()+1000)
					moved = true
				}
				if !g.toServer {
					if k, ok := reply(g.payload, testScope); ok {
						s := sessionOf[g.client]
						if s == 0 {
							t.Fatalf("datagram %d: a reply before the client's session", i)
						}
						if !containsInt(shared[k], s) {
							shared[k] = append(shared[k], s)
						}
					}
					continue
				}
				dis := d.Dissect(g.payload, local, peer, testScope)
				var cands []int
				if s, ok := unique[dis.Key]; ok {
					cands = []int{s}
				} else if dis.Verdict == session.Create {
					s := g.client
					sessionOf[g.client] = s
					unique[dis.Key] = s
					unique[flowtable.TupleKey(testScope, local, peer)] = s
					cands = []int{s}
				} else if dis.ID != (flowtable.Key{}) {
					cands = shared[dis.ID]
				}
				if g.client != 1 || !moved {
					continue
				}
				fromNewAddr++
				if len(cands) != 1 || cands[0] != sessionOf[1] {
					t.Errorf("datagram %d (opcode %d) from client 1's new address finds sessions %v; want [%d]",
						i, g.payload[0]>>3, cands, sessionOf[1])
					continue
				}
				found++
			}
			if fromNewAddr == 0 || found != fromNewAddr {
				t.Errorf("%d of %d datagrams from client 1's new address found its session", found, fromNewAddr)
			}
		})
	}
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
