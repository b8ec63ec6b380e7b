//go:build linux

package mux

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/session"
)

// countingHandler answers each datagram with its name and how many
// datagrams the session has had. The count lives in the handler, not the
// session, and the handler is no session.Migrator: its sessions cannot move
// to another process.
type countingHandler struct {
	name   string
	mu     sync.Mutex
	counts map[session.Session]int
}

func newCountingHandler(name string) *countingHandler {
	return &countingHandler{name: name, counts: map[session.Session]int{}}
}

func (h *countingHandler) Open(s session.Session) error {
	h.mu.Lock()
	h.counts[s] = 0
	h.mu.Unlock()
	return nil
}

func (h *countingHandler) Datagram(s session.Session, p []byte) {
	h.mu.Lock()
	h.counts[s]++
	n := h.counts[s]
	h.mu.Unlock()
	s.Write(fmt.Appendf(nil, "%s %d", h.name, n))
}

func (h *countingHandler) Close(s session.Session, _ session.Reason) {
	h.mu.Lock()
	delete(h.counts, s)
	h.mu.Unlock()
}

func countingConfig(h session.Handler, addr netip.AddrPort, idle time.Duration) Config {
	return Config{
		Workers: 2, Logger: quietLogger(),
		Listeners: []ListenerConfig{{Name: "count", Address: addr, Handler: h, IdleTimeout: idle}},
	}
}

// startCounting serves a server with handler h on a loopback port until
// the test ends. The channel closes when Serve returns.
func startCounting(t *testing.T, h session.Handler, idle time.Duration) (*Server, <-chan struct{}) {
	t.Helper()
	srv, err := New(countingConfig(h, netip.MustParseAddrPort("127.0.0.1:0"), idle))
	if err != nil {
		t.Fatal(err)
	}
	return srv, startServer(t, srv)
}

// startServer serves srv until the test ends; the channel closes when Serve
// returns.
func startServer(t *testing.T, srv *Server) <-chan struct{} {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return within 10s of cancel")
		}
	})
	return done
}

// ask sends msg from c and returns the reply.
func ask(t *testing.T, c *net.UDPConn, msg string) string {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, 256)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("reply to %q: %v", msg, err)
	}
	return string(buf[:n])
}

func expectReply(t *testing.T, c *net.UDPConn, want string) {
	t.Helper()
	if got := ask(t, c, "x"); got != want {
		t.Fatalf("client %v: reply %q, want %q", c.LocalAddr(), got, want)
	}
}

func dupFD(t *testing.T, fd int) int {
	t.Helper()
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// handOver does in one process what cmd/udpmux does across two: freeze the
// owner, describe its listeners, relay and sessions (through the wire
// encoding), give a successor copies of the descriptors, build it, and let
// the owner drain.
func handOver(t *testing.T, owner *Server, cfg Config, drainTimeout time.Duration) *Server {
	t.Helper()
	if err := owner.freeze(context.Background()); err != nil {
		t.Fatal(err)
	}
	ls, fds := owner.handoffListeners()
	relays, err := owner.prepareRelays()
	if err != nil {
		owner.thaw()
		t.Fatal(err)
	}
	w := []byte{0, 0, 0, 0}
	n := 0
	es, err := owner.exportSessions(func(rec *handoff.Session, upstream int) error {
		if upstream >= 0 {
			return fmt.Errorf("session %v has a socket of its own", rec.Key)
		}
		rec.Upstream = -1
		n++
		w, err = handoff.AppendSession(w, rec)
		return err
	})
	if err != nil {
		owner.thaw()
		t.Fatal(err)
	}
	w[0], w[1] = byte(n), byte(n>>8)
	recs, err := handoff.DecodeSessions(w)
	if err != nil {
		owner.thaw()
		t.Fatal(err)
	}
	if es.Retained != n || es.Migrated != 0 || len(relays) != owner.Workers() {
		owner.thaw()
		t.Fatalf("export: %+v of %d records, %d relay sockets", es, n, len(relays))
	}
	inh := &Inheritance{sessions: recs}
	next := 0
	for _, l := range ls {
		il := inheritedListener{name: l.Name, addr: l.Address}
		for _, fd := range fds[next : next+l.Sockets] {
			il.fds = append(il.fds, dupFD(t, fd))
		}
		next += l.Sockets
		inh.listeners = append(inh.listeners, il)
	}
	for _, fd := range relays {
		inh.relays = append(inh.relays, dupFD(t, fd))
	}
	cfg.Inherit = inh
	succ, err := New(cfg)
	if err != nil {
		owner.thaw()
		t.Fatalf("successor: %v", err)
	}
	if r := succ.Restored(); r.Relayed != n || r.Restored != 0 || r.Dropped != 0 {
		t.Errorf("successor restored %+v, want %d relayed", r, n)
	}
	owner.beginDrain(drainTimeout)
	return succ
}

// TestRetainedSessionsStayWithTheOwner hands a server whose handler cannot
// export its sessions to a successor: those sessions go on being served by
// the owner's handler, relayed by the successor, until the drain timeout or
// their idle timeout ends them; then the owner stops, and the clients' next
// datagrams open sessions in the successor. New clients are the successor's
// from the start.
func TestRetainedSessionsStayWithTheOwner(t *testing.T) {
	tests := []struct {
		name                string
		ownerIdle, drain    time.Duration
		endedBy, endsInSucc string // close reasons in the owner and the successor
	}{
		{"drain timeout", time.Minute, 1500 * time.Millisecond, "shutdown", "closed"},
		{"idle timeout", 3 * time.Second, time.Minute, "idle", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ownerH := newCountingHandler("owner")
			owner, ownerDone := startCounting(t, ownerH, tc.ownerIdle)
			addr := owner.Addr(0)
			a := dial(t, "udp4", netip.AddrPort{}, addr)
			b := dial(t, "udp4", netip.AddrPort{}, addr)
			expectReply(t, a, "owner 1")
			expectReply(t, b, "owner 1")
			expectReply(t, a, "owner 2")

			succH := newCountingHandler("succ")
			succ := handOver(t, owner, countingConfig(succH, addr, time.Minute), tc.drain)
			startServer(t, succ)
			handedOver := time.Now()

			// The owner's handler still counts the retained sessions.
			expectReply(t, a, "owner 3")
			expectReply(t, b, "owner 2")
			// A new client is the successor's.
			c := dial(t, "udp4", netip.AddrPort{}, addr)
			expectReply(t, c, "succ 1")
			expectReply(t, a, "owner 4")
			// A loop counts after its syscall returns, which can be after
			// the client has its reply.
			waitFor(t, 5*time.Second, "successor counters: 3 relayed, 3 sessions (2 relay sessions, 1 new)", func() bool {
				st := succ.Stats().Listeners[0]
				return st.Relayed == 3 && st.RelayDrops == 0 && st.SessionsOpened == 3
			})
			waitFor(t, 5*time.Second, "owner counters: 3 relayed, 6 sent", func() bool {
				st := owner.Stats().Listeners[0]
				return st.Relayed == 3 && st.TxDatagrams == 3+3
			})

			select {
			case <-ownerDone:
			case <-time.After(10 * time.Second):
				t.Fatalf("owner still serving 10s after the handoff: %d sessions", owner.Stats().Sessions)
			}
			t.Logf("owner stopped %s after the handoff", time.Since(handedOver).Round(time.Millisecond))
			if st := owner.Stats().Listeners[0]; st.SessionsClosed[tc.endedBy] != 2 {
				t.Errorf("owner closed sessions %v, want 2 %s", st.SessionsClosed, tc.endedBy)
			}
			// The owner's notices end the relay sessions (unless they
			// expired in the successor at the same time).
			// A loop counts a close after the session has left the table.
			waitFor(t, 5*time.Second, "the relay sessions to end", func() bool {
				st := succ.Stats()
				return st.Sessions == 1 && (tc.endsInSucc == "" || st.Listeners[0].SessionsClosed[tc.endsInSucc] == 2)
			})
			// The retained clients start afresh in the successor.
			expectReply(t, a, "succ 1")
			expectReply(t, b, "succ 1")
			expectReply(t, c, "succ 2")
			succ.restart.relay.mu.Lock()
			closed := succ.restart.relay.closed
			succ.restart.relay.mu.Unlock()
			if !closed {
				t.Error("the successor's relay is still open with no relay session left")
			}
		})
	}
}

// TestRelayNotPreparedWithoutRetainedSessions: a handoff in which every
// session can move needs no relay, and Drain is Handover.
func TestRelayNotPreparedWithoutRetainedSessions(t *testing.T) {
	owner, err := New(Config{Workers: 2, Logger: quietLogger(), Listeners: []ListenerConfig{{
		Name: "echo", Address: netip.MustParseAddrPort("127.0.0.1:0"), Handler: session.Echo{},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	done := startServer(t, owner)
	a := dial(t, "udp4", netip.AddrPort{}, owner.Addr(0))
	roundTrip(t, a, []byte("x"))
	if err := owner.freeze(context.Background()); err != nil {
		t.Fatal(err)
	}
	relays, err := owner.prepareRelays()
	if err != nil || relays != nil {
		owner.thaw()
		t.Fatalf("relays %v, %v; want none", relays, err)
	}
	es, err := owner.exportSessions(func(rec *handoff.Session, _ int) error {
		if rec.Retained {
			return fmt.Errorf("echo session %v retained", rec.Key)
		}
		return nil
	})
	if err != nil || es.Migrated != 1 || es.Retained != 0 {
		owner.thaw()
		t.Fatalf("export %+v, %v", es, err)
	}
	owner.beginDrain(time.Minute)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Drain without retained sessions did not stop the server")
	}
	if st := owner.Stats().Listeners[0]; st.SessionsClosed["handoff"] != 1 {
		t.Errorf("closed %v, want 1 handoff", st.SessionsClosed)
	}
}

// TestThawClosesThePreparedRelay: a handoff that fails after the relay was
// made leaves the owner serving its sessions as before.
func TestThawClosesThePreparedRelay(t *testing.T) {
	owner, _ := startCounting(t, newCountingHandler("owner"), time.Minute)
	a := dial(t, "udp4", netip.AddrPort{}, owner.Addr(0))
	expectReply(t, a, "owner 1")
	if err := owner.freeze(context.Background()); err != nil {
		t.Fatal(err)
	}
	relays, err := owner.prepareRelays()
	if err != nil || len(relays) != 2 {
		owner.thaw()
		t.Fatalf("relays %v, %v", relays, err)
	}
	owner.thaw()
	if owner.restart.drain != nil {
		t.Error("Thaw kept the relay")
	}
	for _, fd := range relays {
		// Closed: the number is free again (or reused, which a test
		// running alone does not do between two lines).
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
			t.Errorf("relay descriptor %d still open after Thaw: %v", fd, err)
		}
	}
	expectReply(t, a, "owner 2")
}

// cidDissector keys a datagram by its first 8 bytes, a connection ID.
type cidDissector struct{}

func (cidDissector) Dissect(p []byte, _, _ netip.AddrPort, scope uint16) session.Dissection {
	if len(p) < 8 {
		return session.Dissection{Verdict: session.Drop}
	}
	k, err := flowtable.CIDKey(scope, p[:8])
	if err != nil {
		return session.Dissection{Verdict: session.Drop}
	}
	return session.Dissection{Key: k, Verdict: session.Create}
}

// roamingHandler is a countingHandler that follows its client anywhere, as
// a handler whose protocol authenticates every datagram may (QUIC's does).
type roamingHandler struct{ *countingHandler }

func (h roamingHandler) Roam(s session.Session, from netip.AddrPort, p []byte) {
	s.Move(from)
	h.Datagram(s, p)
}

// TestRelayFollowsAMovingClient: a retained connection-ID session whose
// client moves to another address is answered at the new one; the relay
// carries the address the successor saw, and the predecessor's handler
// decides to follow.
func TestRelayFollowsAMovingClient(t *testing.T) {
	cfg := func(h *countingHandler, addr netip.AddrPort) Config {
		c := countingConfig(roamingHandler{h}, addr, time.Minute)
		c.Listeners[0].Dissector = cidDissector{}
		return c
	}
	owner, err := New(cfg(newCountingHandler("owner"), netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	ownerDone := startServer(t, owner)
	addr := owner.Addr(0)
	before := dial(t, "udp4", netip.AddrPort{}, addr)
	if got := ask(t, before, "conn-id1"); got != "owner 1" {
		t.Fatalf("reply %q", got)
	}
	succ := handOver(t, owner, cfg(newCountingHandler("succ"), addr), 500*time.Millisecond)
	startServer(t, succ)
	after := dial(t, "udp4", netip.AddrPort{}, addr) // the client, from a new port
	if got := ask(t, after, "conn-id1"); got != "owner 2" {
		t.Fatalf("moved client: reply %q, want %q", got, "owner 2")
	}
	if got := ask(t, after, "conn-id2"); got != "succ 1" {
		t.Fatalf("new connection: reply %q, want %q", got, "succ 1")
	}
	select {
	case <-ownerDone:
	case <-time.After(10 * time.Second):
		t.Fatal("owner still serving")
	}
	waitFor(t, 5*time.Second, "the relay session to end", func() bool { return succ.Stats().Sessions == 1 })
	if got := ask(t, after, "conn-id1"); got != "succ 1" {
		t.Fatalf("after the drain: reply %q, want %q", got, "succ 1")
	}
}

// TestRetainedSessionsSurviveTwoRestarts: a successor that still relays
// sessions to its predecessor hands over again. Its relay sessions are
// retained in turn: the newest process relays to the middle one, which
// relays to the first; each end travels back the same way.
func TestRetainedSessionsSurviveTwoRestarts(t *testing.T) {
	first, firstDone := startCounting(t, newCountingHandler("first"), time.Minute)
	addr := first.Addr(0)
	a := dial(t, "udp4", netip.AddrPort{}, addr)
	expectReply(t, a, "first 1")

	second := handOver(t, first, countingConfig(newCountingHandler("second"), addr, time.Minute), 2*time.Second)
	secondDone := startServer(t, second)
	expectReply(t, a, "first 2")
	b := dial(t, "udp4", netip.AddrPort{}, addr)
	expectReply(t, b, "second 1")

	// The second's sessions, its own (b) and its relay session (a), are
	// all retained.
	third := handOver(t, second, countingConfig(newCountingHandler("third"), addr, time.Minute), 4*time.Second)
	startServer(t, third)
	expectReply(t, a, "first 3")
	expectReply(t, b, "second 2")
	c := dial(t, "udp4", netip.AddrPort{}, addr)
	expectReply(t, c, "third 1")

	// The first's drain timeout ends a: the notice goes first → second →
	// third, and a starts afresh in the third.
	select {
	case <-firstDone:
	case <-time.After(10 * time.Second):
		t.Fatal("first still serving")
	}
	waitFor(t, 5*time.Second, "a's relay sessions to end", func() bool {
		return second.Stats().Sessions == 1 && third.Stats().Sessions == 2
	})
	expectReply(t, a, "third 1")
	expectReply(t, b, "second 3")
	select {
	case <-secondDone:
	case <-time.After(10 * time.Second):
		t.Fatal("second still serving")
	}
	waitFor(t, 5*time.Second, "b's relay session to end", func() bool { return third.Stats().Sessions == 2 })
	expectReply(t, b, "third 1")
	expectReply(t, c, "third 2")
}

// TestFullRelayDropsWithoutBlocking: while the owner reads nothing (frozen),
// the successor relays until the socket is full, then drops and counts, and
// its loops go on serving everyone else.
func TestFullRelayDropsWithoutBlocking(t *testing.T) {
	owner, _ := startCounting(t, newCountingHandler("owner"), time.Minute)
	addr := owner.Addr(0)
	a := dial(t, "udp4", netip.AddrPort{}, addr)
	a.SetReadBuffer(8 << 20)
	expectReply(t, a, "owner 1")
	succ := handOver(t, owner, countingConfig(newCountingHandler("succ"), addr, time.Minute), time.Minute)
	startServer(t, succ)
	expectReply(t, a, "owner 2")

	if err := owner.freeze(context.Background()); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 60000)
	var relayed, dropped uint64
	for i := 0; i < 400 && dropped == 0; i++ {
		a.Write(big)
		if i%20 == 19 {
			time.Sleep(5 * time.Millisecond) // let the successor keep up with the client
			st := succ.Stats().Listeners[0]
			relayed, dropped = st.Relayed, st.RelayDrops
		}
	}
	waitFor(t, 5*time.Second, "relay drops", func() bool { return succ.Stats().Listeners[0].RelayDrops > 0 })
	c := dial(t, "udp4", netip.AddrPort{}, addr)
	expectReply(t, c, "succ 1")
	owner.thaw()
	t.Logf("relayed %d, dropped %d before the check", relayed, dropped)

	// The owner answers what reached it, then the next datagram.
	deadline := time.Now().Add(10 * time.Second)
	for owner.Stats().Listeners[0].Relayed != succ.Stats().Listeners[0].Relayed {
		if time.Now().After(deadline) {
			t.Fatalf("owner %+v\nsuccessor %+v", owner.Stats().Listeners[0], succ.Stats().Listeners[0])
		}
		time.Sleep(20 * time.Millisecond)
	}
	buf := make([]byte, 256)
	for {
		a.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := a.Read(buf); err != nil {
			break
		}
	}
	// The owner's handler had one datagram before the handoff and every
	// relayed one since; the next is one more.
	want := fmt.Sprintf("owner %d", 1+owner.Stats().Listeners[0].Relayed+1)
	expectReply(t, a, want)
}
