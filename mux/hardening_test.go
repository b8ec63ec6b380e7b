//go:build linux

package mux

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// panickyHandler echoes, but panics on "boom" in Datagram and, for a session
// whose first datagram was "boom-close", in Close too.
type panickyHandler struct {
	mu     sync.Mutex
	closed map[netip.AddrPort]session.Reason
}

func (h *panickyHandler) Open(s session.Session) error { return nil }
func (h *panickyHandler) Datagram(s session.Session, p []byte) {
	switch string(p) {
	case "boom":
		panic("boom")
	case "boom-close":
		s.SetState("panic in close")
		panic("boom")
	}
	s.Write(p)
}
func (h *panickyHandler) Close(s session.Session, r session.Reason) {
	h.mu.Lock()
	h.closed[s.PeerAddr()] = r
	h.mu.Unlock()
	if s.State() != nil {
		panic("close")
	}
}

// syncBuffer is a log sink the test reads while the server writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestHandlerPanicEndsOnlyItsSession: a handler that panics loses the
// session it served (ReasonError), is counted and logged with its stack
// once, and every other session, and the rest of the receive batch, goes on.
func TestHandlerPanicEndsOnlyItsSession(t *testing.T) {
	h := &panickyHandler{closed: map[netip.AddrPort]session.Reason{}}
	var logs syncBuffer
	cfg := echoConfig("127.0.0.1:0", 1)
	cfg.Listeners[0].Handler = h
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	srv := serve(t, cfg)
	good := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	bad := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	worse := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	roundTrip(t, good, []byte("before"))
	roundTrip(t, bad, []byte("before"))
	badAddr := netip.MustParseAddrPort(bad.LocalAddr().String())
	worseAddr := netip.MustParseAddrPort(worse.LocalAddr().String())
	bad.Write([]byte("boom"))
	worse.Write([]byte("boom-close"))
	roundTrip(t, good, []byte("after")) // same loop, later batch
	waitFor(t, 5*time.Second, "both panicking sessions closed", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.closed[badAddr] == session.ReasonError && h.closed[worseAddr] == session.ReasonError
	})
	if n := srv.Stats().HandlerPanics; n != 3 {
		t.Errorf("HandlerPanics = %d; want 3 (two in Datagram, one in Close)", n)
	}
	roundTrip(t, bad, []byte("again")) // a new session for the same client
	out := logs.String()
	if strings.Count(out, "handler panicked") != 1 || !strings.Contains(out, "stack=") {
		t.Errorf("want the first panic logged once, with its stack; logs:\n%s", out)
	}
}

// openPanics panics in Open for a first datagram "boom", and echoes.
type openPanics struct {
	session.Echo
	mu     sync.Mutex
	closes int
}

func (h *openPanics) OpenDatagram(s session.Session, p []byte) error {
	if string(p) == "boom" {
		panic("boom in open")
	}
	return nil
}

func (h *openPanics) Close(session.Session, session.Reason) {
	h.mu.Lock()
	h.closes++
	h.mu.Unlock()
}

// TestOpenPanicRefusesTheSession: a handler whose Open panics refuses the
// session, as an error would: no Close for a session that never opened,
// and the count of live sessions stays true.
func TestOpenPanicRefusesTheSession(t *testing.T) {
	h := &openPanics{}
	cfg := echoConfig("127.0.0.1:0", 1)
	cfg.Listeners[0].Handler = h
	cfg.Logger = quietLogger()
	srv := serve(t, cfg)
	bad := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	good := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	bad.Write([]byte("boom"))
	roundTrip(t, good, []byte("after"))
	waitFor(t, 5*time.Second, "the panic counted", func() bool { return srv.Stats().HandlerPanics == 1 })
	st := srv.Stats()
	if st.Sessions != 1 || st.Listeners[0].RefusedOpen != 1 || st.Keys != 1 {
		t.Errorf("%d sessions, %d refused, %d keys; want the good one, the panicking one refused", st.Sessions, st.Listeners[0].RefusedOpen, st.Keys)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closes != 0 {
		t.Errorf("Close ran %d times for a session that never opened", h.closes)
	}
}

// sometimesStateless hands datagrams that start with "s" over without a
// session.
type sometimesStateless struct{}

func (sometimesStateless) Dissect(p []byte, local, peer netip.AddrPort, scope uint16) session.Dissection {
	if len(p) > 0 && p[0] == 's' {
		return session.Dissection{Verdict: session.Stateless}
	}
	return session.Flow{}.Dissect(p, local, peer, scope)
}

// statefulEcho echoes through its session's state, which a stateless
// datagram would not have.
type statefulEcho struct{}

func (statefulEcho) Open(s session.Session) error          { s.SetState(s); return nil }
func (statefulEcho) Datagram(s session.Session, p []byte)  { s.State().(*sess).Write(p) }
func (statefulEcho) Close(session.Session, session.Reason) {}

// TestStatelessDatagramsNeverReachASessionHandler: a dissector's stateless
// verdict for a handler that serves sessions only drops and counts the
// datagram; the engine never hands it to the handler without a session.
func TestStatelessDatagramsNeverReachASessionHandler(t *testing.T) {
	cfg := echoConfig("127.0.0.1:0", 1)
	cfg.Listeners[0].Handler = statefulEcho{}
	cfg.Listeners[0].Dissector = sometimesStateless{}
	srv := serve(t, cfg)
	c := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	c.Write([]byte("stateless"))
	roundTrip(t, c, []byte("x"))
	st := srv.Stats()
	if st.Listeners[0].StatelessDrops != 1 || st.HandlerPanics != 0 {
		t.Errorf("StatelessDrops %d, HandlerPanics %d; want 1 and 0", st.Listeners[0].StatelessDrops, st.HandlerPanics)
	}
}

// refusingEcho echoes, but refuses sessions from 127.0.0.7 after asking
// to close them, which must not make their Close run.
type refusingEcho struct{ closes atomic.Int32 }

func (h *refusingEcho) Open(s session.Session) error {
	if s.PeerAddr().Addr() == netip.MustParseAddr("127.0.0.7") {
		s.Close()
		return errors.New("refused")
	}
	return nil
}
func (h *refusingEcho) Datagram(s session.Session, p []byte)  { s.Write(p) }
func (h *refusingEcho) Close(session.Session, session.Reason) { h.closes.Add(1) }

// TestRefusedSessionIsNeverClosed: a session its handler's Open refuses has
// ended, even if Open closed it first: Close does not run and the live
// sessions are not miscounted.
func TestRefusedSessionIsNeverClosed(t *testing.T) {
	h := &refusingEcho{}
	cfg := echoConfig("127.0.0.1:0", 1)
	cfg.Listeners[0].Handler = h
	srv := serve(t, cfg)
	dial(t, "udp4", netip.MustParseAddrPort("127.0.0.7:0"), srv.Addr(0)).Write([]byte("x"))
	// The close the refused Open asked for is served by the loop's wakeup
	// after the batch that read it, before the second round trip's batch.
	c := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	roundTrip(t, c, []byte("1"))
	roundTrip(t, c, []byte("2"))
	st := srv.Stats()
	if n := h.closes.Load(); n != 0 || st.Sessions != 1 || st.Listeners[0].RefusedOpen != 1 {
		t.Errorf("Close ran %d times, %d live sessions, %d refused; want 0, 1, 1", n, st.Sessions, st.Listeners[0].RefusedOpen)
	}
}

func TestListenRefusesNoop(t *testing.T) {
	lc := ListenConfig{Dissector: session.Noop{}, Logger: quietLogger()}
	ln, err := lc.Listen(context.Background(), "udp", "127.0.0.1:0")
	if err == nil {
		ln.Close()
		t.Fatal("Listen with a stateless dissector succeeded: its Conns need sessions")
	}
	if !strings.Contains(err.Error(), "noop hands every datagram over without a session") {
		t.Errorf("error %q does not say why", err)
	}
}

// failingPoller is a loop's poller whose waits fail once failing is set.
type failingPoller struct {
	poller
	failing atomic.Bool
}

func (p *failingPoller) Wait(soon bool) (int, bool, bool, error) {
	if p.failing.Load() {
		return 0, false, false, unix.EBADF
	}
	return p.poller.Wait(soon)
}

// TestDeadLoopStopsTheServer: a loop whose wait fails stops the whole
// server, and Serve returns the error.
func TestDeadLoopStopsTheServer(t *testing.T) {
	cfg := echoConfig("127.0.0.1:0", 2)
	cfg.Logger = quietLogger()
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := &failingPoller{poller: srv.loops[1].poll}
	srv.loops[1].poll = p
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background()) }()
	p.failing.Store(true) // its next wait fails
	p.Wake()
	select {
	case err := <-served:
		if err == nil || !strings.Contains(err.Error(), "loop 1: epoll_wait") {
			t.Fatalf("Serve returned %v; want loop 1's epoll_wait error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after a loop died")
	}
	if err := srv.freeze(context.Background()); err == nil {
		t.Error("Freeze of a stopped server succeeded")
	}
}

// blockingHandler blocks in Datagram until release is closed.
type blockingHandler struct {
	session.Echo
	entered chan struct{}
	release chan struct{}
}

func (h *blockingHandler) Datagram(s session.Session, p []byte) {
	if string(p) == "block" {
		close(h.entered)
		<-h.release
	}
	s.Write(p)
}

// TestFreezeIsBounded: Freeze gives up on a loop that does not pause in
// time and leaves the server serving.
func TestFreezeIsBounded(t *testing.T) {
	h := &blockingHandler{entered: make(chan struct{}), release: make(chan struct{})}
	cfg := echoConfig("127.0.0.1:0", 1)
	cfg.Listeners[0].Handler = h
	srv := serve(t, cfg)
	c := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	c.Write([]byte("block"))
	<-h.entered
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := srv.freeze(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Freeze = %v; want a deadline error", err)
	}
	close(h.release)
	buf := make([]byte, 16)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "block" {
		t.Fatalf("reply to the blocked datagram: %q, %v", buf[:n], err)
	}
	roundTrip(t, c, []byte("serving on"))
}

// TestConnWriteAfterCloseFails: a Conn whose listener has closed refuses to
// write: its session ended with the loops, which sent what was written
// before.
func TestConnWriteAfterCloseFails(t *testing.T) {
	ln := listen(t, ListenConfig{Workers: 1})
	c := dial(t, "udp4", netip.AddrPort{}, netip.MustParseAddrPort(ln.Addr().String()))
	c.Write([]byte("hi"))
	conn := accept(t, ln)
	ln.Close()
	_, err := conn.Write([]byte("late"))
	var op *net.OpError
	if !errors.Is(err, io.ErrClosedPipe) || !errors.As(err, &op) || op.Op != "write" {
		t.Fatalf("Write after the listener closed: %v, want io.ErrClosedPipe in a write *net.OpError", err)
	}
}

// TestFullSendBufferWaitsForEPOLLOUT: a listener socket whose send buffer is
// full keeps its replies and sends them when the kernel reports room, and
// the loop never waits for it. The socket here is a Unix datagram pair,
// whose send blocks while its peer's queue is full, standing in for a UDP
// socket behind a slow link.
func TestFullSendBufferWaitsForEPOLLOUT(t *testing.T) {
	cfg := echoConfig("127.0.0.1:0", 1)
	cfg.Logger = quietLogger()
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	l := srv.loops[0]
	ls := l.socks[0]
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	l.poll.Remove(ls.sock.FD)
	unix.Close(ls.sock.FD)
	ls.sock.FD, ls.sock.Wildcard = fds[0], false
	if err := l.poll.Add(ls.sock.FD, udpsys.Token{Kind: tokenSocket}); err != nil {
		t.Fatal(err)
	}
	ls.tx = udpsys.NewBatch(8, 2048, unix.AF_INET) // small, and no UDP segmentation on a Unix socket
	filler := 0
	for unix.Send(fds[0], []byte("filler"), 0) == nil {
		filler++
	}
	key := flowtable.TupleKey(0, netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.1:2"))
	s := newSess(sessConfig{key: key, loop: l, handler: session.Echo{}, idle: time.Minute})
	s.setPeer(netip.AddrPort{}) // a connected pair takes no address
	for _, p := range []string{"one", "two", "three"} {
		s.Write([]byte(p))
	}
	l.flush(ls)
	if !ls.blocked || ls.ntx != 3 {
		t.Fatalf("after a full send buffer: blocked %v, %d waiting; want true, 3", ls.blocked, ls.ntx)
	}
	for i := 0; i < 20; i++ {
		s.Write([]byte("more"))
	}
	if ls.ntx != len(ls.tx.Msgs) || ls.stats.sendDrops.load() != uint64(23-len(ls.tx.Msgs)) {
		t.Fatalf("%d waiting, %d dropped; want a full batch waiting and the rest dropped", ls.ntx, ls.stats.sendDrops.load())
	}
	buf := make([]byte, 64)
	for range filler {
		unix.Read(fds[1], buf)
	}
	l.now = clock()
	if err := l.serveEvents(); err != nil {
		t.Fatal(err)
	}
	if ls.blocked || ls.ntx != 0 {
		t.Fatalf("after EPOLLOUT: blocked %v, %d waiting", ls.blocked, ls.ntx)
	}
	var got []string
	for {
		n, err := unix.Read(fds[1], buf)
		if err != nil {
			break
		}
		got = append(got, string(buf[:n]))
	}
	if len(got) != len(ls.tx.Msgs) || got[0] != "one" || got[1] != "two" || got[2] != "three" {
		t.Fatalf("sent after EPOLLOUT: %q", got)
	}
}

var _ net.Conn = (*Conn)(nil)
