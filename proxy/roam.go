//go:build linux

package proxy

import (
	"net/netip"
	"time"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
)

// A tunnel client that moves (its NAT rebinds its port, a phone changes
// networks) keeps sending under the identifiers of its tunnel (a WireGuard
// receiver index, an OpenVPN peer-id or session ID), which the dissector
// maps to its session; the engine hands such a datagram from a new address
// to Roam. Anyone can forge those identifiers from any address, and any
// datagram from the backend's address too, so the proxy believes neither.
// It asks the backend, which can tell, and checks the answer with the
// session's Track (session.Tracker), which knows what an off-path attacker
// never sees:
//
//   - A datagram from a new address that the Track finds impossible for the
//     client (a sequence number it used already) goes nowhere.
//   - Any other goes to the backend at once, but on a socket of its own, a
//     probe. A WireGuard or OpenVPN backend follows a client to a new
//     address only for a datagram it has authenticated, and then sends its
//     next datagrams there, on the probe.
//   - A datagram on the probe moves the session only if the Track vouches
//     for it: it carries what only the real backend knows after
//     authenticating the client (the index the WireGuard client chose for
//     its handshake; the next packet-ids of the OpenVPN server's own
//     sequence). Anything else on a pending probe is dropped: forged, or a
//     message of the backend's that proves nothing.
//
// The move sends replies to the new address from then on and releases the
// old 4-tuple. The client's next datagrams go to the backend on the
// session's own upstream socket again, and the backend follows them back
// there, so that it sees one source address per session for good; the
// probe stays open until it does, for the replies on their way to it.
// With Config.ClientSource the backend sees the client's own address
// instead, and the probe, which sends from the new one, becomes the
// session's socket at the move: the old socket, which sends from the
// address the client left, closes.
//
// Probes are bounded so that no sprayer can pin them: a session waits on at
// most maxProbes new addresses, the newest taking the place of the oldest
// whatever its age, so that a real client's new address has its probe at
// its first datagram; and probe sockets come from a budget of their own
// (Config.Probes), so that they never take what sessions need, the newest
// taking the place of the oldest pending one of its event loop when the
// budget is spent.

// probe is a socket to the session's backend that carries the datagrams of
// one new client address until the backend answers on it (pending), and
// then those of the backend until it is back on the session's socket
// (confirmed).
type probe struct {
	u    *upstream
	sock session.Socket
	addr netip.AddrPort
	// confirmed is set once the backend has answered on the probe; back
	// once it has answered on the session's socket again since.
	confirmed, back bool
	last            time.Time // the last datagram through the probe
	// pending is its place among the pending probes of its event loop
	// while it is pending.
	pending *queued[*probe]
}

const (
	// maxProbes bounds the new addresses one session waits on at once.
	maxProbes = 4
	// probeIdle closes a probe through which nothing has passed for this
	// long.
	probeIdle = 10 * time.Second
	// probeStale is how long a pending probe may have been idle before the
	// session's client, still sending from its own address, makes it
	// stale, and how long a confirmed one the backend has left for the
	// session's socket stays open for the replies it sent before.
	probeStale = time.Second
	// moveHold is how long datagrams from the address a session just left
	// are dropped: late ones, overtaken by those from the new address, would
	// otherwise take the backend, and then the session, back there.
	moveHold = time.Second
)

// Roam implements session.Roamer: p comes from from, not the session's
// client address. Unless the session's Track finds it impossible for the
// client, it goes to the backend on from's probe, opened for it; the
// backend's answer there, if the Track vouches for it, moves the session
// (see confirm). Without a Tracker nothing can vouch, and sessions never
// move.
func (h *Handler) Roam(s session.Session, from netip.AddrPort, p []byte) {
	u := s.State().(*upstream)
	if u.rec != nil || u.backend < 0 {
		h.stats.movesRefused.Add(1) // no backend of its own to ask yet
		return
	}
	now := h.now()
	if from == u.left && now.Sub(u.leftAt) < moveHold {
		h.stats.lateDatagrams.Add(1)
		return
	}
	if u.track == nil {
		h.stats.movesRefused.Add(1)
		return
	}
	own, plausible := u.track.Client(s, p, true)
	if !plausible {
		h.stats.implausible.Add(1)
		return
	}
	u.file(s, own)
	pr := u.probeFor(from)
	if pr == nil {
		if pr = h.openProbe(s, u, from, now); pr == nil {
			return
		}
	}
	pr.last = now
	pr.sock.Write(p)
}

// probeFor returns from's probe, or nil.
func (u *upstream) probeFor(from netip.AddrPort) *probe {
	for _, pr := range u.probes {
		if pr.addr == from {
			return pr
		}
	}
	return nil
}

// openProbe opens a probe for from and returns it, or nil when none can be
// had (a failed dial, or no probe of the event loop's to take the place of):
// counted as a refused move. A session waiting on maxProbes addresses
// closes the oldest for it, and a spent probe budget the loop's oldest
// pending probe.
func (h *Handler) openProbe(s session.Session, u *upstream, from netip.AddrPort, now time.Time) *probe {
	var oldest *probe
	pending := 0
	for _, pr := range u.probes {
		if !pr.confirmed {
			pending++
			if oldest == nil {
				oldest = pr // probes are in the order they opened
			}
		}
	}
	if pending >= maxProbes {
		h.stats.probesEvicted.Add(1)
		h.closeProbe(oldest)
	}
	q := h.queues.of(s.Stats().Loop)
	for !h.probes.Acquire() {
		old := q.oldest()
		if old == nil {
			h.stats.movesRefused.Add(1)
			return nil
		}
		h.stats.probesEvicted.Add(1)
		h.closeProbe(old)
	}
	k, err := h.dialBackend(s, u.backend, from)
	if err != nil {
		h.probes.Release()
		h.stats.movesRefused.Add(1)
		return nil
	}
	pr := &probe{u: u, sock: k, addr: from, last: now}
	pr.pending = q.push(pr)
	u.probes = append(u.probes, pr)
	h.stats.pending.Add(1)
	return pr
}

// closeProbe closes pr, a probe of any session of the calling loop's.
func (h *Handler) closeProbe(pr *probe) {
	u := pr.u
	pr.sock.Close()
	h.probes.Release()
	if pr.pending != nil {
		pr.pending.remove()
		pr.pending = nil
		h.stats.pending.Add(-1)
	}
	for i, x := range u.probes {
		if x == pr {
			u.probes = append(u.probes[:i], u.probes[i+1:]...)
			break
		}
	}
}

// closeIdleProbes runs for a datagram from the session's client at its own
// address: it closes the probes through which nothing has passed for
// probeIdle, and for probeStale the pending ones, which the client, still
// here, left stale (a datagram overtaken by its successors, or forged), and
// the confirmed ones the backend has left for the session's socket (after
// the replies it sent before on their way).
func (h *Handler) closeIdleProbes(u *upstream, now time.Time) {
	for i := len(u.probes) - 1; i >= 0; i-- {
		pr := u.probes[i]
		idle := now.Sub(pr.last)
		if idle >= probeIdle || (!pr.confirmed || pr.back) && idle >= probeStale {
			h.closeProbe(pr)
		}
	}
}

// fromProbe handles p, a datagram on probe sock: on a pending probe it
// moves the session there if the session's Track vouches for it (see
// confirm), and is dropped otherwise. It reports whether p is the
// session's, for its client.
func (h *Handler) fromProbe(s session.Session, u *upstream, sock session.Socket, p []byte) bool {
	for _, pr := range u.probes {
		if pr.sock != sock {
			continue
		}
		if !pr.confirmed {
			if !u.track.Vouches(s, p) {
				h.stats.unvouched.Add(1)
				return false
			}
			if !h.confirm(s, u, pr) {
				return false
			}
		}
		pr.last = h.now()
		return true
	}
	return false // closed earlier in the same read
}

// confirm moves s to the address of probe pr, on which the backend has just
// answered, and reports whether it did; the session's other probes close.
// The new address takes the session's share of sessions.max_per_source;
// when it has none left the move is refused and the probe closed.
func (h *Handler) confirm(s session.Session, u *upstream, pr *probe) bool {
	if src := pr.addr.Addr(); src != u.source {
		if !h.sources.Acquire(src) {
			h.stats.movesRefused.Add(1)
			h.closeProbe(pr)
			return false
		}
		h.sources.Release(u.source)
		u.source = src
	}
	old := s.PeerAddr()
	if err := s.Move(pr.addr); err != nil {
		h.stats.movesRefused.Add(1)
		h.closeProbe(pr)
		return false
	}
	u.left, u.leftAt = old, h.now()
	for i := len(u.probes) - 1; i >= 0; i-- {
		if u.probes[i] != pr {
			h.closeProbe(u.probes[i])
		}
	}
	pr.pending.remove()
	pr.pending = nil
	h.stats.pending.Add(-1)
	pr.confirmed = true
	h.stats.moved.Add(1)
	if h.clientSource {
		h.takeProbe(u, pr)
	}
	return true
}

// takeProbe makes pr, the one probe of u's left, confirmed, u's socket in
// the place of the one that sends from the address its client left; the
// probe's socket moves from the probe budget to the sessions'. The old
// socket closes after what the session wrote to it in this batch, and the
// engine takes the probe's for the session's socket in a restart (the
// first still open).
func (h *Handler) takeProbe(u *upstream, pr *probe) {
	old := u.sock
	u.probes = u.probes[:0]
	h.probes.Release()
	u.sock = pr.sock
	u.settled.Store(&settled{u.backend, pr.sock})
	old.Close()
}

// backOnSocket notes that the backend answers on the session's own socket
// again: it has followed the client back there, and the confirmed probe may
// close once what it sent before has arrived (see closeIdleProbes).
func (u *upstream) backOnSocket() {
	for _, pr := range u.probes {
		if pr.confirmed {
			pr.back = true
		}
	}
}

// file files s under k, a key its Track returned, unless it is none or s
// holds it already; the engine counts a key its table refuses.
func (u *upstream) file(s session.Session, k flowtable.Key) {
	if k.Kind() != flowtable.KindNone && !s.Holds(k) {
		s.AddKey(k)
	}
}

// learn notes p, a datagram from the backend on a path the proxy trusts,
// with the session's Track, and files the session under the ID it assigns.
func (u *upstream) learn(s session.Session, p []byte) {
	if u.track != nil {
		u.file(s, u.track.Server(s, p))
	}
}
