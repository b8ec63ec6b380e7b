//go:build linux

package mux

import (
	"net/netip"
	"sync"
)

// A session's socket dialed with session.DialOptions.Source sends from its
// client's address, not this host's (a transparent proxy): sockets of
// several sessions, or of one session and its probes, may share that
// address, the kernel telling their replies apart by the address each is
// connected to. Two sockets from one source connected to one address, it
// cannot tell apart: which one gets a reply is the kernel's choice, so a
// forger that made the proxy open the second (a probe for a spoofed new
// address that is another session's client) could take the first's
// replies. The kernel does not refuse such a pair, so the engine does:
// sources holds the pairs of the process's sockets, whatever their loop.
// Dials and closes take its lock, which the datagrams' path never does.

// sourcePair is a transparent socket's local and remote address.
type sourcePair struct{ local, remote netip.AddrPort }

// sources are the pairs of the process's transparent sockets.
type sources struct {
	mu   sync.Mutex
	held map[sourcePair]struct{}
}

// take holds p and reports whether it was free.
func (r *sources) take(p sourcePair) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.held[p]; ok {
		return false
	}
	if r.held == nil {
		r.held = make(map[sourcePair]struct{})
	}
	r.held[p] = struct{}{}
	return true
}

// release frees p, which take held.
func (r *sources) release(p sourcePair) {
	r.mu.Lock()
	delete(r.held, p)
	r.mu.Unlock()
}

// unmapped is a with an IPv4-mapped address unmapped, as sockets report
// IPv4 addresses.
func unmapped(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
