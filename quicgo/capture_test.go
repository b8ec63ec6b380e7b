package quicgo

// TestMakeCaptures records real quic-go traffic into
// ../dissect/quic/testdata/, which the dissector's tests replay. It runs
// only with -capture:
//
//	go test -run '^TestMakeCaptures$' . -args -capture
//
// (or go generate .). For QUIC v1 and v2 it starts a quic-go server whose
// connection IDs come from a Generator, and a recording UDP relay in front
// of it on loopback, as a 4-tuple proxy would be; a client connects
// through the relay, echoes a few lines on a stream, migrates twice to a
// new local socket (the relay sees a new client address each time, and
// the server a new path) and echoes more, then closes. Every datagram in
// both directions is written in order, with the path it used. Nothing
// leaves loopback.

//go:generate go test -run ^TestMakeCaptures$ . -args -capture

import (
	"bytes"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/udpmux/udpmux/quicgo/internal/relay"
	"github.com/udpmux/udpmux/quiclb"
)

var captureFlag = flag.Bool("capture", false, "run quic-go over loopback and rewrite ../dissect/quic/testdata/*.txt")

func TestMakeCaptures(t *testing.T) {
	if !*captureFlag {
		t.Skip("only with -capture")
	}
	for _, c := range []struct {
		file    string
		version quic.Version
		config  quiclb.Config
		sid     string
	}{
		{"v1-four-pass.txt", quic.Version1, testLB, "0a01"},
		{"v2-single-pass.txt", quic.Version2, quiclb.Config{Rotation: 3, ServerIDLen: 4, NonceLen: 12, Key: testLB.Key}, "0b02c3d4"},
	} {
		t.Run(c.file, func(t *testing.T) {
			sid := mustSID(t, c.sid)
			srv := startServer(t, c.config, sid, []quic.Version{c.version}, nil)
			r, err := relay.New(srv.addr)
			if err != nil {
				t.Fatal(err)
			}
			cl := dial(t, r.Addr(), []quic.Version{c.version}, nil)
			cl.roundTrip()
			cl.roundTrip()
			for range 2 {
				cl.migrate()
				cl.roundTrip()
			}
			cl.conn.CloseWithError(0, "done")
			time.Sleep(100 * time.Millisecond)
			r.Close()

			var b bytes.Buffer
			fmt.Fprintf(&b, "# quic-go %s through a recording relay on loopback (quicgo/capture_test.go):\n", "v0.65.0")
			fmt.Fprintf(&b, "# handshake, two echoes, two migrations to new client sockets with an echo after each, close.\n")
			fmt.Fprintf(&b, "# N> is a datagram from the client's path N to the server, N< one from the server to path N.\n")
			fmt.Fprintf(&b, "config %s\nserver-id %s\nversion %08x\n", c.config, sid, uint32(c.version))
			for _, g := range r.Datagrams() {
				dir := "<"
				if g.ToServer {
					dir = ">"
				}
				fmt.Fprintf(&b, "%d%s %s\n", g.Path, dir, hex.EncodeToString(g.Payload))
			}
			path := filepath.Join("..", "dissect", "quic", "testdata", c.file)
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d datagrams", path, len(r.Datagrams()))
		})
	}
}
