package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/session"
)

// The tunnel protocol of these tests, a miniature of WireGuard's roaming: a
// datagram is a type byte ('H' to start a tunnel, 'D' for data), the
// tunnel's 4-byte ID, an 8-byte MAC of the payload under the tunnel's
// secret, and the payload. Every backend knows every tunnel's secret (as
// WireGuard backends share the peers), follows a tunnel's client to the
// address of its last authentic datagram, and drops the rest.

const tunClass = 9

func tunMAC(secret, payload []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write(payload)
	return m.Sum(nil)[:8]
}

func tunDatagram(typ byte, id uint32, secret []byte, payload string) []byte {
	b := append([]byte{typ}, binary.BigEndian.AppendUint32(nil, id)...)
	b = append(b, tunMAC(secret, []byte(payload))...)
	return append(b, payload...)
}

// tunDissector keys 'H' by 4-tuple (it starts a session) and 'D' by
// 4-tuple with the tunnel's ID; the backend's 'D' assigns the ID.
type tunDissector struct{}

func (tunDissector) Dissect(p []byte, local, peer netip.AddrPort, scope uint16) session.Dissection {
	if len(p) < 13 {
		return session.Dissection{Verdict: session.Drop}
	}
	tuple := flowtable.TupleKey(scope, local, peer)
	switch p[0] {
	case 'H':
		return session.Dissection{Key: tuple, Verdict: session.Create}
	case 'D':
		id, _ := flowtable.IDKey(scope, tunClass, p[1:5])
		return session.Dissection{Key: tuple, ID: id, Verdict: session.Lookup}
	}
	return session.Dissection{Verdict: session.Drop}
}

func (tunDissector) Reply(p []byte, scope uint16) (flowtable.Key, bool) {
	if len(p) < 13 || p[0] != 'D' {
		return flowtable.Key{}, false
	}
	id, _ := flowtable.IDKey(scope, tunClass, p[1:5])
	return id, true
}

// tunBackend is a backend of the tunnel protocol.
type tunBackend struct {
	name    string
	conn    *net.UDPConn
	secrets map[uint32][]byte
	mu      sync.Mutex
	peers   map[uint32]netip.AddrPort // where each tunnel's client is
	sources map[uint32]map[netip.AddrPort]bool
	forged  int
}

func startTunBackend(t *testing.T, name string, secrets map[uint32][]byte) *tunBackend {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	b := &tunBackend{name: name, conn: c, secrets: secrets, peers: map[uint32]netip.AddrPort{}, sources: map[uint32]map[netip.AddrPort]bool{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			p := buf[:n]
			if n < 13 {
				continue
			}
			id := binary.BigEndian.Uint32(p[1:5])
			secret, ok := b.secrets[id]
			if !ok || !hmac.Equal(p[5:13], tunMAC(secret, p[13:])) {
				b.mu.Lock()
				b.forged++
				b.mu.Unlock()
				continue
			}
			b.mu.Lock()
			b.peers[id] = from
			if b.sources[id] == nil {
				b.sources[id] = map[netip.AddrPort]bool{}
			}
			b.sources[id][from] = true
			b.mu.Unlock()
			reply := b.name + ":" + string(p[13:])
			c.WriteToUDPAddrPort(tunDatagram('D', id, secret, reply), from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return b
}

func (b *tunBackend) addr() netip.AddrPort { return b.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// tunClient is one tunnel's client; it may move to a new socket.
type tunClient struct {
	t      *testing.T
	id     uint32
	secret []byte
	to     netip.AddrPort
	conn   *net.UDPConn
}

func (c *tunClient) move(local string) {
	c.t.Helper()
	if c.conn != nil {
		c.conn.Close()
	}
	conn, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(local)), net.UDPAddrFromAddrPort(c.to))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { conn.Close() })
	c.conn = conn
}

// send sends one datagram and returns the backend that answered and the
// payload, or "" on timeout.
func (c *tunClient) send(typ byte, payload string) (backend string) {
	c.conn.Write(tunDatagram(typ, c.id, c.secret, payload))
	buf := make([]byte, 2048)
	c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := c.conn.Read(buf)
	if err != nil || n < 13 {
		return ""
	}
	name, got, _ := strings.Cut(string(buf[13:n]), ":")
	if got != payload {
		c.t.Fatalf("tunnel %d: reply %q to %q", c.id, buf[13:n], payload)
	}
	return name
}

func startTunProxy(t *testing.T, backends ...*tunBackend) (*mux.Server, *Handler) {
	t.Helper()
	var addrs []netip.AddrPort
	for _, b := range backends {
		addrs = append(addrs, b.addr())
	}
	h, err := New(Config{Backends: addrs, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := mux.New(mux.Config{
		Workers: 2, Logger: quiet(),
		Listeners: []mux.ListenerConfig{{
			Name: "tun", Address: netip.MustParseAddrPort("127.0.0.1:0"), Handler: h,
			Dissector: tunDissector{}, IdleTimeout: time.Minute,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return srv, h
}

// TestTunnelsFollowTheirClients: tunnel clients that move, to a new port and
// to a new IP address, keep their session and backend, through a probe the
// backend answers on; the old 4-tuple is released at once; datagrams forged
// with every tunnel's ID from another address move nothing and get nothing
// back.
func TestTunnelsFollowTheirClients(t *testing.T) {
	const n = 6
	secrets := map[uint32][]byte{}
	for i := range n {
		secrets[uint32(100+i)] = []byte(fmt.Sprint("secret ", i))
	}
	b1, b2 := startTunBackend(t, "b1", secrets), startTunBackend(t, "b2", secrets)
	srv, h := startTunProxy(t, b1, b2)
	var clients []*tunClient
	landed := map[uint32]string{}
	for i := range n {
		c := &tunClient{t: t, id: uint32(100 + i), secret: secrets[uint32(100+i)], to: srv.Addr(0)}
		c.move(fmt.Sprintf("127.0.1.%d:0", i+1))
		if landed[c.id] = c.send('H', "hello"); landed[c.id] == "" {
			t.Fatalf("tunnel %d: no answer to its handshake", c.id)
		}
		if got := c.send('D', "data"); got != landed[c.id] {
			t.Fatalf("tunnel %d: data answered by %q, handshake by %q", c.id, got, landed[c.id])
		}
		clients = append(clients, c)
	}
	first := map[uint32]netip.AddrPort{}
	srv.Sessions(func(x session.Session) bool {
		if info, ok := h.Session(x); ok {
			for _, c := range clients {
				if x.PeerAddr().String() == c.conn.LocalAddr().String() {
					first[c.id] = info.Source
				}
			}
		}
		return true
	})

	// A spoofer sends every tunnel's ID, without its secret, from elsewhere.
	spoofer, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 2, 1)}, net.UDPAddrFromAddrPort(srv.Addr(0)))
	if err != nil {
		t.Fatal(err)
	}
	defer spoofer.Close()
	for _, c := range clients {
		spoofer.Write(tunDatagram('D', c.id, []byte("guess"), "forged"))
	}

	moves := []string{"127.0.1.%d:0", "127.0.1.%d:0", "127.0.3.%d:0"} // two new ports, then a new address
	for round, pattern := range moves {
		for i, c := range clients {
			c.move(fmt.Sprintf(pattern, i+1))
			if got := c.send('D', fmt.Sprint("after move ", round)); got != landed[c.id] {
				t.Fatalf("tunnel %d after move %d: answered by %q, want its backend %q", c.id, round, got, landed[c.id])
			}
			// A forged datagram between the moves changes nothing either.
			spoofer.Write(tunDatagram('D', c.id, []byte("guess"), "forged"))
		}
	}
	// The next datagram after a move goes on the session's own socket,
	// and the backend follows it back there.
	for _, c := range clients {
		if got := c.send('D', "settled"); got != landed[c.id] {
			t.Fatalf("tunnel %d after the moves: answered by %q", c.id, got)
		}
	}
	buf := make([]byte, 2048)
	spoofer.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := spoofer.Read(buf); err == nil {
		t.Fatalf("the spoofer got %q", buf[:n])
	}
	st := srv.Stats()
	if st.Sessions != n {
		t.Errorf("%d sessions for %d tunnels: orphans left by the moves", st.Sessions, n)
	}
	ps := h.Stats()
	if want := uint64(n * len(moves)); ps.Moved != want {
		t.Errorf("Moved = %d; want %d", ps.Moved, want)
	}
	// A second later, the next datagram of each client closes the probes
	// left: the one the backend answered on (it is back on the session's
	// socket) and the spoofer's, stale. Each session has its own socket
	// alone again.
	time.Sleep(probeEvict + 100*time.Millisecond)
	for _, c := range clients {
		c.send('D', "later")
	}
	if ps := h.Stats(); ps.UpstreamSockets != n || ps.MovesPending != 0 {
		t.Errorf("%d upstream sockets, %d pending moves for %d sessions; want one socket each", ps.UpstreamSockets, ps.MovesPending, n)
	}
	forged := 0
	for _, b := range []*tunBackend{b1, b2} {
		b.mu.Lock()
		forged += b.forged
		for id, peer := range b.peers {
			for _, c := range clients {
				if c.id == id && landed[id] != b.name {
					t.Errorf("tunnel %d reached %s too (at %v); it belongs to %s", id, b.name, peer, landed[id])
				}
			}
		}
		b.mu.Unlock()
	}
	if forged == 0 {
		t.Error("no forged datagram reached a backend: the test did not test the spoofer")
	}
	// Each client is found by its current 4-tuple only: the old ones went.
	for _, c := range clients {
		cur := netip.MustParseAddrPort(c.conn.LocalAddr().String())
		var s session.Session
		srv.Sessions(func(x session.Session) bool {
			if x.PeerAddr() == cur {
				s = x
			}
			return true
		})
		if s == nil {
			t.Fatalf("tunnel %d: no session at %v", c.id, cur)
		}
		tuples := 0
		for _, k := range s.Keys(nil) {
			if k.Kind() == flowtable.KindTuple4 {
				tuples++
				if k.Peer() != cur {
					t.Errorf("tunnel %d: session still holds %v", c.id, k)
				}
			}
		}
		if tuples != 1 {
			t.Errorf("tunnel %d: %d 4-tuple keys", c.id, tuples)
		}
		// The backend is back on the session's own socket, the one it
		// knew before any move.
		info, ok := h.Session(s)
		b := map[string]*tunBackend{"b1": b1, "b2": b2}[landed[c.id]]
		b.mu.Lock()
		at := b.peers[c.id]
		b.mu.Unlock()
		if !ok || info.Source != at || info.Source != first[c.id] {
			t.Errorf("tunnel %d: the backend sends to %v; the session's socket is %v, at first %v", c.id, at, info.Source, first[c.id])
		}
	}
}
