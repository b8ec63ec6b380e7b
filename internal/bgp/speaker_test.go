package bgp

import (
	"bytes"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	gbgp "github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// testVIP is the prefix the tests that need no router announce.
var testVIP = netip.MustParsePrefix("198.18.100.10/32")

// syncWriter serializes writes to w, for a log written from several
// goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.(*bytes.Buffer).String()
}

func TestAPIPath(t *testing.T) {
	vip := testVIP
	med := uint32(7)
	p, err := apiPath(Route{Prefix: vip, Communities: []uint32{65000<<16 | 1}, MED: &med}, false)
	if err != nil {
		t.Fatal(err)
	}
	if p.Family != gbgp.RF_IPv4_UC || p.Nlri.String() != vip.String() || p.Withdrawal {
		t.Fatalf("path %+v", p)
	}
	var nh netip.Addr
	var gotMED *uint32
	var comms []uint32
	for _, a := range p.Attrs {
		switch a := a.(type) {
		case *gbgp.PathAttributeNextHop:
			nh = a.Value
		case *gbgp.PathAttributeMultiExitDisc:
			gotMED = &a.Value
		case *gbgp.PathAttributeCommunities:
			comms = a.Value
		}
	}
	if nh != netip.IPv4Unspecified() || gotMED == nil || *gotMED != 7 || len(comms) != 1 || comms[0] != 65000<<16|1 {
		t.Errorf("attributes: next hop %v (want 0.0.0.0: self), MED %v, communities %v", nh, gotMED, comms)
	}

	v6 := netip.MustParsePrefix("2001:db8::10/128")
	p, err = apiPath(Route{Prefix: v6, NextHop: netip.MustParseAddr("2001:db8::1")}, false)
	if err != nil || p.Family != gbgp.RF_IPv6_UC {
		t.Fatalf("IPv6 path %+v %v", p, err)
	}
	w, err := apiPath(Route{Prefix: v6}, true)
	if err != nil || !w.Withdrawal || len(w.Attrs) != 0 {
		t.Fatalf("withdrawal %+v %v", w, err)
	}
}

// TestSpeakerWithoutPeerUp runs a Speaker whose only peer never answers
// (a loopback address nothing listens on: no packet leaves the host) and
// checks its bookkeeping: announcements, withdrawals by reason, the peer's
// state, and Stop.
func TestSpeakerWithoutPeerUp(t *testing.T) {
	logs := &syncWriter{w: new(bytes.Buffer)}
	log := slog.New(slog.NewTextHandler(logs, nil))
	vip := testVIP
	cfg := Config{
		LocalAS:  65001,
		RouterID: netip.MustParseAddr("198.18.0.11"),
		Peers:    []Peer{{Address: netip.MustParseAddr("127.0.0.2"), AS: 65000, HoldTime: 3 * time.Second, BFD: &BFD{}}},
	}
	s, err := Start(t.Context(), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop(false)

	other := netip.MustParsePrefix("198.18.100.11/32")
	for _, r := range []Route{{Prefix: vip}, {Prefix: other}, {Prefix: vip, Communities: []uint32{1}}} {
		if err := s.Announce(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Announce(Route{Prefix: netip.MustParsePrefix("198.18.100.0/24")}); err == nil {
		t.Error("Announce of a /24 succeeded")
	}
	got := s.Announced()
	if len(got) != 2 || got[0].Prefix != vip || len(got[0].Communities) != 1 || got[1].Prefix != other {
		t.Fatalf("Announced() = %+v, want %s (replaced, with a community) and %s", got, vip, other)
	}
	got[0].Communities[0] = 99 // a copy
	if s.Announced()[0].Communities[0] != 1 {
		t.Error("Announced() shares the route's communities")
	}

	ps, err := s.Peers()
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Address != cfg.Peers[0].Address || ps[0].AS != 65000 ||
		ps[0].State == StateEstablished || ps[0].State == StateUnknown || ps[0].BFD != BFDDown || ps[0].Uptime != 0 {
		t.Errorf("Peers() = %+v, want the peer not Established, BFD Down", ps)
	}

	if err := s.Withdraw(other, "unhealthy"); err != nil {
		t.Fatal(err)
	}
	if err := s.Withdraw(other, "unhealthy"); err != nil {
		t.Fatal(err)
	}
	if w := s.Withdrawals(); len(w) != 1 || w["unhealthy"] != 1 {
		t.Errorf("Withdrawals() = %v, want unhealthy: 1", w)
	}
	if err := s.Stop(false); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(true); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if w := s.Withdrawals(); w["unhealthy"] != 1 || w[ReasonStop] != 1 {
		t.Errorf("Withdrawals() after Stop = %v, want unhealthy: 1, stop: 1", w)
	}
	if err := s.Announce(Route{Prefix: vip}); err == nil {
		t.Error("Announce after Stop succeeded")
	}
	if err := s.Withdraw(vip, "x"); err == nil {
		t.Error("Withdraw after Stop succeeded")
	}
	if _, err := s.Peers(); err == nil {
		t.Error("Peers after Stop succeeded")
	}
	if strings.Contains(logs.String(), "failed to stop") || strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("the log has errors:\n%s", logs.String())
	}
}
