//go:build linux

package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/session"
	"github.com/udpmux/udpmux/session/sessiontest"
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
	return startBackendAt(t, name, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
}

// startBackendAt is startBackend on the address at.
func startBackendAt(t *testing.T, name string, at *net.UDPAddr) *echoBackend {
	t.Helper()
	c, err := net.ListenUDP("udp4", at)
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
	return startProxyAt(t, netip.MustParseAddrPort("127.0.0.1:0"), cfg, idle, maxSessions, wrap...)
}

// startProxyAt is startProxy on the listener address addr.
func startProxyAt(t *testing.T, addr netip.AddrPort, cfg Config, idle time.Duration, maxSessions int, wrap ...func(*Handler) session.Handler) (*mux.Server, *Handler) {
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
			Name: "proxy", Address: addr, Handler: served, IdleTimeout: idle,
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

// The tests below run the proxy on a sessiontest.Loop with a fake clock:
// the handler's own logic, without the engine or any traffic. Its backends
// are loopback ports nothing listens on; the upstream sockets the proxy
// dials to them send nothing, since the loop records what it writes.

// unit is a proxy on a sessiontest.Loop.
type unit struct {
	t   *testing.T
	h   *Handler
	l   *sessiontest.Loop
	clk *fakeClock
}

func newUnit(t *testing.T, backends int, cfg Config) *unit {
	t.Helper()
	for i := range backends {
		cfg.Backends = append(cfg.Backends, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(40001+i)))
	}
	clk := newFakeClock()
	cfg.Health.Now, cfg.Logger = clk.Now, quiet()
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &unit{t: t, h: h, clk: clk, l: &sessiontest.Loop{Handler: h, IdleTimeout: time.Minute, Now: clk.Now}}
}

// try opens the session of client, which the test ends when it is over, so
// that the proxy closes its sockets.
func (u *unit) try(client string) (*sessiontest.Session, error) {
	s, err := u.l.Open(netip.MustParseAddrPort(client))
	if err == nil {
		u.t.Cleanup(func() { s.End(session.ReasonShutdown) })
	}
	return s, err
}

// open is try for a session the proxy must accept.
func (u *unit) open(client string) *sessiontest.Session {
	u.t.Helper()
	s, err := u.try(client)
	if err != nil {
		u.t.Fatalf("open %s: %v", client, err)
	}
	return s
}

// upstreamOf returns s's upstream socket, the first it attached.
func upstreamOf(s *sessiontest.Session) *sessiontest.Socket { return s.Sockets()[0] }

// sentAre reports whether sent holds the datagrams want.
func sentAre(sent [][]byte, want ...string) bool {
	return slices.EqualFunc(sent, want, func(p []byte, w string) bool { return string(p) == w })
}

// TestSessionsStickToTheirBackend: a session's datagrams go to the backend
// its key picks, on a socket of its own connected there, and the backend's
// replies to its client; sessions spread over the backends, and the next
// session of a flow whose session ended picks the same one.
func TestSessionsStickToTheirBackend(t *testing.T) {
	u := newUnit(t, 3, Config{})
	picked := map[netip.AddrPort]int{}
	for i := range 60 {
		client := fmt.Sprintf("198.51.100.%d:%d", i+1, 1000+i)
		s := u.open(client)
		info, ok := u.h.Session(s)
		sock := upstreamOf(s)
		if !ok || sock.RemoteAddr() != info.Backend || sock.LocalAddr() != info.Source {
			t.Fatalf("session %s: backend %v from %v, its socket connected to %v from %v", client, info.Backend, info.Source, sock.RemoteAddr(), sock.LocalAddr())
		}
		s.Deliver(s.PeerAddr(), []byte("ping"))
		sock.Deliver([]byte("pong"))
		if !sentAre(sock.Sent(), "ping") || !sentAre(s.Sent(), "pong") {
			t.Fatalf("session %s: sent %q to the backend and %q to the client", client, sock.Sent(), s.Sent())
		}
		s.End(session.ReasonIdle)
		if again, _ := u.h.Session(u.open(client)); again.Backend != info.Backend {
			t.Errorf("session %s: on %v, the flow's next one on %v", client, info.Backend, again.Backend)
		}
		picked[info.Backend]++
	}
	if len(picked) != 3 {
		t.Errorf("sessions did not spread over the backends: %v", picked)
	}
}

// TestOpenLimits: the per-source and upstream socket bounds refuse new
// sessions beyond them, and a session that ends gives its share back.
func TestOpenLimits(t *testing.T) {
	tests := []struct {
		name           string
		cfg            Config
		client         string // with %d for the session's number
		n, opened      int
		source, socket uint64 // the refusals of each limit
	}{
		{"sessions per source", Config{Sources: NewSourceLimiter(5), Sockets: NewBudget(8)}, "198.51.100.1:%d", 51, 5, 46, 0},
		{"upstream sockets", Config{Sockets: NewBudget(3)}, "198.51.100.%d:1000", 10, 3, 0, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUnit(t, 1, tt.cfg)
			var first *sessiontest.Session
			for i := range tt.n {
				s, err := u.try(fmt.Sprintf(tt.client, i+1))
				switch {
				case i < tt.opened && err != nil:
					t.Fatalf("session %d refused: %v", i, err)
				case i >= tt.opened && !errors.Is(err, ErrSourceLimited) && !errors.Is(err, ErrSocketLimited):
					t.Fatalf("session %d: %v", i, err)
				case i == 0:
					first = s
				}
			}
			st := u.h.Stats()
			if st.SourceLimited != tt.source || st.SocketLimited != tt.socket || st.UpstreamSockets != tt.opened {
				t.Errorf("refused %d by source, %d by sockets, %d sockets; want %d, %d, %d",
					st.SourceLimited, st.SocketLimited, st.UpstreamSockets, tt.source, tt.socket, tt.opened)
			}
			first.End(session.ReasonIdle)
			if _, err := u.try(fmt.Sprintf(tt.client, tt.n+1)); err != nil {
				t.Errorf("after a session ended: %v", err)
			}
		})
	}
}

// TestAbandon: a session on a backend marked down that never answered it
// is closed at its client's next datagram, so that the one after opens a
// session on a healthy backend; one the backend answered stays until it has
// been silent for the session's idle timeout.
func TestAbandon(t *testing.T) {
	t.Run("never answered", func(t *testing.T) {
		u := newUnit(t, 1, Config{})
		s := u.open("198.51.100.1:1000")
		// The backend's only session: one report is not enough (it may be
		// forged); a second, once the session may report again, is.
		upstreamOf(s).Fail(session.ErrRefused)
		if !u.h.Stats().Backends[0].Healthy {
			t.Fatal("one report marked the backend of a single session down")
		}
		u.clk.Advance(u.h.refusalWindow)
		upstreamOf(s).Fail(session.ErrRefused)
		if _, err := u.try("198.51.100.2:1000"); !errors.Is(err, ErrNoBackend) || u.h.Stats().NoBackend != 1 {
			t.Fatalf("a new session with every backend down: %v", err)
		}
		sock := upstreamOf(s)
		s.Deliver(s.PeerAddr(), []byte("x"))
		// The engine ends a session between batches: datagrams of the same
		// batch still reach the handler after its Close.
		u.h.Datagram(s, []byte("y"))
		st := u.h.Stats()
		if s.Reason() != session.ReasonClosed || st.Abandoned != 1 || st.UpstreamSockets != 0 || len(sock.Sent()) != 0 {
			t.Errorf("ended %v, Abandoned %d, %d sockets, sent %q", s.Reason(), st.Abandoned, st.UpstreamSockets, sock.Sent())
		}
	})
	t.Run("answered", func(t *testing.T) {
		u := newUnit(t, 1, Config{})
		s := u.open("198.51.100.1:1000")
		sock := upstreamOf(s)
		sock.Deliver([]byte("reply"))
		// The backend answered: it takes a refusal window of silence, and a
		// second report, once the session may report again, to mark it down.
		sock.Fail(session.ErrRefused)
		u.clk.Advance(u.h.refusalWindow)
		sock.Fail(session.ErrRefused)
		if u.h.Stats().Backends[0].Healthy {
			t.Fatal("the backend is not down")
		}
		for _, wait := range []time.Duration{0, time.Minute - time.Nanosecond, time.Nanosecond} {
			u.clk.Advance(wait)
			s.Deliver(s.PeerAddr(), fmt.Append(nil, wait))
		}
		if !sentAre(sock.Sent(), "0s", "59.999999999s") || s.Reason() != session.ReasonClosed || u.h.Stats().Abandoned != 1 {
			t.Errorf("sent %q, ended %v: want the session closed after a minute of silence", sock.Sent(), s.Reason())
		}
	})
}

// TestRefusalsReportedOncePerWindow: every ICMP refusal on a session's
// socket is counted, but the balancer hears of them at most once per
// session per refusal window, and marks the backend down only for refusals
// from enough sessions; other errors, and any on a probe, are reported
// nowhere.
func TestRefusalsReportedOncePerWindow(t *testing.T) {
	u := newRoamUnit(t, Config{})
	var ss []*sessiontest.Session
	for i := range 3 {
		ss = append(ss, u.open(fmt.Sprintf("198.51.100.%d:1000", i+1)))
	}
	ss[2].Deliver(netip.MustParseAddrPort("203.0.113.1:1000"), []byte("roamed"))
	ss[2].Sockets()[1].Fail(session.ErrRefused)
	steps := []struct {
		after            time.Duration
		session          int
		err              error
		refused, ignored uint64 // RefusedByBackend, IgnoredRefusals
		errors           uint64 // UpstreamErrors
		healthy          bool
	}{
		{0, 0, session.ErrRefused, 1, 1, 0, true},
		{time.Second, 0, session.ErrRefused, 2, 1, 0, true}, // within the window: not reported
		{0, 0, errors.New("i/o error"), 2, 1, 1, true},
		{time.Second, 0, session.ErrRefused, 3, 2, 1, true}, // the window over: reported
		{0, 1, session.ErrRefused, 4, 2, 1, false},          // the third report: down
	}
	for i, st := range steps {
		u.clk.Advance(st.after)
		upstreamOf(ss[st.session]).Fail(st.err)
		got := u.h.Stats()
		if got.RefusedByBackend != st.refused || got.IgnoredRefusals != st.ignored || got.UpstreamErrors != st.errors || got.Backends[0].Healthy != st.healthy {
			t.Fatalf("step %d: refused %d, ignored %d, errors %d, healthy %v; want %d, %d, %d, %v", i,
				got.RefusedByBackend, got.IgnoredRefusals, got.UpstreamErrors, got.Backends[0].Healthy,
				st.refused, st.ignored, st.errors, st.healthy)
		}
	}
}

// TestCloseReleasesEverything: however a session ends, the proxy closes its
// upstream socket and probes and gives back its backend's session count and
// its limits, those of the address it moved to.
func TestCloseReleasesEverything(t *testing.T) {
	ends := map[string]func(*sessiontest.Session){
		"idle":   func(s *sessiontest.Session) { s.End(session.ReasonIdle) },
		"closed": func(s *sessiontest.Session) { s.Close() },
	}
	for name, end := range ends {
		t.Run(name, func(t *testing.T) {
			u := newRoamUnit(t, Config{Sources: NewSourceLimiter(1)})
			s := u.open("198.51.100.1:1000")
			moved := netip.MustParseAddrPort("203.0.113.1:1000")
			s.Deliver(moved, []byte("confirmed"))
			s.Sockets()[1].Deliver([]byte("reply"))
			s.Deliver(netip.MustParseAddrPort("203.0.113.2:1000"), []byte("pending"))
			socks := s.Sockets()
			if st := u.h.Stats(); s.PeerAddr() != moved || len(socks) != 3 || st.UpstreamSockets != 3 || st.MovesPending != 1 {
				t.Fatalf("at %v, %d sockets, %d pending moves: want a move, a probe confirmed, one pending", s.PeerAddr(), st.UpstreamSockets, st.MovesPending)
			}
			end(s)
			st := u.h.Stats()
			if st.UpstreamSockets != 0 || st.MovesPending != 0 || st.Backends[0].Sessions != 0 {
				t.Errorf("%d sockets, %d pending moves, %d backend sessions left", st.UpstreamSockets, st.MovesPending, st.Backends[0].Sessions)
			}
			for _, k := range socks {
				if !k.Closed() {
					t.Errorf("socket %v left open", k.LocalAddr())
				}
			}
			u.open("203.0.113.1:2000") // the source share the session held
		})
	}
}

// TestImportSession: a predecessor's session is adopted only on its
// backend, with its socket, connected there, and within the limits; a
// backend no longer configured is retired, and its session stays on it.
func TestImportSession(t *testing.T) {
	u := newUnit(t, 2, Config{Sources: NewSourceLimiter(1)})
	held := u.open("198.51.100.1:1000")
	info, _ := u.h.Session(held)
	state, err := u.h.ExportSession(held)
	if err != nil {
		t.Fatal(err)
	}
	elsewhere := u.h.backends[0]
	if elsewhere == info.Backend {
		elsewhere = u.h.backends[1]
	}
	goneAddr := netip.MustParseAddrPort("127.0.0.1:9")
	gone, _ := goneAddr.MarshalBinary()
	tests := []struct {
		name     string
		client   string
		state    []byte
		upstream netip.AddrPort // what the predecessor's socket is connected to
		err      string         // in the error; "" for none
	}{
		{"adopted", "198.51.100.2:1000", state, info.Backend, ""},
		{"a state of no backend", "198.51.100.3:1000", []byte("x"), info.Backend, "session state"},
		{"a backend no longer configured", "198.51.100.3:1000", gone, goneAddr, ""},
		{"a socket connected elsewhere than the state says", "198.51.100.3:1000", gone, info.Backend, "connected to"},
		{"no socket", "198.51.100.3:1000", state, netip.AddrPort{}, "without its upstream socket"},
		{"a socket connected elsewhere", "198.51.100.3:1000", state, elsewhere, "connected to"},
		{"a source at its limit", "198.51.100.1:2000", state, info.Backend, ErrSourceLimited.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := u.h.Stats()
			s, err := u.l.Import(netip.MustParseAddrPort(tt.client), tt.state, tt.upstream)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want one about %q", err, tt.err)
				}
				if after := u.h.Stats(); after.UpstreamSockets != before.UpstreamSockets || !slices.Equal(after.Backends, before.Backends) {
					t.Errorf("a refused session took a share: %+v, before %+v", after, before)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			sock := upstreamOf(s)
			if got, _ := u.h.Session(s); got.Backend != sock.RemoteAddr() || got.Source != sock.LocalAddr() || u.h.Stats().UpstreamSockets != 2 {
				t.Errorf("adopted on %v from %v; want %v from %v", got.Backend, got.Source, sock.RemoteAddr(), sock.LocalAddr())
			}
			bs := u.h.Stats().Backends
			if retired := tt.upstream == goneAddr; retired {
				want := BackendStatus{Addr: goneAddr, Healthy: true, Drained: true, Retired: true, Sessions: 1}
				if len(bs) != 3 || bs[2] != want {
					t.Errorf("backends %+v, want the configured two and %+v", bs, want)
				}
			}
			s.End(session.ReasonShutdown)
			if !sock.Closed() {
				t.Error("the adopted socket was left open")
			}
		})
	}
}

// TestBackendUp: a proxy has a backend up until every one is down, and
// again when one's back-off ends.
func TestBackendUp(t *testing.T) {
	u := newUnit(t, 2, Config{})
	if !u.h.BackendUp() {
		t.Fatal("no backend up at the start")
	}
	u.h.bal.MarkDown(0, u.clk.Now())
	if !u.h.BackendUp() {
		t.Fatal("no backend up with one down")
	}
	u.h.bal.MarkDown(1, u.clk.Now())
	if u.h.BackendUp() {
		t.Fatal("a backend up with both down")
	}
	u.clk.Advance(time.Hour)
	if !u.h.BackendUp() {
		t.Error("no backend up after the back-off")
	}
}
