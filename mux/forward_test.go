//go:build linux

package mux

import (
	"context"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// recordingHandler remembers, per session, the datagrams it got and on which
// loop, and why sessions closed.
type recordingHandler struct {
	mu      sync.Mutex
	got     map[netip.AddrPort][]string
	loops   map[int]int
	reasons map[session.Reason]int
}

func newRecordingHandler() *recordingHandler {
	return &recordingHandler{got: map[netip.AddrPort][]string{}, loops: map[int]int{}, reasons: map[session.Reason]int{}}
}

func (h *recordingHandler) Open(session.Session) error { return nil }
func (h *recordingHandler) Datagram(s session.Session, p []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.got[s.PeerAddr()] = append(h.got[s.PeerAddr()], string(p))
	h.loops[s.Stats().Loop]++
}
func (h *recordingHandler) Close(_ session.Session, r session.Reason) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reasons[r]++
}

// TestDatagramsForAnotherLoopsSessionArriveInOrder hands loop 1 datagrams
// of a session loop 0 owns — more than an inbox holds, so some must wait in
// loop 1's deferred list — and checks that loop 0's handler gets every one,
// in order, on loop 0.
func TestDatagramsForAnotherLoopsSessionArriveInOrder(t *testing.T) {
	h := newRecordingHandler()
	cfg := echoConfig("127.0.0.1:0", 2)
	cfg.Listeners[0].Handler = h
	cfg.Logger = quietLogger()
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l0, l1 := srv.loops[0], srv.loops[1]
	peer := netip.MustParseAddrPort("127.0.0.9:4000")
	msg := func(i int) *udpsys.Message {
		b := make([]byte, 1500) // 5000 × 1200 bytes is more than an outbox holds
		n := copy(b, []byte{byte(i >> 8), byte(i)})
		return &udpsys.Message{Buf: b, N: max(n, 1200), Addr: peer}
	}
	// The first datagram arrives at loop 0, which creates the session.
	l0.now = clock()
	l0.dispatch(l0.socks[0], msg(0))
	const n = 5000
	l1.now = clock()
	for i := 1; i < n; i++ {
		l1.dispatch(l1.socks[0], msg(i))
	}
	if len(l1.deferred) == 0 {
		t.Fatal("no datagram was deferred: the test did not fill an inbox")
	}
	// Run both loops: loop 0 drains its inbox, loop 1 retries its deferred
	// datagrams as room appears.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	l1.signal()
	waitFor(t, 10*time.Second, "every datagram delivered", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.got[peer]) == n
	})
	cancel()
	<-done
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, p := range h.got[peer] {
		if got := int(p[0])<<8 | int(p[1]); got != i {
			t.Fatalf("datagram %d arrived as number %d: order lost", got, i)
		}
	}
	if h.loops[1] != 0 || h.loops[0] != n {
		t.Errorf("handler ran %d times on loop 0 and %d on loop 1; want all on the owner, loop 0", h.loops[0], h.loops[1])
	}
	st := srv.Stats().Listeners[0]
	if st.Forwarded != n-1 || st.ForwardDrops != 0 {
		t.Errorf("forwarded %d, dropped %d; want %d and 0", st.Forwarded, st.ForwardDrops, n-1)
	}
	if h.reasons[session.ReasonShutdown] != 1 {
		t.Errorf("close reasons %v, want one shutdown", h.reasons)
	}
}

func TestInboxWrapsAndRefusesWhenFull(t *testing.T) {
	q, o := newInbox(), newOutbox()
	var inflight *outRecord
	s := &sess{}
	big := make([]byte, 60000)
	pushed := 0
	for o.send(q, s, netip.AddrPort{}, big) {
		pushed++
	}
	if want := outboxBytes / len(big); pushed != want {
		t.Fatalf("pushed %d datagrams of %d bytes into %d bytes, want %d", pushed, len(big), outboxBytes, want)
	}
	drained := 0
	q.drain(func(_ *sess, _ netip.AddrPort, p []byte) { drained++ }, &inflight)
	if drained != pushed {
		t.Fatalf("drained %d of %d", drained, pushed)
	}
	// Many rounds of odd sizes wrap the ring.
	for round := 0; round < 200; round++ {
		size := 2 + round*331%9000
		for i := 0; i < 50; i++ {
			p := make([]byte, size)
			p[0], p[size-1] = byte(round), byte(i)
			if !o.send(q, s, netip.AddrPort{}, p) {
				t.Fatalf("round %d: push %d of %d bytes refused into an empty ring", round, i, size)
			}
		}
		i := 0
		q.drain(func(_ *sess, _ netip.AddrPort, p []byte) {
			if len(p) != size || p[0] != byte(round) || p[size-1] != byte(i) {
				t.Fatalf("round %d datagram %d corrupted", round, i)
			}
			i++
		}, &inflight)
		if i != 50 {
			t.Fatalf("round %d: drained %d of 50", round, i)
		}
	}
	// The descriptor queue fills before a ring of small datagrams does.
	q2 := newInbox()
	n := 0
	for o.send(q2, s, netip.AddrPort{}, []byte{1}) {
		n++
	}
	if n != min(inboxSlots, outboxRecord) {
		t.Fatalf("queued %d one-byte datagrams; want %d", n, min(inboxSlots, outboxRecord))
	}
}

// TestInboxManyProducers: loops forward to one loop at once, and the bytes
// of each stay theirs until that loop released them, in whatever order
// the loops' datagrams reach it.
func TestInboxManyProducers(t *testing.T) {
	const producers, each = 4, 20000
	q := newInbox()
	var wg sync.WaitGroup
	for id := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := newOutbox()
			s := &sess{}
			for i := 0; i < each; {
				p := make([]byte, 2+i%1500)
				p[0], p[len(p)-1] = byte(id), byte(i)
				if o.send(q, s, netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(id)), p) {
					i++
				} else {
					runtime.Gosched() // full: the consumer catches up
				}
			}
		}()
	}
	next := make([]int, producers)
	var inflight *outRecord
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	check := func(_ *sess, peer netip.AddrPort, p []byte) {
		id := int(peer.Port())
		i := next[id]
		if len(p) != 2+i%1500 || p[0] != byte(id) || p[len(p)-1] != byte(i) {
			t.Fatalf("producer %d datagram %d: %d bytes, corrupted or out of order", id, i, len(p))
		}
		next[id]++
	}
	for {
		q.drain(check, &inflight)
		select {
		case <-done:
			q.drain(check, &inflight)
			for id, n := range next {
				if n != each {
					t.Errorf("producer %d: %d of %d datagrams arrived", id, n, each)
				}
			}
			return
		default:
			runtime.Gosched()
		}
	}
}
