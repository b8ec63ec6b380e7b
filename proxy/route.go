//go:build linux

package proxy

import (
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/cespare/xxhash/v2"

	"github.com/udpmux/udpmux/session"
)

// Router chooses new sessions' backends by the datagram that creates them,
// for protocols whose datagrams name the server they belong to: QUIC with
// QUIC-LB connection IDs, where the Dissector of package dissect/quic is
// one. With a Router the proxy keeps no state to route a client that
// moves, across a restart of udpmux or through another udpmux: each new
// session goes where its first datagram says. A Router must be safe for concurrent use, since
// every event loop calls it.
type Router interface {
	// SessionRoute reads p, the first datagram of a new session, and
	// returns the server ID of the backend it belongs to (empty for none:
	// a client's first packet) and the key whose hash picks the backend
	// when no healthy backend has that server ID: an identifier of the
	// client's connection that every datagram of its first flight carries,
	// so that every udpmux with the same backends picks the same one. ok
	// false means that p carries no route; the session is then balanced by
	// its key, as without a Router. The slices may point into p, which is
	// valid only while the proxy opens the session; SessionRoute must not
	// keep p.
	SessionRoute(p []byte) (serverID, hashKey []byte, ok bool)
}

// routes is a Handler's Router with the backends' server IDs.
type routes struct {
	router Router
	// byID maps a server ID, as a string, to its backend's index.
	byID map[string]int
}

// newRoutes checks the server IDs of cfg's backends and returns their
// routes, or nil when cfg has no Router.
func newRoutes(cfg Config) (*routes, error) {
	if cfg.Router == nil {
		if len(cfg.ServerIDs) > 0 {
			return nil, errors.New("proxy: server IDs without a router to read them")
		}
		return nil, nil
	}
	if len(cfg.ServerIDs) > 0 && len(cfg.ServerIDs) != len(cfg.Backends) {
		return nil, fmt.Errorf("proxy: %d server IDs for %d backends", len(cfg.ServerIDs), len(cfg.Backends))
	}
	r := &routes{router: cfg.Router, byID: make(map[string]int, len(cfg.ServerIDs))}
	for i, id := range cfg.ServerIDs {
		if len(id) == 0 {
			continue
		}
		if j, dup := r.byID[string(id)]; dup {
			return nil, fmt.Errorf("proxy: backends %s and %s have the same server ID %s", cfg.Backends[j], cfg.Backends[i], hex.EncodeToString(id))
		}
		r.byID[string(id)] = i
	}
	return r, nil
}

// pick returns the backend for session s, which datagram p creates: the
// one p's server ID names while it is healthy, otherwise the balancing
// policy's choice for the hash of p's hash key, or of s's key when p
// carries no route. ok is false when every backend is down.
func (h *Handler) pick(s session.Session, p []byte) (backend int, ok bool) {
	if h.routes != nil {
		if id, key, routed := h.routes.router.SessionRoute(p); routed {
			if len(id) > 0 {
				if b, known := h.routes.byID[string(id)]; known && h.bal.Available(b) {
					h.stats.routed.Add(1)
					return b, true
				}
				h.stats.routeFallbacks.Add(1)
			}
			// Seeded with 0, as sessionHash: the same on every instance.
			return h.bal.Pick(xxhash.Sum64(key))
		}
	}
	return h.bal.Pick(sessionHash(s.Key()))
}
