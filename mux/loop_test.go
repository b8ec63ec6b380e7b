//go:build linux

package mux

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// fakePoller is a loop's poller with no descriptor behind it: the test
// says what each Wait returns, and reads what the loop asked to watch.
type fakePoller struct {
	watched map[int]udpsys.Token
	waits   []fakeWait
	events  []udpsys.Event
	wakes   int
}

// fakeWait is what one Wait returns.
type fakeWait struct {
	events        []udpsys.Event
	woken, ticked bool
}

func (p *fakePoller) Add(fd int, t udpsys.Token) error {
	if p.watched == nil {
		p.watched = map[int]udpsys.Token{}
	}
	p.watched[fd] = t
	return nil
}
func (p *fakePoller) Set(fd int, t udpsys.Token, read, write bool) error { return p.Add(fd, t) }
func (p *fakePoller) Remove(fd int)                                      { delete(p.watched, fd) }
func (p *fakePoller) Event(i int) udpsys.Event                           { return p.events[i] }
func (p *fakePoller) Wake()                                              { p.wakes++ }
func (p *fakePoller) Close()                                             {}

func (p *fakePoller) Wait(bool) (int, bool, bool, error) {
	w := p.waits[0]
	p.waits = p.waits[1:]
	p.events = w.events
	return len(w.events), w.woken, w.ticked, nil
}

// loopRecorder records what its sessions get, and answers nothing.
type loopRecorder struct {
	opened, got []string
	closed      []session.Reason
}

func (h *loopRecorder) Open(s session.Session) error {
	h.opened = append(h.opened, s.PeerAddr().String())
	return nil
}
func (h *loopRecorder) Datagram(s session.Session, p []byte) {
	h.got = append(h.got, s.PeerAddr().String()+" "+string(p))
}
func (h *loopRecorder) Close(_ session.Session, r session.Reason) { h.closed = append(h.closed, r) }

// newFakeLoop returns a loop of a server with one listener of h and d at
// 192.0.2.1:9000, on a fake poller and a listener socket that is no
// descriptor: enough to route datagrams and serve events, with no socket.
func newFakeLoop(t *testing.T, h session.Handler, d session.Dissector) (*loop, *fakePoller) {
	t.Helper()
	cfg := Config{Workers: 1, Logger: quietLogger(), Listeners: []ListenerConfig{{
		Name: "fake", Address: netip.MustParseAddrPort("192.0.2.1:9000"), Handler: h, Dissector: d, IdleTimeout: time.Second,
	}}}
	if err := cfg.fill(1); err != nil {
		t.Fatal(err)
	}
	table, err := flowtable.New[*sess](flowtable.Config{Capacity: 64})
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{cfg: cfg, log: cfg.Logger, table: table, stopped: make(chan struct{})}
	ln := &listener{name: "fake", addr: cfg.Listeners[0].Address, handler: h, dissector: d, idle: time.Second}
	srv.listeners = []*listener{ln}
	p := &fakePoller{}
	l := newLoopWith(srv, 0, 0, p)
	srv.loops = []*loop{l}
	sock := &udpsys.Socket{FD: -1, Family: udpsys.FamilyIPv4, Local: ln.addr}
	if err := l.addSocket(ln, sock, true); err != nil {
		t.Fatal(err)
	}
	return l, p
}

// message is a received datagram p from peer.
func message(peer string, p string) udpsys.Message {
	return udpsys.Message{Buf: []byte(p), N: len(p), Addr: netip.MustParseAddrPort(peer)}
}

// TestRouteWithoutSockets: the loop's path of a datagram, dissector, flow
// table, session, handler, driven with no socket: a flow's first datagram
// opens its session, the next ones reach it, another peer gets its own, and
// a datagram the dissector drops reaches nothing.
func TestRouteWithoutSockets(t *testing.T) {
	h := &loopRecorder{}
	l, _ := newFakeLoop(t, h, dropEmpty{})
	ls := l.socks[0]
	for _, m := range []udpsys.Message{
		message("198.51.100.1:1000", "a"),
		message("198.51.100.1:1000", "b"),
		message("198.51.100.2:1000", "c"),
		message("198.51.100.2:1000", ""),
	} {
		l.dispatch(ls, &m)
	}
	if want := []string{"198.51.100.1:1000", "198.51.100.2:1000"}; !slices.Equal(h.opened, want) {
		t.Errorf("opened %q, want %q", h.opened, want)
	}
	if want := []string{"198.51.100.1:1000 a", "198.51.100.1:1000 b", "198.51.100.2:1000 c"}; !slices.Equal(h.got, want) {
		t.Errorf("delivered %q, want %q", h.got, want)
	}
	if st := l.srv.Stats(); st.Sessions != 2 || st.Listeners[0].Malformed != 1 || st.Listeners[0].RxDatagrams != 4 {
		t.Errorf("%d sessions, %d malformed, %d received", st.Sessions, st.Listeners[0].Malformed, st.Listeners[0].RxDatagrams)
	}
}

// dropEmpty is the 4-tuple dissector, which drops empty datagrams.
type dropEmpty struct{}

func (dropEmpty) Dissect(p []byte, local, peer netip.AddrPort, scope uint16) session.Dissection {
	if len(p) == 0 {
		return session.Dissection{Verdict: session.Drop}
	}
	return session.Flow{}.Dissect(p, local, peer, scope)
}

// TestEventsWithoutSockets: what the loop does with what its poller
// reports, with no descriptor behind it: a wake-up serves the closes asked
// for from elsewhere; an event of a session's socket slot freed earlier in
// the same wake-up is ignored; a tick sweeps the table, ending idle
// sessions.
func TestEventsWithoutSockets(t *testing.T) {
	h := &loopRecorder{}
	l, p := newFakeLoop(t, h, dropEmpty{})
	ls := l.socks[0]
	if tok := p.watched[-1]; tok != (udpsys.Token{Kind: tokenSocket}) {
		t.Fatalf("the listener socket is watched as %+v", tok)
	}
	l.now = clock() - int64(10*time.Second) // the sessions' idle timeouts have passed
	for _, peer := range []string{"198.51.100.1:1000", "198.51.100.2:1000"} {
		m := message(peer, "x")
		l.dispatch(ls, &m)
	}
	var first *sess
	l.srv.eachSession(func(s *sess) bool {
		if s.PeerAddr().String() == "198.51.100.1:1000" {
			first = s
		}
		return true
	})
	first.Close() // from anywhere: a request and a wake-up
	if p.wakes != 1 {
		t.Fatalf("%d wake-ups for a close", p.wakes)
	}
	p.waits = []fakeWait{
		{woken: true, events: []udpsys.Event{{Token: udpsys.Token{Kind: tokenUpstream, Index: 0}, Readable: true}}},
	}
	l.upstreams = []*socket{nil} // a slot freed earlier in the wake-up
	if err := l.serveEvents(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(h.closed, []session.Reason{session.ReasonClosed}) || l.srv.Stats().Sessions != 1 {
		t.Fatalf("after the wake-up: closed %v, %d sessions", h.closed, l.srv.Stats().Sessions)
	}
	// Ticks sweep a share of the table each; the last session, idle past
	// its timeout, ends within a full round of them.
	for range sweepTicks * l.srv.table.Shards() {
		p.waits = append(p.waits, fakeWait{ticked: true})
	}
	for len(p.waits) > 0 && l.srv.Stats().Sessions > 0 {
		if err := l.serveEvents(); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(h.closed, []session.Reason{session.ReasonClosed, session.ReasonIdle}) {
		t.Errorf("closed %v, want the idle session ended by the sweep", h.closed)
	}
}
