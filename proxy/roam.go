//go:build linux

package proxy

import (
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// A tunnel client that moves (its NAT rebinds its port, a phone changes
// networks) keeps sending under the identifiers of its tunnel (a WireGuard
// receiver index, an OpenVPN peer-id or session ID), which the dissector
// maps to its session; the engine hands such a datagram from a new address
// to Roam. Anyone can forge those identifiers from any address, so the
// proxy does not believe them. It asks the backend, which can tell: the
// datagrams from the new address go to the backend at once, but on a
// socket of their own, a probe. A WireGuard or OpenVPN backend follows a
// client to a new address only for a datagram it has authenticated, and
// then answers there, on the probe. That answer, and nothing else, moves
// the session: replies go to the new address from then on, and the old
// 4-tuple is released. The client's next datagrams go to the backend on the
// session's own upstream socket again, and the backend follows them back
// there, so that it sees one source address per session for good; the
// probe stays open until it does, for the replies on their way to it.
// Datagrams an attacker forges go to the backend too, which drops them:
// their probe never hears a word and closes when its address falls silent.

// probe is a socket to the session's backend that carries the datagrams of
// one new client address until the backend answers on it (pending), and
// then those of the backend until it is back on the session's socket
// (confirmed).
type probe struct {
	sock session.Socket
	addr netip.AddrPort
	// confirmed is set once the backend has answered on the probe; back
	// once it has answered on the session's socket again since.
	confirmed, back bool
	last            time.Time // the last datagram through the probe
}

const (
	// maxProbes bounds the new addresses one session waits on at once.
	maxProbes = 2
	// probeIdle closes a probe through which nothing has passed for this
	// long.
	probeIdle = 10 * time.Second
	// probeEvict is how long a pending probe must have been idle before a
	// further new address may take its place, or before the session's
	// client, still sending from its own address, makes it stale.
	probeEvict = time.Second
	// moveHold is how long datagrams from the address a session just left
	// are dropped: late ones, overtaken by those from the new address, would
	// otherwise take the backend, and then the session, back there.
	moveHold = time.Second
)

// Roam implements session.Roamer: p comes from from, not the session's
// client address. It goes to the backend on from's probe, opened for it if
// there is room; the backend's answer on the probe moves the session (see
// confirm).
func (h *Handler) Roam(s session.Session, from netip.AddrPort, p []byte) {
	u := s.State().(*upstream)
	now := h.now()
	if from == u.left && now.Sub(u.leftAt) < moveHold {
		h.stats.lateDatagrams.Add(1)
		return
	}
	i := u.probeFor(from)
	if i < 0 {
		if i = h.openProbe(s, u, from, now); i < 0 {
			return
		}
	}
	pr := &u.probes[i]
	pr.last = now
	pr.sock.Write(p)
}

// probeFor returns the index of from's probe, or -1.
func (u *upstream) probeFor(from netip.AddrPort) int {
	for i := range u.probes {
		if u.probes[i].addr == from {
			return i
		}
	}
	return -1
}

// openProbe opens a probe for from and returns its index, or -1 when the
// session waits on as many addresses as it may, none of them idle for
// probeEvict, or a probe cannot be had (the socket budget, a failed dial):
// counted as a refused move.
func (h *Handler) openProbe(s session.Session, u *upstream, from netip.AddrPort, now time.Time) int {
	pending, oldest := 0, -1
	for i := range u.probes {
		if !u.probes[i].confirmed {
			pending++
			if oldest < 0 || u.probes[i].last.Before(u.probes[oldest].last) {
				oldest = i
			}
		}
	}
	if pending == maxProbes {
		if now.Sub(u.probes[oldest].last) < probeEvict {
			h.stats.movesRefused.Add(1)
			return -1
		}
		h.closeProbe(u, oldest)
	}
	if !h.sockets.Acquire() {
		h.stats.movesRefused.Add(1)
		return -1
	}
	var k session.Socket
	sock, err := udpsys.DialUDP(h.backends[u.backend], h.buffers)
	if err == nil {
		if k, err = s.Attach(sock.FD); err != nil {
			sock.Close()
		}
	}
	if err != nil {
		h.sockets.Release()
		h.stats.dialErrors.Add(1)
		h.stats.movesRefused.Add(1)
		return -1
	}
	u.probes = append(u.probes, probe{sock: k, addr: from, last: now})
	h.stats.probes.Add(1)
	return len(u.probes) - 1
}

// closeProbe closes the i-th probe.
func (h *Handler) closeProbe(u *upstream, i int) {
	pr := u.probes[i].sock
	pr.Detach()
	unix.Close(pr.FD())
	h.sockets.Release()
	if !u.probes[i].confirmed {
		h.stats.probes.Add(-1)
	}
	u.probes = append(u.probes[:i], u.probes[i+1:]...)
}

// closeIdleProbes runs for a datagram from the session's client at its own
// address: it closes the probes through which nothing has passed for
// probeIdle, and for probeEvict the pending ones, which the client, still
// here, left stale (a datagram overtaken by its successors, or forged), and
// the confirmed ones the backend has left for the session's socket (after
// the replies it sent before on their way).
func (h *Handler) closeIdleProbes(u *upstream, now time.Time) {
	for i := len(u.probes) - 1; i >= 0; i-- {
		pr := &u.probes[i]
		idle := now.Sub(pr.last)
		if idle >= probeIdle || (!pr.confirmed || pr.back) && idle >= probeEvict {
			h.closeProbe(u, i)
		}
	}
}

// fromProbe handles a datagram the backend sent on probe sock: the first on
// a pending probe moves the session there (see confirm). It reports whether
// the datagram is the session's, for its client.
func (h *Handler) fromProbe(s session.Session, u *upstream, sock session.Socket) bool {
	for i := range u.probes {
		if pr := &u.probes[i]; pr.sock == sock {
			pr.last = h.now()
			return pr.confirmed || h.confirm(s, u, i)
		}
	}
	return false // closed earlier in the same read
}

// confirm moves s to the address of probe i, on which the backend has just
// answered, and reports whether it did; the session's other probes close.
// The new address takes the session's share of sessions.max_per_source;
// when it has none left the move is refused and the probe closed.
func (h *Handler) confirm(s session.Session, u *upstream, i int) bool {
	pr := u.probes[i]
	if src := pr.addr.Addr(); src != u.source {
		if !h.sources.Acquire(src) {
			h.stats.movesRefused.Add(1)
			h.closeProbe(u, i)
			return false
		}
		h.sources.Release(u.source)
		u.source = src
	}
	old := s.PeerAddr()
	if err := s.Move(pr.addr); err != nil {
		h.stats.movesRefused.Add(1)
		h.closeProbe(u, i)
		return false
	}
	u.left, u.leftAt = old, h.now()
	for j := len(u.probes) - 1; j >= 0; j-- {
		if u.probes[j].sock != pr.sock {
			h.closeProbe(u, j)
		}
	}
	u.probes[0].confirmed = true
	h.stats.probes.Add(-1)
	h.stats.moved.Add(1)
	return true
}

// backOnSocket notes that the backend answers on the session's own socket
// again: it has followed the client back there, and the confirmed probe may
// close once what it sent before has arrived (see closeIdleProbes).
func (u *upstream) backOnSocket() {
	for i := range u.probes {
		if u.probes[i].confirmed {
			u.probes[i].back = true
		}
	}
}
