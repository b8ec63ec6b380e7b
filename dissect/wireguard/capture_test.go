package wireguard

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
)

// testdata/capture.pcap is real traffic between two wireguard-go
// processes, recorded by testdata/capture.sh, which describes its phases.

var captureServer = netip.MustParseAddrPort("198.18.90.1:51820")

type datagram struct {
	src, dst netip.AddrPort
	payload  []byte
}

func (g datagram) toServer() bool { return g.dst == captureServer }

// readPcap returns the UDP datagrams over IPv4 of a pcap file of Ethernet
// frames, as tcpdump writes it on a veth.
func readPcap(t testing.TB, path string) []datagram {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 24 {
		t.Fatalf("%s: no pcap header", path)
	}
	le := binary.LittleEndian
	if m := le.Uint32(b); m != 0xa1b2c3d4 && m != 0xa1b23c4d {
		t.Fatalf("%s: not a little-endian pcap file (magic %#x)", path, m)
	}
	if lt := le.Uint32(b[20:]); lt != 1 {
		t.Fatalf("%s: link type %d, want 1 (Ethernet)", path, lt)
	}
	var out []datagram
	for rest := b[24:]; len(rest) > 0; {
		if len(rest) < 16 {
			t.Fatalf("%s: truncated record header", path)
		}
		n := int(le.Uint32(rest[8:]))
		if len(rest) < 16+n || n != int(le.Uint32(rest[12:])) {
			t.Fatalf("%s: truncated or cut record", path)
		}
		frame := rest[16 : 16+n]
		rest = rest[16+n:]
		if len(frame) < 14+20 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
			continue
		}
		ip := frame[14:]
		ihl := int(ip[0]&0xf) * 4
		if ip[0]>>4 != 4 || ip[9] != 17 || len(ip) < ihl+8 {
			continue
		}
		total := int(binary.BigEndian.Uint16(ip[2:]))
		udp := ip[ihl:total]
		ulen := int(binary.BigEndian.Uint16(udp[4:]))
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), binary.BigEndian.Uint16(udp[0:]))
		dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), binary.BigEndian.Uint16(udp[2:]))
		out = append(out, datagram{src, dst, bytes.Clone(udp[8:ulen])})
	}
	return out
}

func readKey(t testing.TB, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var k [32]byte
	n, err := base64.StdEncoding.Decode(k[:], bytes.TrimSpace(b))
	if err != nil || n != 32 {
		t.Fatalf("%s: not a key: %v", path, err)
	}
	return k
}

func captureDatagrams(t testing.TB) []datagram {
	g := readPcap(t, "testdata/capture.pcap")
	if len(g) == 0 {
		t.Fatal("capture holds no datagram")
	}
	return g
}

func TestCapture(t *testing.T) {
	serverKey := readKey(t, "testdata/server.key")
	clientPub := readKey(t, "testdata/client.pub")
	d := newDissector(t, Config{PrivateKey: &serverKey})
	clientKey := mustCID(t, 5, clientPub[:20])

	var (
		current   flowtable.Key                        // index of the latest handshake
		learnedBy = map[flowtable.Key]netip.AddrPort{} // index -> the client address it was sent to
		counts    = map[string]int{}
		roamed    int // client transports from another address than their index was sent to
		tr        = d.Track(5)
		fresh     = d.Track(5) // a udpmux that never saw the client: Recovers
		recovered = 0          // the server's transport messages it took
		held      = newHolder(5)
		peer      netip.AddrPort // the client's address as its session knows it
	)
	for i, g := range captureDatagrams(t) {
		typ := g.payload[0]
		name := fmt.Sprintf("#%d type %d %v->%v", i+1, typ, g.src, g.dst)
		if !g.toServer() {
			counts[fmt.Sprint("server ", typ)]++
			k := tr.Server(held, g.payload)
			switch typ {
			case 1, 2:
				if k != mustID(t, 5, g.payload[4:8]) {
					t.Errorf("%s: Server = %v, want its sender index", name, k)
				}
				current = k
				learnedBy[k] = g.dst
				held.AddKey(k)
			default:
				if k != (flowtable.Key{}) {
					t.Errorf("%s: Server = %v, want none", name, k)
				}
			}
			if fresh != nil && typ == 4 {
				recovered++
				if own, ok := fresh.Recovers(held, g.payload); ok {
					if want, _ := flowtable.IDKey(5, ClassClientIndex, g.payload[4:8]); own != want {
						t.Errorf("%s: recovered with %v, want the client's index", name, own)
					}
					fresh = nil
				}
			}
			// Every message of the server's that carries the client's
			// index vouches: the client's own messages taught it.
			if vouches := tr.Vouches(held, g.payload); vouches != (typ == 2 || typ == 4) {
				t.Errorf("%s: Vouches = %v", name, vouches)
			}
			continue
		}
		counts[fmt.Sprint("client ", typ)]++
		got := d.Dissect(g.payload, g.dst, g.src, 5)
		tuple := flowtable.TupleKey(5, g.dst, g.src)
		// The client's session follows it, as a proxy's does once the
		// server has vouched for its new address.
		moved := peer.IsValid() && g.src != peer
		own, plausible := tr.Client(held, g.payload, moved)
		if !plausible {
			t.Errorf("%s: the real client's message is not plausible", name)
		}
		if own.Kind() != flowtable.KindNone {
			held.AddKey(own)
		}
		peer = g.src
		switch typ {
		case 1:
			if got != (session.Dissection{Key: clientKey, Verdict: session.Create}) {
				t.Errorf("%s: Dissect = %v %v %v, want the client's static key %v", name, got.Key, got.ID, got.Verdict, clientKey)
			}
			if want, _ := flowtable.IDKey(5, ClassClientIndex, g.payload[4:8]); own != want {
				t.Errorf("%s: the client's own index %v, want its sender index", name, own)
			}
		case 2, 4:
			if got.Key != tuple || got.Verdict != session.Lookup {
				t.Errorf("%s: Dissect = %v %v, want %v Lookup", name, got.Key, got.Verdict, tuple)
			}
			// The client answers with the index the server chose in its
			// latest handshake message.
			if got.ID != current {
				t.Errorf("%s: ID %v, want %v, the server's latest index", name, got.ID, current)
			}
			if to, ok := learnedBy[got.ID]; ok && to != g.src {
				roamed++
			}
		default:
			t.Errorf("%s: unexpected message type", name)
		}
	}
	// capture.sh's phases: the client initiates twice (on two ports), the
	// server once; the client's port changes under a session.
	want := map[string]int{"client 1": 2, "server 2": 2, "server 1": 1, "client 2": 1}
	for k, n := range want {
		if counts[k] != n {
			t.Errorf("%d messages %q, want %d (all: %v)", counts[k], k, n, counts)
		}
	}
	if counts["client 4"] < 10 || counts["server 4"] < 8 {
		t.Errorf("too few transport messages: %v", counts)
	}
	if fresh != nil || recovered != recoverRun {
		t.Errorf("recovered after %d of the server's transport messages; want %d", recovered, recoverRun)
	}
	if roamed == 0 {
		t.Error("no client transport message from a new address in the capture")
	}
	s := d.Stats()
	wantStats := Stats{Initiations: 2, StaticKeyed: 2}
	if s != wantStats {
		t.Errorf("Stats = %+v, want %+v", s, wantStats)
	}
}

// The capture's initiations, decrypted with another key or none, fall back
// to their 4-tuples.
func TestCaptureWithoutServerKey(t *testing.T) {
	clientKey := readKey(t, "testdata/client.key") // the wrong private key
	dissectors := map[string]*Dissector{
		"no key":    newDissector(t, Config{}),
		"wrong key": newDissector(t, Config{PrivateKey: &clientKey}),
	}
	for name, d := range dissectors {
		n := 0
		for _, g := range captureDatagrams(t) {
			if !g.toServer() || g.payload[0] != 1 {
				continue
			}
			n++
			got := d.Dissect(g.payload, g.dst, g.src, 0)
			if want := flowtable.TupleKey(0, g.dst, g.src); got.Key != want || got.Verdict != session.Create {
				t.Errorf("%s: %v %v, want %v Create", name, got.Key, got.Verdict, want)
			}
		}
		wantStats := Stats{Initiations: uint64(n)}
		if name == "wrong key" {
			wantStats.MAC1Mismatches = uint64(n)
		}
		if s := d.Stats(); s.Initiations != wantStats.Initiations || s.MAC1Mismatches != wantStats.MAC1Mismatches || s.StaticKeyed != 0 {
			t.Errorf("%s: Stats = %+v", name, s)
		}
	}
}
