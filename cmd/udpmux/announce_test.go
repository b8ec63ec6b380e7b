//go:build linux

package main

import (
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/udpmux/udpmux/internal/bgp"
	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/session"
)

// fakeSpeaker records what an announcer asks of its speaker.
type fakeSpeaker struct {
	mu          sync.Mutex
	log         []string
	routes      map[netip.Prefix]bgp.Route
	withdrawals map[string]uint64
	established bool
	stopped     bool
}

func newFakeSpeaker() *fakeSpeaker {
	return &fakeSpeaker{routes: map[netip.Prefix]bgp.Route{}, withdrawals: map[string]uint64{}, established: true}
}

func (f *fakeSpeaker) Announce(r bgp.Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes[r.Prefix] = r
	f.log = append(f.log, "announce "+r.Prefix.String())
	return nil
}

func (f *fakeSpeaker) Withdraw(p netip.Prefix, reason string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.routes, p)
	f.withdrawals[reason]++
	f.log = append(f.log, "withdraw "+p.String()+" "+reason)
	return nil
}

func (f *fakeSpeaker) Peers() ([]bgp.PeerState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := bgp.StateActive
	if f.established {
		st = bgp.StateEstablished
	}
	return []bgp.PeerState{{Address: netip.MustParseAddr("10.0.1.1"), AS: 65000, State: st}}, nil
}

func (f *fakeSpeaker) Announced() []bgp.Route {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []bgp.Route
	for _, r := range f.routes {
		out = append(out, r)
	}
	return out
}

func (f *fakeSpeaker) Withdrawals() map[string]uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := map[string]uint64{}
	for k, v := range f.withdrawals {
		m[k] = v
	}
	return m
}

func (f *fakeSpeaker) Stop(graceful bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return nil
	}
	f.stopped = true
	if !graceful {
		for p := range f.routes {
			f.withdrawals[bgp.ReasonStop]++
			delete(f.routes, p)
		}
	}
	f.log = append(f.log, "stop graceful="+map[bool]string{true: "true", false: "false"}[graceful])
	return nil
}

// took returns the calls since the last took.
func (f *fakeSpeaker) took() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.log
	f.log = nil
	return l
}

// testAnnouncer returns an announcer of two VIPs: 192.0.2.1 served by two
// listeners whose health the test sets, 192.0.2.2 by a listener without
// backends.
func testAnnouncer(t *testing.T) (*announcer, *fakeSpeaker, []*atomic.Bool) {
	t.Helper()
	ups := []*atomic.Bool{{}, {}}
	listeners := []mux.ListenerConfig{{Handler: session.Echo{}}, {Handler: session.Echo{}}, {Handler: session.Echo{}}}
	fleet := &fleetConfig{vips: []vip{
		{listener: 0, route: bgp.Route{Prefix: netip.MustParsePrefix("192.0.2.1/32")}},
		{listener: 1, route: bgp.Route{Prefix: netip.MustParsePrefix("192.0.2.1/32")}},
		{listener: 2, route: bgp.Route{Prefix: netip.MustParsePrefix("192.0.2.2/32")}},
	}}
	sp := newFakeSpeaker()
	a := newAnnouncer(sp, fleet, listeners, slog.New(slog.NewTextHandler(io.Discard, nil)))
	// The proxies' health, as the test sets it.
	a.prefixes[0].up = []func() bool{ups[0].Load, ups[1].Load}
	return a, sp, ups
}

func want(t *testing.T, sp *fakeSpeaker, calls ...string) {
	t.Helper()
	if got := sp.took(); !slices.Equal(got, calls) {
		t.Errorf("speaker calls %q; want %q", got, calls)
	}
}

// TestAnnouncerFollowsHealth: a VIP is announced while one of its listeners
// has a backend up, and withdrawn when none has.
func TestAnnouncerFollowsHealth(t *testing.T) {
	a, sp, ups := testAnnouncer(t)
	a.sync()
	want(t, sp, "announce 192.0.2.2/32")
	ups[1].Store(true)
	a.sync()
	want(t, sp, "announce 192.0.2.1/32")
	ups[0].Store(true)
	ups[1].Store(false)
	a.sync()
	want(t, sp)
	ups[0].Store(false)
	a.sync()
	want(t, sp, "withdraw 192.0.2.1/32 backends_down")
	a.sync()
	want(t, sp)
	st := a.status()
	if !slices.Equal(st.Announced, []string{"192.0.2.2/32"}) || st.Withdrawals[reasonBackendsDown] != 1 || len(st.Peers) != 1 || st.Peers[0].State != "established" {
		t.Errorf("status %+v", st)
	}
}

// TestAnnouncerDrainAndShutdown: a drain withdraws every VIP and holds them
// withdrawn whatever the health; shutdown then stops the speaker with its
// NOTIFICATION.
func TestAnnouncerDrainAndShutdown(t *testing.T) {
	a, sp, ups := testAnnouncer(t)
	ups[0].Store(true)
	a.sync()
	sp.took()
	a.withdrawAll(reasonDrain)
	want(t, sp, "withdraw 192.0.2.1/32 drain", "withdraw 192.0.2.2/32 drain")
	a.sync()
	want(t, sp)
	if a.status().Held != reasonDrain {
		t.Errorf("held %q", a.status().Held)
	}
	a.shutdown()
	want(t, sp, "stop graceful=false")
}

// TestAnnouncerShutdownWithdraws: SIGTERM withdraws the VIPs before the
// speaker stops, counted as shutdown.
func TestAnnouncerShutdownWithdraws(t *testing.T) {
	a, sp, _ := testAnnouncer(t)
	a.sync()
	sp.took()
	a.shutdown()
	want(t, sp, "withdraw 192.0.2.2/32 shutdown", "stop graceful=false")
	a.shutdown()
	want(t, sp)
}

// TestAnnouncerHandsOver: after a handoff nothing is withdrawn; the speaker
// stops without a NOTIFICATION, and a later shutdown (SIGTERM to the old
// process) does nothing.
func TestAnnouncerHandsOver(t *testing.T) {
	a, sp, ups := testAnnouncer(t)
	ups[0].Store(true)
	a.sync()
	sp.took()
	a.handOver(0)
	want(t, sp, "stop graceful=true")
	ups[0].Store(false)
	a.sync()
	a.shutdown()
	want(t, sp)
	if st := a.status(); len(st.Announced) != 2 || !strings.Contains(st.Held, "handed over") {
		t.Errorf("status %+v", st)
	}
}
