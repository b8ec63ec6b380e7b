//go:build linux

package mux

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// A session may own sockets (a proxy's upstream sockets to its backend),
// which its loop watches beside the listener sockets: their datagrams lead
// straight to the session, with no lookup. The first one still open is the
// session's socket in a restart; a proxy opens more for a while to confirm
// a client's new address with the backend, or to ask backends which one
// has a session nobody here knew. The engine opens and closes them; a
// handler sees a session.Socket.

// socket is a socket of a session's (session.Socket), in its loop's poller
// under slot.
type socket struct {
	s             *sess
	fd            int
	slot          int32
	local, remote netip.AddrPort
	// gone is set once the loop stopped watching it: Write fails, and what
	// was queued for it is dropped. closed is set once its descriptor is
	// closed.
	gone, closed bool
	// sourced is set while it holds pair in the server's sources: it
	// sends from an address not the host's.
	sourced bool
	pair    sourcePair
	// blocked is set while the send buffer is full (send.go); waiting
	// holds copies of what waits for room, waitBytes their size.
	blocked   bool
	waiting   [][]byte
	waitBytes int
	drops     dropCounter
}

func (k *socket) LocalAddr() netip.AddrPort  { return k.local }
func (k *socket) RemoteAddr() netip.AddrPort { return k.remote }

func (k *socket) Write(p []byte) (int, error) {
	if k.gone || k.s.closed.Load() {
		return 0, session.ErrClosed
	}
	if err := k.s.loop.sendUpstream(k, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (k *socket) Close() error {
	k.s.loop.detach(k)
	return k.close()
}

// close closes k's descriptor, once; the loop must have stopped watching
// it.
func (k *socket) close() error {
	if k.closed {
		return nil
	}
	k.closed = true
	if k.sourced {
		k.s.loop.srv.sources.release(k.pair)
	}
	return udpsys.Close(k.fd)
}

// dropCounter follows one socket's cumulative SO_RXQ_OVFL counter, which
// is 32 bits wide and wraps: only the uint32 difference from the previous
// report counts. The kernel reports it only once it is non-zero, so the
// base of a socket this process opened is 0; one inherited from a
// predecessor has an unknown base, which its first report sets (drops before
// that were the predecessor's to count).
type dropCounter struct {
	last  uint32
	known bool
}

// growth returns by how much the counter grew since the last report.
func (d *dropCounter) growth(v uint32) uint64 {
	if !d.known {
		d.last, d.known = v, true
		return 0
	}
	g := uint64(v - d.last)
	d.last = v
	return g
}

var errNotUpstream = errors.New("session: dial: the handler does not implement session.UpstreamHandler")

// dial opens a socket of s's connected to addr (Session.Dial).
func (l *loop) dial(s *sess, addr netip.AddrPort, opts session.DialOptions) (*socket, error) {
	if s.closed.Load() {
		return nil, fmt.Errorf("dial %s: %w", addr, session.ErrClosed)
	}
	if _, ok := s.handler.(session.UpstreamHandler); !ok {
		return nil, fmt.Errorf("%w (%T)", errNotUpstream, s.handler)
	}
	var pair sourcePair
	if opts.Source.IsValid() {
		pair = sourcePair{unmapped(opts.Source), unmapped(addr)}
		if !l.srv.sources.take(pair) {
			return nil, fmt.Errorf("dial %s from %s: %w", addr, opts.Source, session.ErrSourceInUse)
		}
	}
	sock, err := udpsys.DialUDP(addr, udpsys.ListenConfig{RecvBuffer: opts.RecvBuffer, SendBuffer: opts.SendBuffer, Source: opts.Source})
	if err == nil {
		var k *socket
		if k, err = l.attach(s, sock); err == nil {
			k.sourced, k.pair = opts.Source.IsValid(), pair
			return k, nil
		}
		sock.Close()
	}
	if opts.Source.IsValid() {
		l.srv.sources.release(pair)
	}
	return nil, fmt.Errorf("dial %s: %w", addr, err)
}

// adoptUpstream makes fd, a session's socket inherited from a predecessor
// process, s's socket; on failure fd is closed.
func (l *loop) adoptUpstream(s *sess, fd int) (*socket, error) {
	sock, err := udpsys.SocketFromFD(fd)
	if err == nil {
		var k *socket
		if k, err = l.attach(s, sock); err == nil {
			// A transparent socket holds its pair here too, for the dials
			// to come; the predecessor's held each pair once.
			k.pair = sourcePair{k.local, k.remote}
			k.sourced = sock.Transparent && l.srv.sources.take(k.pair)
			return k, nil
		}
	}
	udpsys.Close(fd)
	return nil, fmt.Errorf("its upstream socket: %w", err)
}

// attach makes sock one of s's sockets, in this loop's poller under a slot
// that leads straight back to it.
func (l *loop) attach(s *sess, sock *udpsys.Socket) (*socket, error) {
	if _, ok := s.handler.(session.UpstreamHandler); !ok {
		return nil, fmt.Errorf("%w (%T)", errNotUpstream, s.handler)
	}
	fd := sock.FD
	var slot int32
	if n := len(l.freeSlots); n > 0 {
		slot, l.freeSlots = l.freeSlots[n-1], l.freeSlots[:n-1]
	} else {
		slot = int32(len(l.upstreams))
		l.upstreams = append(l.upstreams, nil)
	}
	if err := l.poll.Add(fd, udpsys.Token{Kind: tokenUpstream, Index: slot}); err != nil {
		l.freeSlots = append(l.freeSlots, slot)
		return nil, err
	}
	l.enableGRO(fd)
	// A socket attached while sessions are restored is the predecessor's.
	k := &socket{s: s, fd: fd, slot: slot, local: sock.Local, remote: sock.Remote, drops: dropCounter{known: l.srv.restart.inherit == nil}}
	l.upstreams[slot] = k
	if s.upstream.Load() == nil {
		s.upstream.Store(k)
	} else {
		l.extras[s] = append(l.extras[s], k)
	}
	return k, nil
}

// detach makes the loop stop watching k. When k is its session's socket
// for a restart, the oldest of the session's others, if any, takes its
// place.
func (l *loop) detach(k *socket) {
	if k.gone {
		return
	}
	s := k.s
	l.unwatch(k)
	if s.upstream.Load() == k {
		var next *socket
		if ex := l.extras[s]; len(ex) > 0 {
			next = ex[0]
			l.dropExtra(s, 0)
		}
		s.upstream.Store(next)
		l.restart.socketChanged(s)
		return
	}
	for i, x := range l.extras[s] {
		if x == k {
			l.dropExtra(s, i)
			return
		}
	}
}

// dropExtra forgets the i-th of s's further sockets.
func (l *loop) dropExtra(s *sess, i int) {
	ex := append(l.extras[s][:i], l.extras[s][i+1:]...)
	if len(ex) == 0 {
		delete(l.extras, s)
		return
	}
	l.extras[s] = ex
}

// unwatch frees k's slot and stops watching it, once what the handler
// wrote to it in this batch has gone out: a session that writes and then
// ends or detaches loses nothing it wrote, unless it waited for room in the
// send buffer, which is dropped and counted.
func (l *loop) unwatch(k *socket) {
	if !l.up.flushing && l.queuedFor(k) {
		l.flushUpstream()
	}
	if len(k.waiting) > 0 {
		l.socks[k.s.scope].stats.upstreamSendDrops.add(uint64(len(k.waiting)))
	}
	l.poll.Remove(k.fd)
	l.upstreams[k.slot] = nil
	l.freeSlots = append(l.freeSlots, k.slot)
	k.gone, k.waiting = true, nil
}

// queuedFor reports whether the loop's batch holds datagrams for k.
func (l *loop) queuedFor(k *socket) bool {
	for _, d := range l.up.dst[:l.up.n] {
		if d == k {
			return true
		}
	}
	return false
}

// detachAll stops watching every socket of s's and returns them, to be
// closed (closeAll) once the handler is done with them.
func (l *loop) detachAll(s *sess) []*socket {
	var all []*socket
	if k := s.upstream.Load(); k != nil {
		l.unwatch(k)
		s.upstream.Store(nil)
		all = append(all, k)
	}
	for _, k := range l.extras[s] {
		l.unwatch(k)
		all = append(all, k)
	}
	delete(l.extras, s)
	return all
}

// closeAll closes socks, which the loop no longer watches.
func closeAll(socks []*socket) {
	for _, k := range socks {
		k.close()
	}
}

// upstreamReady serves an event of a session's socket: room to send what
// waited for it, datagrams (or an error) to read.
func (l *loop) upstreamReady(ev udpsys.Event) {
	k := l.upstreams[ev.Token.Index]
	if k == nil {
		return // stale: the slot was freed earlier in the same wakeup
	}
	if ev.Writable && k.blocked {
		l.unpark(k)
	}
	if ev.Readable {
		l.readUpstream(k)
	}
}

// readUpstream reads one of a session's sockets and passes its datagrams to
// the handler.
func (l *loop) readUpstream(k *socket) {
	s := k.s
	h := s.handler.(session.UpstreamHandler)
	ls := l.socks[s.scope]
	l.restart.note(s) // its replies count as the session's traffic
	l.current = s
	defer func() { l.current = nil }()
	for round := 0; round < readRounds && !k.gone; round++ {
		n, err := l.rx.Recv(k.fd)
		if err != nil {
			switch err {
			case udpsys.ErrAgain, udpsys.ErrInterrupted:
			case udpsys.ErrRefused:
				h.UpstreamError(s, k, errRefused)
			default:
				h.UpstreamError(s, k, err)
			}
			return
		}
		l.countKernelDrops(&k.drops, &ls.stats.upstreamKernelDrops)
		grams := l.rx.Datagrams(n)
		if len(grams) > n {
			ls.stats.upstreamCoalesced.add(uint64(len(grams)))
		}
		for i := 0; i < len(grams) && !s.closed.Load() && !k.gone; i++ {
			m := &grams[i]
			ls.stats.upstreamRx.inc()
			if m.Truncated {
				ls.stats.truncated.inc()
				continue
			}
			h.Upstream(s, k, m.Buf[:m.N])
		}
		if n < l.rx.Len() {
			return
		}
	}
}

// errRefused is ECONNREFUSED as a session.Socket reports it.
var errRefused = fmt.Errorf("%w (%w)", session.ErrRefused, udpsys.ErrRefused)

var _ session.Socket = (*socket)(nil)
