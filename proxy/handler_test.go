package proxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/session"
)

// echoBackend is a real UDP backend that answers "name|payload" and records
// every source address it has seen.
type echoBackend struct {
	name string
	conn *net.UDPConn
	mu   sync.Mutex
	seen map[netip.AddrPort]int
}

func startBackend(t *testing.T, name string) *echoBackend {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	b := &echoBackend{name: name, conn: c, seen: map[netip.AddrPort]int{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			b.mu.Lock()
			b.seen[from]++
			b.mu.Unlock()
			c.WriteToUDPAddrPort(append([]byte(name+"|"), buf[:n]...), from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return b
}

func (b *echoBackend) addr() netip.AddrPort { return b.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (b *echoBackend) sources() map[netip.AddrPort]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[netip.AddrPort]int{}
	for k, v := range b.seen {
		out[k] = v
	}
	return out
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startProxy serves a proxy listener on 127.0.0.1 in front of backends.
// startProxy serves a proxy for cfg; wrap, if given, wraps the proxy in the
// handler the server gets.
func startProxy(t *testing.T, cfg Config, idle time.Duration, maxSessions int, wrap ...func(*Handler) session.Handler) (*mux.Server, *Handler) {
	t.Helper()
	cfg.Logger = quiet()
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var served session.Handler = h
	for _, w := range wrap {
		served = w(h)
	}
	srv, err := mux.New(mux.Config{
		Workers: 2, MaxSessions: maxSessions, Logger: quiet(),
		Listeners: []mux.ListenerConfig{{
			Name: "proxy", Address: netip.MustParseAddrPort("127.0.0.1:0"), Handler: served, IdleTimeout: idle,
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

func client(t *testing.T, to netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// exchange sends msg and returns the reply, or "" on timeout.
func exchange(c *net.UDPConn, msg string, wait time.Duration) string {
	c.Write([]byte(msg))
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestProxySticksAndSplitsSessions(t *testing.T) {
	b1, b2 := startBackend(t, "b1"), startBackend(t, "b2")
	srv, h := startProxy(t, Config{Backends: []netip.AddrPort{b1.addr(), b2.addr()}}, time.Minute, 1000)
	const clients, rounds = 40, 5
	landed := map[string]int{}
	for i := 0; i < clients; i++ {
		c := client(t, srv.Addr(0))
		var backend string
		for r := 0; r < rounds; r++ {
			msg := fmt.Sprintf("c%d r%d", i, r)
			reply := exchange(c, msg, 5*time.Second)
			name, payload, ok := strings.Cut(reply, "|")
			if !ok || payload != msg {
				t.Fatalf("client %d round %d: reply %q to %q (a reply meant for another client?)", i, r, reply, msg)
			}
			if r == 0 {
				backend = name
			} else if name != backend {
				t.Fatalf("client %d moved from %s to %s", i, backend, name)
			}
		}
		landed[backend]++
	}
	if landed["b1"] == 0 || landed["b2"] == 0 {
		t.Errorf("sessions did not split across backends: %v", landed)
	}
	// Each backend saw one source address per session, each used for every
	// round: the session's own upstream socket.
	total := 0
	for _, b := range []*echoBackend{b1, b2} {
		for src, n := range b.sources() {
			if n != rounds {
				t.Errorf("%s saw %s %d times, want %d (one stable source per session)", b.name, src, n, rounds)
			}
			total++
		}
	}
	if total != clients {
		t.Errorf("backends saw %d sources for %d sessions", total, clients)
	}
	if st := h.Stats(); st.UpstreamSockets != clients {
		t.Errorf("%d upstream sockets for %d sessions", st.UpstreamSockets, clients)
	}
}

func TestProxyBackendRefusalMarksItDown(t *testing.T) {
	up := startBackend(t, "up")
	// A port with nothing bound: the kernel answers ICMP port unreachable.
	deadConn, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	dead := deadConn.LocalAddr().(*net.UDPAddr).AddrPort()
	deadConn.Close()
	srv, h := startProxy(t, Config{Backends: []netip.AddrPort{up.addr(), dead}, Balance: PolicyRoundRobin}, time.Minute, 1000)

	var established *net.UDPConn
	for i := 0; i < 4; i++ {
		c := client(t, srv.Addr(0))
		if reply := exchange(c, "hi", 300*time.Millisecond); reply == "up|hi" && established == nil {
			established = c
		}
	}
	waitUntil(t, "the dead backend to be marked down", func() bool {
		st := h.Stats()
		return !st.Backends[1].Healthy && st.RefusedByBackend > 0
	})
	// New sessions all land on the healthy backend now.
	for i := 0; i < 6; i++ {
		if reply := exchange(client(t, srv.Addr(0)), "new", 5*time.Second); reply != "up|new" {
			t.Fatalf("new session %d after mark-down: reply %q", i, reply)
		}
	}
	if established == nil {
		t.Fatal("no session landed on the healthy backend")
	}
	if reply := exchange(established, "still", 5*time.Second); reply != "up|still" {
		t.Errorf("established session on the healthy backend: %q", reply)
	}
}

func TestProxyAllBackendsDownRefusesNewSessions(t *testing.T) {
	deadConn, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	dead := deadConn.LocalAddr().(*net.UDPAddr).AddrPort()
	deadConn.Close()
	srv, h := startProxy(t, Config{Backends: []netip.AddrPort{dead}}, time.Minute, 1000)
	first := client(t, srv.Addr(0))
	exchange(first, "x", 200*time.Millisecond)
	waitUntil(t, "the backend to be marked down", func() bool { return !h.Stats().Backends[0].Healthy })
	exchange(client(t, srv.Addr(0)), "y", 200*time.Millisecond)
	waitUntil(t, "a refusal for lack of backends", func() bool { return h.Stats().NoBackend > 0 })
	// The first session stays until its client sends again: the backend,
	// down, never answered it, so it is abandoned and its socket closed.
	if n := h.Stats().UpstreamSockets; n != 1 {
		t.Errorf("%d upstream sockets before the first client sends again; want its one", n)
	}
	first.Write([]byte("again"))
	waitUntil(t, "the abandoned session's socket to close", func() bool { return h.Stats().UpstreamSockets == 0 })
	if n := h.Stats().Abandoned; n != 1 {
		t.Errorf("Abandoned = %d; want 1", n)
	}
}

func TestProxyLimitsHoldUnderAFloodOfSourcePorts(t *testing.T) {
	b := startBackend(t, "b")
	srv, h := startProxy(t, Config{
		Backends: []netip.AddrPort{b.addr()},
		Sources:  NewSourceLimiter(5),
		Sockets:  NewBudget(8),
	}, time.Minute, 1000)
	established := client(t, srv.Addr(0))
	if reply := exchange(established, "first", 5*time.Second); reply != "b|first" {
		t.Fatalf("first session: %q", reply)
	}
	// 50 new source ports from the same address: only 4 more are admitted,
	// 46 refused.
	for i := 0; i < 50; i++ {
		client(t, srv.Addr(0)).Write([]byte("flood"))
	}
	waitUntil(t, "46 refusals", func() bool {
		st := srv.Stats().Listeners[0]
		return st.RefusedOpen == 46
	})
	st := h.Stats()
	if st.SourceLimited != 46 || st.UpstreamSockets != 5 {
		t.Errorf("source-limited %d, sockets %d; want 46 and 5", st.SourceLimited, st.UpstreamSockets)
	}
	if reply := exchange(established, "still", 5*time.Second); reply != "b|still" {
		t.Errorf("established session during the flood: %q", reply)
	}
}

func TestProxySocketBudget(t *testing.T) {
	b := startBackend(t, "b")
	srv, h := startProxy(t, Config{Backends: []netip.AddrPort{b.addr()}, Sockets: NewBudget(3)}, time.Minute, 1000)
	for i := 0; i < 10; i++ {
		client(t, srv.Addr(0)).Write([]byte("x"))
	}
	waitUntil(t, "7 socket refusals", func() bool { return h.Stats().SocketLimited == 7 })
	if n := h.Stats().UpstreamSockets; n != 3 {
		t.Errorf("%d upstream sockets, want 3", n)
	}
}

func TestProxyIdleSessionReleasesUpstream(t *testing.T) {
	b := startBackend(t, "b")
	srv, h := startProxy(t, Config{Backends: []netip.AddrPort{b.addr()}}, time.Second, 1000)
	c := client(t, srv.Addr(0))
	if reply := exchange(c, "x", 5*time.Second); reply != "b|x" {
		t.Fatalf("reply %q", reply)
	}
	waitUntil(t, "the idle session to close and release its socket", func() bool {
		st := h.Stats()
		return st.UpstreamSockets == 0 && st.Backends[0].Sessions == 0 && srv.Stats().Sessions == 0
	})
	// The next datagram opens a new session with a new upstream socket.
	if reply := exchange(c, "y", 5*time.Second); reply != "b|y" {
		t.Fatalf("after idle close: %q", reply)
	}
	if n := len(b.sources()); n != 2 {
		t.Errorf("backend saw %d sources, want 2 (one per session)", n)
	}
}

// TestProxyBurstArrivesWholeAndInOrder sends a burst of equal datagrams and
// a shorter last one, which the proxy gathers and sends on together
// (segmented where the kernel allows): the backend and then the client get
// each one whole and in order.
func TestProxyBurstArrivesWholeAndInOrder(t *testing.T) {
	b := startBackend(t, "b")
	srv, _ := startProxy(t, Config{Backends: []netip.AddrPort{b.addr()}}, time.Minute, 0)
	c := client(t, srv.Addr(0))
	if got := exchange(c, "open", 5*time.Second); got != "b|open" {
		t.Fatalf("first reply %q", got)
	}
	var want []string
	for i := range 50 {
		size := 300
		if i == 49 {
			size = 40
		}
		p := make([]byte, size)
		for j := range p {
			p[j] = byte('a' + i%26)
		}
		p[0] = byte(i)
		want = append(want, "b|"+string(p))
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 2048)
	for i, w := range want {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if string(buf[:n]) != w {
			t.Fatalf("reply %d: %d bytes starting %q, want %d bytes starting %q", i, n, buf[:3], len(w), w[:3])
		}
	}
}
