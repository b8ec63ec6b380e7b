//go:build linux

package mux

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
)

// A session is in the flow table under several keys: its anchor, the key
// it was created under or, once moved, its 4-tuple, which holds its idle
// deadline; its 4-tuple, if that is not the anchor; and the identifiers it
// learned (session.AddKey), such as the index a WireGuard backend chose, in
// the dissector's datagrams an ID (session.Dissection). Datagrams find it by
// any of them, from any address; only its handler moves it to a new one
// (session.Roamer, Session.Move).

// A session protects the two ID keys its client used last (sess.inUse)
// from eviction, so a class must hold more.
const _ = uint(session.MaxKeysPerClass - 3)

var (
	errKeyHeld  = errors.New("session: key held by another session")
	errKeyScope = errors.New("session: key of another listener")
)

// addKey files s under k too (Session.AddKey).
func (l *loop) addKey(s *sess, k flowtable.Key) error {
	if s.closed.Load() {
		// Its keys have left the table; one filed now would outlive it.
		return fmt.Errorf("add key %v: %w", k, session.ErrClosed)
	}
	if k.Kind() == flowtable.KindNone || k.Scope() != s.scope {
		return fmt.Errorf("add key %v: %w", k, errKeyScope)
	}
	if s.holds(k) {
		return nil
	}
	old := s.keyEntries()
	keep := old
	if k.Shared() {
		// Once the class is full, its oldest key goes that the client has
		// not used last: what a forger makes the session learn (forged
		// "server" datagrams) pushes out only other keys of the kind.
		n, first := 0, -1
		for i, e := range old {
			if x := e.Key(); x.Kind() == flowtable.KindID && x.Class() == k.Class() {
				if n++; first < 0 && !s.usedLately(e) {
					first = i
				}
			}
		}
		if n >= session.MaxKeysPerClass {
			l.srv.table.Delete(old[first])
			keep = append(append([]*entry(nil), old[:first]...), old[first+1:]...)
		}
	}
	e := s.newEntry(k, never)
	got, err := l.srv.table.Insert(e)
	switch {
	case err != nil:
		err = fmt.Errorf("add key %v: %w", k, err)
	case got != e:
		err = fmt.Errorf("add key %v: %w", k, errKeyHeld)
	default:
		keep = append(append([]*entry(nil), keep...), e)
	}
	if len(keep) != len(old) || err == nil {
		s.setKeyEntries(keep)
		l.restart.note(s)
	}
	if err != nil {
		l.socks[s.scope].stats.keysRefused.inc()
	}
	return err
}

// never is the deadline of a session's further keys: they leave the table
// with the session, whose anchor holds its deadline.
const never = int64(^uint64(0) >> 1)

// removeKey forgets one of s's keys (Session.RemoveKey).
func (l *loop) removeKey(s *sess, k flowtable.Key) bool {
	old := s.keyEntries()
	for i, e := range old {
		if e.Key() == k {
			l.srv.table.Delete(e)
			s.setKeyEntries(append(append([]*entry(nil), old[:i]...), old[i+1:]...))
			l.restart.note(s)
			return true
		}
	}
	return false
}

// move moves s to to (Session.Move): s's 4-tuple with to replaces the one with
// its peer. When another session holds the new 4-tuple (a stale session of
// the address's previous user, or one that the datagram which brought s
// here began to recover), s goes on without it, found by its other keys,
// until that session ends; one that recovers yields to s at once (see
// loop.contest).
func (l *loop) move(s *sess, to netip.AddrPort) error {
	if s.closed.Load() {
		return fmt.Errorf("move: %w", session.ErrClosed)
	}
	to = netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
	if !to.IsValid() {
		return errors.New("session: move to an invalid address")
	}
	if to == s.PeerAddr() {
		return nil
	}
	ls := l.socks[s.scope]
	next := flowtable.TupleKey(s.scope, s.LocalAddr(), to)
	anchor := s.anchorEntry()
	if isTuple(anchor.Key()) {
		e := s.newEntry(next, anchor.Expires())
		if got, err := l.srv.table.Insert(e); err == nil && got == e {
			l.srv.table.Delete(anchor)
			s.anchor.Store(e)
		} else {
			// The anchor, and with it the old 4-tuple, has to stay.
			ls.stats.movesWithoutTuple.inc()
			yieldTo(s, got)
		}
	} else {
		l.replaceTuple(s, next)
	}
	s.setPeer(to)
	ls.stats.moved.inc()
	l.restart.note(s)
	return nil
}

// replaceTuple makes next s's 4-tuple key among its further keys.
func (l *loop) replaceTuple(s *sess, next flowtable.Key) {
	old := s.keyEntries()
	keep := make([]*entry, 0, len(old)+1)
	for _, e := range old {
		if isTuple(e.Key()) {
			l.srv.table.Delete(e)
			continue
		}
		keep = append(keep, e)
	}
	e := s.newEntry(next, never)
	if got, err := l.srv.table.Insert(e); err == nil && got == e {
		keep = append(keep, e)
	} else {
		l.socks[s.scope].stats.movesWithoutTuple.inc()
		yieldTo(s, got)
	}
	s.setKeyEntries(keep)
}

// yieldTo closes the session of held, the entry of the 4-tuple that s has
// just moved to, if that session began to recover s's client there (s is
// one of its rivals): it yields to s now, as it would at its client's next
// datagram (loop.contest), which never comes while the kernel forwards the
// client's datagrams for s (a proxy's fast path). Safe from s's loop: a
// session's rivals never change once it is in the table, and Close is a
// request to its own loop.
func yieldTo(s *sess, held *entry) {
	if held == nil || held.Value == s {
		return
	}
	if o := held.Value; slices.Contains(o.rivals, s) {
		o.Close()
	}
}

func isTuple(k flowtable.Key) bool {
	return k.Kind() == flowtable.KindTuple4 || k.Kind() == flowtable.KindTuple6
}

// fileKeys files a new session, whose anchor is in the table, under its
// further keys: its 4-tuple, unless that is the anchor or another session
// holds it, and the ID of its first datagram, if any.
func (l *loop) fileKeys(s *sess, tuple, id flowtable.Key) {
	var es []*entry
	for _, k := range [2]flowtable.Key{tuple, id} {
		if k.Kind() == flowtable.KindNone || k == s.anchorEntry().Key() {
			continue
		}
		e := s.newEntry(k, never)
		if got, err := l.srv.table.Insert(e); err == nil && got == e {
			es = append(es, e)
		}
	}
	if es != nil {
		s.setKeyEntries(es)
	}
}

// unfileKeys takes s out of the table under every key.
func (l *loop) unfileKeys(s *sess) {
	l.srv.table.Delete(s.anchorEntry())
	for _, e := range s.keyEntries() {
		l.srv.table.Delete(e)
	}
}

// fileRestored files a session restored from a predecessor under keys, its
// anchor (which s has) first, and reports false, filing nothing, if the
// table is full or another session holds its anchor.
func (l *loop) fileRestored(s *sess, keys []flowtable.Key) bool {
	if e, err := l.srv.table.Insert(s.anchorEntry()); err != nil || e != s.anchorEntry() {
		return false
	}
	l.setKeys(s, keys, s.anchorEntry().Expires())
	return true
}

// setKeys makes keys s's keys, the first its anchor, with the given deadline
// if the anchor is new: for a session restored or updated from a
// predecessor's record. Keys another session holds are left out.
func (l *loop) setKeys(s *sess, keys []flowtable.Key, deadline int64) {
	if a := s.anchorEntry(); a.Key() != keys[0] {
		e := s.newEntry(keys[0], deadline)
		if got, err := l.srv.table.Insert(e); err == nil && got == e {
			l.srv.table.Delete(a)
			s.anchor.Store(e)
		}
	}
	old := s.keyEntries()
	var es []*entry
	for _, e := range old {
		if slices.Contains(keys[1:], e.Key()) {
			es = append(es, e)
		} else {
			l.srv.table.Delete(e)
		}
	}
	for _, k := range keys[1:] {
		if s.holds(k) {
			continue
		}
		e := s.newEntry(k, never)
		if got, err := l.srv.table.Insert(e); err == nil && got == e {
			es = append(es, e)
		}
	}
	s.setKeyEntries(es)
}
