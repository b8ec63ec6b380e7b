package quicgo

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"

	"github.com/udpmux/udpmux/quicgo/internal/echo"
	"github.com/udpmux/udpmux/quiclb"
)

// testLB is the QUIC-LB configuration of most tests: four-pass, 2-octet
// server IDs, 6-octet nonces, length self-description.
var testLB = quiclb.Config{Rotation: 1, ServerIDLen: 2, NonceLen: 6,
	Key: []byte{0x8f, 0x95, 0xf0, 0x92, 0x45, 0x76, 0x5f, 0x80, 0x25, 0x69, 0x34, 0xe5, 0x0c, 0x66, 0x20, 0x7f}, EncodeLength: true}

func mustSID(t testing.TB, s string) quiclb.ServerID {
	id, err := quiclb.ParseServerID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// echoServer is a quic-go server with a Generator that echoes every line
// of every stream, prefixed with nothing.
type echoServer struct {
	tr   *quic.Transport
	ln   *quic.Listener
	addr *net.UDPAddr
	gen  *Generator
}

func startServer(t testing.TB, cfg quiclb.Config, sid quiclb.ServerID, versions []quic.Version, tracer func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace) *echoServer {
	t.Helper()
	gen, err := NewGenerator(cfg, sid)
	if err != nil {
		t.Fatal(err)
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tlsConf, err := echo.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp, ConnectionIDGenerator: gen}
	ln, err := tr.Listen(tlsConf, &quic.Config{Versions: versions, Tracer: tracer})
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{tr: tr, ln: ln, addr: udp.LocalAddr().(*net.UDPAddr), gen: gen}
	go func() {
		for {
			conn, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			go func() {
				for {
					str, err := conn.AcceptStream(context.Background())
					if err != nil {
						return
					}
					go func() {
						sc := bufio.NewScanner(str)
						for sc.Scan() {
							fmt.Fprintf(str, "%s\n", sc.Text())
						}
					}()
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		tr.Close()
	})
	return s
}

// recorder is a qlogwriter.Trace and Recorder that keeps every event.
type recorder struct {
	mu     sync.Mutex
	events []qlogwriter.Event
}

func (r *recorder) AddProducer() qlogwriter.Recorder { return r }
func (r *recorder) RecordEvent(ev qlogwriter.Event) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
}
func (r *recorder) Close() error { return nil }

func (r *recorder) tracer() func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace {
	return func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace { return r }
}

func (r *recorder) all() []qlogwriter.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]qlogwriter.Event(nil), r.events...)
}

// newConnIDs returns the connection IDs of the NEW_CONNECTION_ID frames
// in the received packets.
func (r *recorder) newConnIDs() []quic.ConnectionID {
	var ids []quic.ConnectionID
	for _, ev := range r.all() {
		if e, ok := ev.(qlog.PacketReceived); ok {
			for _, f := range e.Frames {
				if nc, ok := f.Frame.(*qlog.NewConnectionIDFrame); ok {
					ids = append(ids, nc.ConnectionID)
				}
			}
		}
	}
	return ids
}

// client is a quic-go client with one stream to an echo server.
type client struct {
	t    testing.TB
	tr   *quic.Transport
	conn *quic.Conn
	str  *quic.Stream
	rd   *bufio.Reader
	n    int
}

func dial(t testing.TB, addr *net.UDPAddr, versions []quic.Version, tracer func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace) *client {
	t.Helper()
	tr := newTransport(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := tr.Dial(ctx, addr, echo.ClientTLS(), &quic.Config{Versions: versions, Tracer: tracer})
	if err != nil {
		t.Fatal(err)
	}
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	return &client{t: t, tr: tr, conn: conn, str: str, rd: bufio.NewReader(str)}
}

func newTransport(t testing.TB) *quic.Transport {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// roundTrip writes a line on the stream and waits for its echo.
func (c *client) roundTrip() {
	c.t.Helper()
	c.n++
	want := fmt.Sprintf("line %d", c.n)
	c.str.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c.str, "%s\n", want); err != nil {
		c.t.Fatal(err)
	}
	got, err := c.rd.ReadString('\n')
	if err != nil || got != want+"\n" {
		c.t.Fatalf("echo %q, %v; want %q", got, err, want)
	}
}

// migrate moves the connection to a new local socket with the path API.
func (c *client) migrate() *quic.Transport {
	c.t.Helper()
	tr := newTransport(c.t)
	path, err := c.conn.AddPath(tr)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := path.Probe(ctx); err != nil {
		c.t.Fatalf("probe: %v", err)
	}
	if err := path.Switch(); err != nil {
		c.t.Fatalf("switch: %v", err)
	}
	return tr
}
