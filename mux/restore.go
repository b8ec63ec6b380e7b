//go:build linux

package mux

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// adopt wraps the inherited sockets of listener ln, if any, and marks them
// used. An inherited listener is ln's if it is bound to ln's address or, for
// an address with port 0, has ln's name and IP address: the predecessor's
// port 0 is the port it got.
func (inh *Inheritance) adopt(ln *listener, used []bool) ([]*udpsys.Socket, error) {
	addr := ln.addr
	for i, il := range inh.listeners {
		same := il.addr == addr ||
			addr.Port() == 0 && il.name == ln.name && il.addr.Addr() == addr.Addr()
		if !same || used[i] {
			continue
		}
		used[i] = true
		var socks []*udpsys.Socket
		for _, fd := range il.fds {
			s, err := udpsys.SocketFromFD(fd)
			if err != nil {
				return nil, fmt.Errorf("inherited socket of %s: %w", addr, err)
			}
			socks = append(socks, s)
		}
		return socks, nil
	}
	return nil, nil
}

// workers is the loop count the inherited sockets dictate: one loop per
// socket, the same in every listener, so that the reuseport groups and the
// kernel's flow-to-socket mapping stay as they were.
func (inh *Inheritance) workers() (int, error) {
	n := 0
	for _, il := range inh.listeners {
		if n != 0 && len(il.fds) != n {
			return 0, fmt.Errorf("inherited listeners have %d and %d sockets", n, len(il.fds))
		}
		n = len(il.fds)
	}
	if n == 0 {
		return 0, errors.New("mux: Config.Inherit: no listener sockets")
	}
	return n, nil
}

// closeUnused closes inherited listener sockets New did not adopt; from
// then on the server owns the listener sockets.
func (inh *Inheritance) closeUnused(used []bool, log func(string, ...any)) {
	for i, il := range inh.listeners {
		if !used[i] {
			log("listener removed by the new configuration; its sockets close", "listener", il.name, "address", il.addr)
			closeFDs(il.fds)
		}
		inh.listeners[i].fds = nil
	}
}

// closeFDs closes descriptors nobody else owns.
func closeFDs(fds []int) {
	for _, fd := range fds {
		udpsys.Close(fd)
	}
}

// restore takes over from the predecessor once the loops hold the inherited
// sockets: it adopts the relay to the predecessor, recreates the sessions,
// those that came with the Inheritance and those the predecessor sends
// now, and confirms. The server owns every descriptor from here on.
func (srv *Server) restore(inh *Inheritance) (RestoreStats, error) {
	srv.restart.inherit = inh
	srv.restart.restoring = map[uint64]*sess{}
	relays := inh.relays
	inh.relays = nil
	if len(relays) > 0 {
		if err := srv.adoptRelays(relays); err != nil {
			return RestoreStats{}, fmt.Errorf("relay: %w", err)
		}
	}
	var err error
	if upstreams := inh.upstreams; len(inh.sessions) > 0 || len(upstreams) > 0 {
		inh.upstreams = nil
		err = srv.restoreBatch(inh.sessions, upstreams)
		srv.finishRestore(upstreams)
		inh.sessions = nil // restored: the records need not live on
	}
	if err == nil && inh.recv != nil {
		if err = inh.recv.Restore(restorer{srv}); err == nil {
			err = inh.recv.Confirm()
		}
	}
	return srv.restart.restored, err
}

// restorer is the Server as handoff.Receiver.Restore fills it.
type restorer struct{ srv *Server }

func (r restorer) Restore(records []handoff.Session, fds []int) error {
	return r.srv.restoreBatch(records, fds)
}
func (r restorer) FinishRestore(fds []int) { r.srv.finishRestore(fds) }

// Restore recreates a batch of the predecessor's sessions on the loops they
// had, before Serve. A successor calls it for each batch as it arrives, so
// that restoring overlaps the predecessor's sending. upstreams are all the
// session sockets received so far: a record's Upstream indexes them, and
// Restore takes ownership of those it uses. Records that update or end a
// session restored earlier (handoff.ChangeUpdate, ChangeGone) apply to it.
// The server must have been created with Config.Inherit and not be serving
// yet.
func (srv *Server) restoreBatch(records []handoff.Session, upstreams []int) error {
	inh := srv.restart.inherit
	if inh == nil {
		return errors.New("restore: the server inherited nothing")
	}
	if n := len(upstreams); n > len(srv.restart.upstreamTaken) {
		srv.restart.upstreamTaken = append(srv.restart.upstreamTaken, make([]bool, n-len(srv.restart.upstreamTaken))...)
	}
	now := clock()
	for i := range records {
		rec := &records[i]
		old := int(rec.Key.Scope())
		if old >= len(inh.listeners) {
			return fmt.Errorf("session %d: listener %d of %d", i, old, len(inh.listeners))
		}
		if rec.Retained && srv.restart.relay == nil {
			return fmt.Errorf("session %d: retained by the predecessor, which sent no relay sockets", i)
		}
		ln := srv.listenerAt(inh.listeners[old].addr)
		if rec.Change != handoff.ChangeNew {
			srv.applyChange(rec, ln, now)
			continue
		}
		up := -1
		if rec.Upstream >= 0 {
			if int(rec.Upstream) >= len(upstreams) || srv.restart.upstreamTaken[rec.Upstream] {
				return fmt.Errorf("session %d: upstream descriptor %d of %d, or taken twice", i, rec.Upstream, len(upstreams))
			}
			srv.restart.upstreamTaken[rec.Upstream] = true
			up = upstreams[rec.Upstream]
		}
		switch {
		case ln == nil:
			srv.restart.restored.Dropped++
			if up >= 0 {
				udpsys.Close(up)
			}
		case !srv.restoreSession(rec, ln, up, now): // which closed up
			srv.restart.restored.Dropped++
		case rec.Retained:
			srv.restart.restored.Relayed++
		default:
			srv.restart.restored.Restored++
		}
	}
	return nil
}

// FinishRestore closes the inherited session sockets no record claimed and
// the relay if no session stayed with the predecessor.
func (srv *Server) finishRestore(upstreams []int) {
	for i, fd := range upstreams {
		if i >= len(srv.restart.upstreamTaken) || !srv.restart.upstreamTaken[i] {
			udpsys.Close(fd)
		}
	}
	srv.restart.upstreamTaken = nil
	if srv.restart.relay != nil && srv.restart.relay.live.Load() == 0 {
		srv.restart.relay.close() // nothing to relay: the predecessor's sessions all went
	}
}

// listenerAt finds the listener at the predecessor's listener address: the
// new configuration may order listeners differently. It returns nil when the
// listener is gone.
func (srv *Server) listenerAt(addr netip.AddrPort) *listener {
	for _, ln := range srv.listeners {
		if ln.addr == addr {
			return ln
		}
	}
	return nil
}

// recordKeys returns a record's keys in ln's scope, the anchor first.
func recordKeys(rec *handoff.Session, ln *listener) []flowtable.Key {
	keys := []flowtable.Key{rec.Anchor().WithScope(ln.scope)}
	for _, k := range rec.Keys[min(1, len(rec.Keys)):] {
		keys = append(keys, k.WithScope(ln.scope))
	}
	return keys
}

// applyChange updates or ends a session restored from an early copy, known
// by its ID; a record for a session this server dropped, or never had,
// changes nothing.
func (srv *Server) applyChange(rec *handoff.Session, ln *listener, now int64) {
	s := srv.restart.restoring[rec.ID]
	if ln == nil || s == nil || s.closed.Load() {
		return
	}
	l := srv.loops[s.loop.id]
	if rec.Change == handoff.ChangeGone {
		l.end(s, session.ReasonHandoff)
		delete(srv.restart.restoring, rec.ID)
		srv.restart.restored.Restored--
		srv.restart.restored.Ended++
		return
	}
	// As when restored: no longer idle than this configuration allows.
	deadline := now + min(rec.IdleLeft, int64(ln.idle))
	l.setKeys(s, recordKeys(rec, ln), deadline)
	s.setPeer(rec.Peer)
	s.refresh(session.Stats{RxPackets: rec.RxPackets, RxBytes: rec.RxBytes,
		TxPackets: rec.TxPackets, TxBytes: rec.TxBytes}, deadline)
	srv.restart.restored.Updated++
}

// restoreSession restores the session of rec on listener ln, with its
// socket upstream (-1 for none), which it owns from then on, and reports
// whether it did: a session the server or its handler refuses is dropped,
// and upstream closed.
func (srv *Server) restoreSession(rec *handoff.Session, ln *listener, upstream int, now int64) bool {
	if rec.Retained {
		return srv.restoreRelay(rec, ln, now)
	}
	_, ok := ln.handler.(session.Migrator)
	if !ok {
		if upstream >= 0 {
			udpsys.Close(upstream)
		}
		return false
	}
	keys := recordKeys(rec, ln)
	l := srv.loops[int(rec.Loop)%len(srv.loops)]
	s := newSess(sessConfig{
		key: rec.Key.WithScope(ln.scope), anchor: keys[0], id: rec.ID,
		scope: ln.scope, local: rec.Local, peer: rec.Peer,
		loop: l, handler: ln.handler, idle: ln.idle, now: now,
		created:  time.Unix(0, rec.Created),
		stats:    session.Stats{RxPackets: rec.RxPackets, RxBytes: rec.RxBytes, TxPackets: rec.TxPackets, TxBytes: rec.TxBytes},
		idleLeft: time.Duration(rec.IdleLeft),
	})
	if !l.fileRestored(s, keys) {
		if upstream >= 0 {
			udpsys.Close(upstream)
		}
		return false
	}
	var sock session.Socket
	if upstream >= 0 {
		k, err := l.adoptUpstream(s, upstream)
		if err != nil {
			l.unfileKeys(s)
			srv.log.Warn("inherited session dropped", "listener", ln.name, "peer", rec.Peer, "err", err)
			return false
		}
		sock = k
	}
	if err := s.importState(rec.State, sock); err != nil {
		closeAll(l.detachAll(s))
		l.unfileKeys(s)
		srv.log.Warn("inherited session dropped", "listener", ln.name, "peer", rec.Peer, "err", err)
		return false
	}
	srv.restart.restoring[rec.ID] = s
	srv.live.Add(1)
	l.socks[ln.scope].stats.opened.inc()
	return true
}
