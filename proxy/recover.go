//go:build linux

package proxy

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/udpmux/udpmux/internal/rate"
	"github.com/udpmux/udpmux/session"
)

// A tunnel whose udpmux crashed, or whose flows the network moved to
// another host, keeps sending: a WireGuard transport message, an OpenVPN
// data packet, under an ID its backend chose and no process here knows.
// Which backend has it? Only the backend can tell, so the proxy asks: the
// datagram goes to several backends (Fanout), each on a socket of its own,
// and the session is adopted where a backend proves it has it. A WireGuard
// or OpenVPN backend authenticates the datagram, follows the client to the
// socket that asked, and sends the client's next datagrams there; the
// session's Track (Recovers) takes a run of them in sequence as the proof,
// which a forger would have to land on that socket's port. The other
// sockets close, and the session goes on as if it had opened on that
// backend: its IDs are learned again from the next datagrams. Datagrams
// that create a session by a stable identity (a WireGuard client's static
// key, an OpenVPN client's session ID, a QUIC server ID) need no asking:
// they route as their session first did. A drained backend is asked as
// any healthy one: its sessions live on, and a recovery looks for one of
// them; a retired backend (no longer configured) is not, since a udpmux
// that crashed knew nothing of it either.
//
// Recoveries cost the backends datagrams and the proxy sockets, so they
// are rationed: per second in all and per client address, Fanout sockets
// each, a budget of sockets for all, and a deadline (Timeout) by which a
// session no backend proved is closed; a new recovery that finds the budget
// spent takes the place of its event loop's oldest recovering session past
// its deadline.

// Defaults of RecoveryConfig.
const (
	DefaultRecoveryRate          = 2000
	DefaultRecoveryRatePerSource = 20
	DefaultRecoveryFanout        = 4
	DefaultRecoverySockets       = 8192
	DefaultRecoveryTimeout       = 3 * time.Second
)

// ErrRecoveryLimited refuses a recovery that found no healthy backend to
// ask, or no socket to ask one with.
var ErrRecoveryLimited = errors.New("proxy: no backend to ask, or no recovery socket to ask with")

// earlyMax bounds the backend datagrams a recovering session keeps from
// one socket until the run that proves the backend is complete, to deliver
// them with it.
const earlyMax = 4

// RecoveryConfig configures the recovery of sessions nobody here has seen
// (see Handler.Recover). Zero values mean the defaults.
type RecoveryConfig struct {
	// Rate bounds the recoveries begun per second, over all clients, and
	// RatePerSource those per client address, each with bursts of a tenth.
	Rate, RatePerSource int
	// Fanout is how many backends a recovery asks at most: the datagrams
	// sent to backends for each datagram of a recovering session.
	Fanout int
	// Sockets bounds the sockets recovering sessions hold; nil means
	// DefaultRecoverySockets. Share one among listeners for a process-wide
	// bound.
	Sockets *Budget
	// Timeout is how long a recovering session waits for a backend's proof
	// before it is closed, at its next datagram or when its sockets are
	// needed.
	Timeout time.Duration
}

// recovery is a Handler's RecoveryConfig, ready.
type recovery struct {
	fanout    int
	sockets   *Budget
	timeout   time.Duration
	all       rate.Limiter
	perSource *rate.PerAddr
	next      atomic.Uint32         // where the next recovery starts asking among the backends
	queues    loopQueues[*upstream] // the recovering sessions of each event loop, oldest first
}

// newRecovery checks cfg and fills in the defaults; nil stays nil.
func newRecovery(cfg *RecoveryConfig, tracker session.Tracker) (*recovery, error) {
	if cfg == nil {
		return nil, nil
	}
	if tracker == nil {
		return nil, errors.New("proxy: recovery without a Tracker: nothing can prove a backend has a session")
	}
	c := *cfg
	if c.Rate < 0 || c.RatePerSource < 0 || c.Fanout < 0 || c.Timeout < 0 {
		return nil, fmt.Errorf("proxy: negative recovery setting: %+v", c)
	}
	r := &recovery{fanout: c.Fanout, sockets: c.Sockets, timeout: c.Timeout}
	if r.fanout == 0 {
		r.fanout = DefaultRecoveryFanout
	}
	if r.sockets == nil {
		r.sockets = NewBudget(DefaultRecoverySockets)
	}
	if r.timeout == 0 {
		r.timeout = DefaultRecoveryTimeout
	}
	if c.Rate == 0 {
		c.Rate = DefaultRecoveryRate
	}
	if c.RatePerSource == 0 {
		c.RatePerSource = DefaultRecoveryRatePerSource
	}
	r.all.Init(c.Rate)
	var seed [8]byte
	rand.Read(seed[:])
	r.perSource = rate.NewPerAddr(4096, c.RatePerSource, binary.LittleEndian.Uint64(seed[:]))
	return r, nil
}

// asking is a socket that asks one backend whether it has a recovering
// session, with a Track of its own for the backend's answers.
type asking struct {
	backend int
	sock    session.Socket
	track   session.Track
	early   [][]byte // the backend's datagrams so far, copied
}

// recovering is the state of a session while it recovers.
type recovering struct {
	s        session.Session
	asked    []*asking
	deadline time.Time
	entry    *queued[*upstream] // in its loop's queue of recovering sessions
}

// MayRecover implements session.Recoverer: a recovery is begun within the
// rates, per client address and in all, if a healthy backend none of the
// holders is settled on is left to ask, unless the handler recovers
// nothing.
func (h *Handler) MayRecover(peer netip.AddrPort, holders []session.Session) bool {
	r := h.recovery
	if r == nil || !h.anyToAsk(holders) {
		return false
	}
	now := h.bal.clock(h.now()) // monotonic: a step of the wall clock neither freezes nor floods the rates
	if !r.perSource.Allow(peer.Addr(), now) || !r.all.Allow(now) {
		h.stats.recoveryRefused.Add(1)
		return false
	}
	return true
}

// anyToAsk reports whether a healthy backend none of holders is settled on
// is left for a recovery to ask.
func (h *Handler) anyToAsk(holders []session.Session) bool {
	for b := range h.bal.Len() {
		if h.bal.Available(b) && !servedBy(holders, b) {
			return true
		}
	}
	return false
}

// Recover implements session.Recoverer: it opens a socket to each of up to
// Fanout healthy backends for s, a session nobody here knew, whose
// datagrams, p the first, then go to all of them, to be adopted where one
// proves it has the session (see recoveringUpstream). It asks none of the
// backends the holders of p's ID are settled on: a backend that follows
// its client to the socket that asked it would take the client from its
// own session, which p went to as well. The session takes its share of
// sessions.max_per_source as a new one does.
func (h *Handler) Recover(s session.Session, p []byte, holders []session.Session) error {
	r := h.recovery
	src := s.PeerAddr().Addr()
	if !h.sources.Acquire(src) {
		return ErrSourceLimited
	}
	u := &upstream{h: h, source: src, backend: -1, rec: &recovering{s: s, deadline: h.now().Add(r.timeout)}}
	q := r.queues.of(s.Stats().Loop)
	n := h.bal.Len()
	start := int(r.next.Add(1))
	for i := 0; i < n && len(u.rec.asked) < r.fanout; i++ {
		b := (start + i) % n
		if !h.bal.Available(b) || servedBy(holders, b) {
			continue
		}
		if !h.recoverySocket(q) {
			break
		}
		a, err := h.ask(s, b)
		if err != nil {
			r.sockets.Release()
			continue
		}
		u.rec.asked = append(u.rec.asked, a)
	}
	if len(u.rec.asked) == 0 {
		h.sources.Release(src)
		h.stats.recoveryRefused.Add(1)
		return ErrRecoveryLimited
	}
	u.rec.entry = q.push(u)
	s.SetState(u)
	h.stats.recovering.Add(1)
	return nil // the engine delivers p next, to Datagram, which asks
}

// servedBy reports whether one of sessions, the proxy's, is settled on
// backend b. One that recovers proved nothing yet: an attacker's datagram
// may have begun it, and the backends it asks are asked again.
func servedBy(sessions []session.Session, b int) bool {
	for _, s := range sessions {
		if u, _ := s.State().(*upstream); u != nil {
			if st := u.settled.Load(); st != nil && st.backend == b {
				return true
			}
		}
	}
	return false
}

// recoverySocket takes a unit of the recovery socket budget, in the place
// of the loop's oldest recovering session past its deadline if it must, and
// reports whether it did.
func (h *Handler) recoverySocket(q *loopQueue[*upstream]) bool {
	r := h.recovery
	for !r.sockets.Acquire() {
		old := q.oldest()
		if old == nil || h.now().Before(old.rec.deadline) {
			return false
		}
		s := old.rec.s
		h.giveUp(old)
		s.Close()
	}
	return true
}

// ask opens a socket to backend b for s, with a Track of its own.
func (h *Handler) ask(s session.Session, b int) (*asking, error) {
	k, err := h.dialBackend(s, b, s.PeerAddr())
	if err != nil {
		return nil, err
	}
	return &asking{backend: b, sock: k, track: h.tracker.Track(s.Key().Scope())}, nil
}

// askAll sends p, a datagram of s's client, to every backend s asks, after
// each one's Track has noted it; it files the key the client names itself
// by in p, if any.
func (h *Handler) askAll(s session.Session, u *upstream, p []byte) {
	for _, a := range u.rec.asked {
		own, _ := a.track.Client(s, p, false)
		u.file(s, own)
		a.sock.Write(p)
	}
	h.stats.recoveryProbes.Add(uint64(len(u.rec.asked)))
}

// recoveringDatagram handles a datagram of a recovering session's client:
// it asks the backends again, or, past the deadline, gives up.
func (h *Handler) recoveringDatagram(s session.Session, u *upstream, p []byte) {
	if h.now().After(u.rec.deadline) {
		h.giveUp(u)
		s.Close()
		return
	}
	h.askAll(s, u, p)
}

// recoveringUpstream handles p from backend socket sock of a recovering
// session: kept until the backend's Track finds the proof in a run of
// them, at which the session is adopted on that backend and they go to the
// client. It reports whether p is for the client now.
func (h *Handler) recoveringUpstream(s session.Session, u *upstream, sock session.Socket, p []byte) {
	var a *asking
	for _, x := range u.rec.asked {
		if x.sock == sock {
			a = x
		}
	}
	if a == nil {
		return
	}
	own, ok := a.track.Recovers(s, p)
	if !ok {
		if len(a.early) == earlyMax {
			a.early = a.early[1:]
		}
		a.early = append(a.early, append([]byte(nil), p...))
		return
	}
	if !h.adopt(s, u, a) {
		return
	}
	u.file(s, own)
	for _, q := range append(a.early, p) {
		u.learn(s, q)
		s.Write(q)
	}
	u.heard, u.answered = true, true
	h.bal.MarkUp(u.backend)
}

// adopt makes a's backend s's and a's socket its upstream socket, which
// moves from the recovery budget to the sessions'; the others close. It
// reports false, closing the session, when the sessions' budget is spent.
func (h *Handler) adopt(s session.Session, u *upstream, a *asking) bool {
	if !h.sockets.Acquire() {
		h.giveUp(u)
		s.Close()
		return false
	}
	h.endRecovery(u, a)
	u.backend, u.sock, u.track = a.backend, a.sock, a.track
	u.settled.Store(&settled{a.backend, a.sock})
	h.bal.Opened(u.backend)
	h.stats.recovered.Add(1)
	return true
}

// giveUp ends the recovery of u, whose session no backend proved,
// closing its sockets; the session closes.
func (h *Handler) giveUp(u *upstream) {
	h.endRecovery(u, nil)
	u.abandoned = true
	h.stats.recoveryFailed.Add(1)
}

// endRecovery closes the asking sockets of u but keep, and takes u out of
// its loop's queue.
func (h *Handler) endRecovery(u *upstream, keep *asking) {
	for _, a := range u.rec.asked {
		if a != keep {
			a.sock.Close()
		}
		h.recovery.sockets.Release()
	}
	u.rec.entry.remove()
	u.rec = nil
	h.stats.recovering.Add(-1)
}

// Tick implements session.TickHandler: on loop, the fast path does its
// work (tickFast), the recovering sessions
// past their deadline give up, and pending probes through which nothing has
// passed for probeIdle close, so that neither holds sockets for sessions
// whose clients, or forgers, went silent.
func (h *Handler) Tick(loop int, now time.Time) {
	h.tickFast(loop, now)
	if r := h.recovery; r != nil {
		q := r.queues.of(loop)
		for old := q.oldest(); old != nil && now.After(old.rec.deadline); old = q.oldest() {
			s := old.rec.s
			h.giveUp(old)
			s.Close()
		}
	}
	for e := h.queues.of(loop).head; e != nil; {
		pr := e.v
		e = e.newer
		if now.Sub(pr.last) >= probeIdle {
			h.closeProbe(pr)
		}
	}
}
