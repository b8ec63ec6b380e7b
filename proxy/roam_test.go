//go:build linux

package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/session"
	"github.com/udpmux/udpmux/session/sessiontest"
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

// roamTo has s's client, now at from, send p, and returns the probe it
// goes on when a new one opened for it, or nil.
func roamTo(s *sessiontest.Session, from string, p string) *sessiontest.Socket {
	before := s.Sockets()
	s.Deliver(netip.MustParseAddrPort(from), []byte(p))
	// A new socket goes last.
	if socks := s.Sockets(); !slices.Contains(before, socks[len(socks)-1]) {
		return socks[len(socks)-1]
	}
	return nil
}

// TestRoamConfirmedByTheBackend: datagrams from a new address go to the
// backend on a probe of their own, and move nothing until the backend
// answers there; its answer moves the session, and the session's other
// probes close. The client's next datagrams go on the session's socket
// again, and once the backend is back there too, the probe closes.
func TestRoamConfirmedByTheBackend(t *testing.T) {
	u := newUnit(t, 1, Config{})
	s := u.open("198.51.100.1:1000")
	own := upstreamOf(s)
	port := roamTo(s, "198.51.100.1:2000", "b1")
	if port == nil || roamTo(s, "198.51.100.1:2000", "b2") != nil {
		t.Fatal("not one probe for a new address")
	}
	ip := roamTo(s, "203.0.113.1:1000", "c1")
	if st := u.h.Stats(); !sentAre(port.Sent(), "b1", "b2") || !sentAre(ip.Sent(), "c1") || len(own.Sent()) != 0 || st.MovesPending != 2 || st.UpstreamSockets != 3 {
		t.Fatalf("probes sent %q and %q, the session's socket %q; %d pending, %d sockets", port.Sent(), ip.Sent(), own.Sent(), st.MovesPending, st.UpstreamSockets)
	}
	own.Deliver([]byte("to the old address"))
	if s.PeerAddr().String() != "198.51.100.1:1000" {
		t.Fatal("a reply on the session's socket moved it")
	}
	port.Deliver([]byte("to the new port"))
	port.Deliver([]byte("more"))
	moved := netip.MustParseAddrPort("198.51.100.1:2000")
	st := u.h.Stats()
	if s.PeerAddr() != moved || !ip.Detached() || st.Moved != 1 || st.MovesPending != 0 || st.UpstreamSockets != 2 {
		t.Fatalf("at %v, other probe closed %v, Moved %d, %d pending, %d sockets", s.PeerAddr(), ip.Detached(), st.Moved, st.MovesPending, st.UpstreamSockets)
	}
	if !sentAre(s.Sent(), "to the old address", "to the new port", "more") {
		t.Errorf("the client got %q", s.Sent())
	}
	if keys := s.Keys(nil); !slices.Equal(keys, []flowtable.Key{flowtable.TupleKey(0, s.LocalAddr(), moved)}) {
		t.Errorf("keys %v: the old 4-tuple is not released", keys)
	}
	s.Deliver(moved, []byte("b3"))
	own.Deliver([]byte("back"))
	if !sentAre(own.Sent(), "b3") || len(port.Sent()) != 2 {
		t.Errorf("the session's socket sent %q, the probe %q", own.Sent(), port.Sent())
	}
	u.clk.Advance(probeEvict)
	s.Deliver(moved, []byte("b4"))
	if !port.Detached() || u.h.Stats().UpstreamSockets != 1 {
		t.Error("the probe outlived the backend's return to the session's socket")
	}
}

// TestLateDatagramsFromTheAddressLeft: for a second after a move, datagrams
// from the address the session left are dropped; after that, they are a new
// address's.
func TestLateDatagramsFromTheAddressLeft(t *testing.T) {
	u := newUnit(t, 1, Config{})
	s := u.open("198.51.100.1:1000")
	roamTo(s, "198.51.100.1:2000", "move").Deliver([]byte("moved"))
	for _, wait := range []time.Duration{0, moveHold - time.Nanosecond} {
		u.clk.Advance(wait)
		if roamTo(s, "198.51.100.1:1000", "late") != nil {
			t.Fatalf("%v after the move: a probe for the address left", wait)
		}
	}
	if n := u.h.Stats().LateDatagrams; n != 2 {
		t.Errorf("LateDatagrams = %d", n)
	}
	u.clk.Advance(time.Nanosecond)
	if pr := roamTo(s, "198.51.100.1:1000", "back"); pr == nil || !sentAre(pr.Sent(), "back") {
		t.Error("a second after the move, the address left got no probe")
	}
}

// TestStaleProbesClose: the client's datagrams from its own address close
// the probes nothing has passed through for a while: a second for one the
// backend never answered, or one it has left for the session's socket, ten
// seconds for one it still answers on.
func TestStaleProbesClose(t *testing.T) {
	tests := []struct {
		name string
		roam func(u *unit, s *sessiontest.Session) *sessiontest.Socket
		idle time.Duration
	}{
		{"pending", func(u *unit, s *sessiontest.Session) *sessiontest.Socket {
			return roamTo(s, "203.0.113.1:1000", "x")
		}, probeEvict},
		{"confirmed, the backend back on the session's socket", func(u *unit, s *sessiontest.Session) *sessiontest.Socket {
			pr := roamTo(s, "203.0.113.1:1000", "x")
			pr.Deliver([]byte("moved"))
			upstreamOf(s).Deliver([]byte("back"))
			return pr
		}, probeEvict},
		{"confirmed, the backend still on the probe", func(u *unit, s *sessiontest.Session) *sessiontest.Socket {
			pr := roamTo(s, "203.0.113.1:1000", "x")
			pr.Deliver([]byte("moved"))
			return pr
		}, probeIdle},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUnit(t, 1, Config{})
			s := u.open("198.51.100.1:1000")
			pr := tt.roam(u, s)
			u.clk.Advance(tt.idle - time.Nanosecond)
			s.Deliver(s.PeerAddr(), []byte("here"))
			if pr.Detached() {
				t.Fatal("closed too early")
			}
			u.clk.Advance(time.Nanosecond)
			s.Deliver(s.PeerAddr(), []byte("still here"))
			if st := u.h.Stats(); !pr.Detached() || st.UpstreamSockets != 1 || st.MovesPending != 0 {
				t.Errorf("closed %v, %d sockets, %d pending", pr.Detached(), st.UpstreamSockets, st.MovesPending)
			}
		})
	}
}

// TestProbesBounded: a session waits on two new addresses at most, and a
// third takes the place of the one idle longest only once it has been
// idle for a second; a probe the socket budget has no room for is refused.
func TestProbesBounded(t *testing.T) {
	t.Run("pending", func(t *testing.T) {
		u := newUnit(t, 1, Config{})
		s := u.open("198.51.100.1:1000")
		first := roamTo(s, "203.0.113.1:1000", "1")
		u.clk.Advance(probeEvict / 2)
		roamTo(s, "203.0.113.2:1000", "2")
		u.clk.Advance(probeEvict/2 - time.Nanosecond)
		if roamTo(s, "203.0.113.3:1000", "refused") != nil || u.h.Stats().MovesRefused != 1 {
			t.Fatal("a third probe while the others are fresh")
		}
		u.clk.Advance(time.Nanosecond)
		if roamTo(s, "203.0.113.3:1000", "3") == nil || !first.Detached() || u.h.Stats().MovesPending != 2 {
			t.Error("the oldest probe, idle for a second, did not make room")
		}
	})
	t.Run("socket budget", func(t *testing.T) {
		u := newUnit(t, 1, Config{Sockets: NewBudget(1)})
		s := u.open("198.51.100.1:1000")
		if roamTo(s, "203.0.113.1:1000", "x") != nil || u.h.Stats().MovesRefused != 1 || len(upstreamOf(s).Sent()) != 0 {
			t.Error("a probe beyond the socket budget, or its datagram sent")
		}
	})
}

// TestMoveTakesTheNewSourcesShare: a move to a new IP address takes a share
// of sessions.max_per_source there and gives back the old one's; with none
// left there, the move is refused and the probe closed. A new port of the
// same address needs no share.
func TestMoveTakesTheNewSourcesShare(t *testing.T) {
	u := newUnit(t, 1, Config{Sources: NewSourceLimiter(1)})
	s := u.open("198.51.100.1:1000")
	holder := u.open("203.0.113.1:5000")
	pr := roamTo(s, "203.0.113.1:1000", "x")
	pr.Deliver([]byte("refused"))
	if s.PeerAddr().String() != "198.51.100.1:1000" || !pr.Detached() || len(s.Sent()) != 0 || u.h.Stats().MovesRefused != 1 {
		t.Fatalf("at %v, probe closed %v, the client got %q: want the move refused", s.PeerAddr(), pr.Detached(), s.Sent())
	}
	holder.End(session.ReasonIdle)
	roamTo(s, "203.0.113.1:1000", "y").Deliver([]byte("moved"))
	roamTo(s, "203.0.113.1:2000", "z").Deliver([]byte("moved again"))
	if s.PeerAddr().String() != "203.0.113.1:2000" || u.h.Stats().Moved != 2 {
		t.Fatalf("at %v after two moves", s.PeerAddr())
	}
	u.open("198.51.100.1:1001")
	if _, err := u.try("203.0.113.1:3000"); !errors.Is(err, ErrSourceLimited) {
		t.Errorf("the new address's share is free: %v", err)
	}
}
