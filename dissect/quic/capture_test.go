package quic

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/udpmux/udpmux/quiclb"
	"github.com/udpmux/udpmux/session"
)

// A capture is one file of testdata/: the UDP payloads of real quic-go
// connections, written by TestMakeCaptures of the quicgo module
// (quicgo/capture_test.go). Lines starting with '#' are comments;
// "config TEXT" is the backends' QUIC-LB configuration (quiclb.ParseConfig),
// "server-id HEX" the server's ID, "version HEX" the QUIC version, and
// "N> HEX" a datagram from the client's path N (0 the first socket, 1 and
// up the sockets it migrated to) to the server, "N< HEX" one from the
// server to path N.
type capture struct {
	name     string
	config   quiclb.Config
	serverID quiclb.ServerID
	version  uint32
	grams    []datagram
}

type datagram struct {
	path     int
	toServer bool
	payload  []byte
}

func readCapture(path string) (capture, error) {
	f, err := os.Open(path)
	if err != nil {
		return capture{}, err
	}
	defer f.Close()
	c := capture{name: strings.TrimSuffix(filepath.Base(path), ".txt")}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		fail := func(format string, args ...any) error {
			return fmt.Errorf("%s:%d: %s", path, line, fmt.Sprintf(format, args...))
		}
		fields := strings.Fields(text)
		switch {
		case len(fields) == 0 || strings.HasPrefix(text, "#"):
		case fields[0] == "config" && len(fields) == 2:
			if c.config, err = quiclb.ParseConfig(fields[1]); err != nil {
				return c, fail("%v", err)
			}
		case fields[0] == "server-id" && len(fields) == 2:
			if c.serverID, err = quiclb.ParseServerID(fields[1]); err != nil {
				return c, fail("%v", err)
			}
		case fields[0] == "version" && len(fields) == 2:
			v, err := strconv.ParseUint(fields[1], 16, 32)
			if err != nil {
				return c, fail("bad version %q", fields[1])
			}
			c.version = uint32(v)
		case len(fields) == 2 && len(fields[0]) >= 2 && strings.ContainsAny(fields[0][len(fields[0])-1:], "<>"):
			n, err := strconv.Atoi(fields[0][:len(fields[0])-1])
			if err != nil {
				return c, fail("bad path in %q", fields[0])
			}
			p, err := hex.DecodeString(fields[1])
			if err != nil || len(p) == 0 {
				return c, fail("bad payload")
			}
			c.grams = append(c.grams, datagram{path: n, toServer: strings.HasSuffix(fields[0], ">"), payload: p})
		default:
			return c, fail("unknown line %.40q", text)
		}
	}
	if err := sc.Err(); err != nil {
		return c, fmt.Errorf("%s: %v", path, err)
	}
	if c.serverID.Len() == 0 || c.version == 0 || c.config.ServerIDLen == 0 {
		return c, fmt.Errorf("%s: no config, server-id or version line", path)
	}
	return c, nil
}

func readCaptures(t testing.TB) []capture {
	t.Helper()
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no captures in testdata/ (cd quicgo && go test -run TestMakeCaptures -capture)")
	}
	var cs []capture
	for _, f := range files {
		c, err := readCapture(f)
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	return cs
}

// longSCID returns the SCID of a long header packet of version 1 or 2.
func longSCID(p []byte) ([]byte, bool) {
	if len(p) < 7 || p[0]&0x80 == 0 {
		return nil, false
	}
	off := 6 + int(p[5])
	if len(p) < off+1 || len(p) < off+1+int(p[off]) {
		return nil, false
	}
	return p[off+1 : off+1+int(p[off])], true
}

// coalesced splits a datagram into its QUIC packets (RFC 9000, section
// 12.2): long header packets of versions 1 and 2 end where their Length
// field says, and a short header packet takes the rest.
func coalesced(t *testing.T, p []byte) [][]byte {
	var out [][]byte
	for len(p) > 0 {
		if p[0]&0x80 == 0 {
			return append(out, p)
		}
		version := uint32(p[1])<<24 | uint32(p[2])<<16 | uint32(p[3])<<8 | uint32(p[4])
		off := 6 + int(p[5])
		off += 1 + int(p[off])
		typ := (p[0] >> 4) & 3
		if version == Version2 {
			typ = (typ + 3) % 4 // v2: 01 Initial, 10 0-RTT, 11 Handshake, 00 Retry
		}
		if typ == 3 {
			t.Fatalf("a Retry from a client")
		}
		if typ == 0 { // Initial: token
			n, l := varint(p[off:])
			off += l + int(n)
		}
		n, l := varint(p[off:])
		end := off + l + int(n)
		if l == 0 || end > len(p) {
			t.Fatalf("bad coalesced packet at %x", p[:min(16, len(p))])
		}
		out = append(out, p[:end])
		p = p[end:]
	}
	return out
}

// TestCaptures feeds the dissector real quic-go traffic: handshakes of
// QUIC v1 and v2, 1-RTT data, and migrations to new client sockets, with
// a server whose connection IDs are QUIC-LB CIDs (quicgo.Generator).
//
//   - Every datagram from a client passes (no Drop), keyed by its 4-tuple.
//   - The client's first datagram is an Initial of the capture's version
//     that creates a session; its DCID is the client's, which Route hands
//     out for hashing.
//   - Every client datagram after the server's first one carries a DCID
//     the server issued: it routes to the server's ID, and creates a
//     session if it finds none. In particular the first datagram on each
//     new path (the migration's PATH_CHALLENGE, with a CID from a
//     NEW_CONNECTION_ID frame) reaches the server's backend statelessly.
//   - Every SCID of the server's long headers decodes to its server ID.
//   - Each Handshake and 0-RTT packet coalesced into a datagram behind
//     another packet, dissected alone (as if it had arrived alone),
//     creates a session routed to the server.
func TestCaptures(t *testing.T) {
	for _, c := range readCaptures(t) {
		t.Run(c.name, func(t *testing.T) {
			dec, err := quiclb.NewDecoder(c.config)
			if err != nil {
				t.Fatal(err)
			}
			d := newDissector(t, Config{Decoder: dec, ServerIDs: []quiclb.ServerID{c.serverID}})
			var answered bool
			counts := map[PacketType]int{}
			paths := map[int]bool{}
			for i, g := range c.grams {
				if !g.toServer {
					answered = true
					if scid, ok := longSCID(g.payload); ok {
						if r := dec.Decode(scid); !r.Routable() || r.ServerID != c.serverID {
							t.Errorf("datagram %d: server SCID %x decodes to %+v", i, scid, r)
						}
					}
					continue
				}
				dis := d.Dissect(g.payload, testLocal, testPeer, testScope)
				r, ok := d.Route(g.payload)
				if dis.Verdict == session.Drop || !ok {
					t.Fatalf("datagram %d (%d octets, %x...): dropped", i, len(g.payload), g.payload[:min(8, len(g.payload))])
				}
				counts[r.Type]++
				for j, pk := range coalesced(t, g.payload) {
					if j == 0 || pk[0]&0x80 == 0 {
						continue
					}
					alone, ok := d.Route(pk)
					if !ok {
						if len(pk) < MinInitialDatagram {
							continue // an Initial packet needs its datagram's padding
						}
						t.Fatalf("datagram %d, packet %d: dropped", i, j)
					}
					counts[alone.Type]++
					if alone.Type == Handshake || alone.Type == ZeroRTT {
						v := d.Dissect(pk, testLocal, testPeer, testScope).Verdict
						if sid, ok := alone.ServerID(); v != session.Create || !ok || sid != c.serverID {
							t.Errorf("datagram %d, coalesced %v: %v, server %v %v", i, alone.Type, v, sid, ok)
						}
					}
				}
				if i == 0 {
					if r.Type != Initial || r.Version != c.version || dis.Verdict != session.Create || len(r.DCID()) < 8 {
						t.Errorf("first datagram: %+v, %v", r, dis.Verdict)
					}
					continue
				}
				if !answered {
					continue // the client's Initials before the server's
				}
				sid, routable := r.ServerID()
				if !routable || sid != c.serverID {
					t.Errorf("datagram %d (%v, path %d): routes to %v, %v (%v); want %v", i, r.Type, g.path, sid, routable, r.LB.Status, c.serverID)
				}
				if dis.Verdict != session.Create {
					t.Errorf("datagram %d (%v): verdict %v", i, r.Type, dis.Verdict)
				}
				paths[g.path] = true
			}
			t.Logf("client packets (first in a datagram, or coalesced): %v; paths %d", counts, len(paths))
			if counts[Initial] == 0 || counts[Handshake] == 0 || counts[OneRTT] == 0 {
				t.Errorf("the capture lacks a kind of packet: %v", counts)
			}
			if len(paths) < 2 {
				t.Errorf("the capture has no migration: paths %v", paths)
			}
		})
	}
}
