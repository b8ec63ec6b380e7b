//go:build linux

package proxy

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// hello opens a session from a new client socket, which stays open until
// the test ends (so that no later client reuses its port, and with it the
// session), and returns the name of the backend that answered.
func hello(t *testing.T, to netip.AddrPort, msg string) string {
	t.Helper()
	name, payload, ok := strings.Cut(exchange(client(t, to), msg, 5*time.Second), "|")
	if !ok || payload != msg {
		t.Fatalf("no reply to %q", msg)
	}
	return name
}

// TestProxyWeightedSplit: through the engine, with real sockets, weights
// 3:1 split 4 000 new sessions within ±5 % of 3:1 under every policy. The
// listener, the backends and the clients have fixed addresses, so that
// Maglev builds the same table and sees the same keys in every run: its split is the table's 3:1 plus the sampling
// noise of 4 000 keys (σ ≈ 2.7 % of the lighter backend's 1 000), which
// random ports would make a coin toss at this bound.
func TestProxyWeightedSplit(t *testing.T) {
	for i, p := range []Policy{PolicyMaglev, PolicyLeastSessions, PolicyRoundRobin} {
		t.Run(p.String(), func(t *testing.T) {
			b1 := startBackendAt(t, "b1", &net.UDPAddr{IP: net.IPv4(127, 77, 3, 3), Port: 9200 + i})
			b2 := startBackendAt(t, "b2", &net.UDPAddr{IP: net.IPv4(127, 77, 3, 4), Port: 9200 + i})
			at := netip.AddrPortFrom(netip.MustParseAddr("127.77.3.1"), uint16(9100+i))
			srv, h := startProxyAt(t, at, Config{Backends: []netip.AddrPort{b1.addr(), b2.addr()}, Weights: []int{3, 1}, Balance: p}, time.Minute, 10000)
			const sessions = 4000
			landed := map[string]int{}
			for j := range sessions {
				from := &net.UDPAddr{IP: net.IPv4(127, 77, 3, 2), Port: 20000 + j}
				c, err := net.DialUDP("udp4", from, net.UDPAddrFromAddrPort(srv.Addr(0)))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				name, _, _ := strings.Cut(exchange(c, "hello", 5*time.Second), "|")
				landed[name]++
			}
			ratio := float64(landed["b1"]) / float64(landed["b2"])
			t.Logf("%s: %d sessions, b1 (weight 3) %d, b2 (weight 1) %d: %.3f:1", p, sessions, landed["b1"], landed["b2"], ratio)
			if math.Abs(ratio-3)/3 > 0.05 {
				t.Errorf("split %v = %.3f:1, more than 5 %% off 3:1", landed, ratio)
			}
			if st := h.Stats(); st.Backends[0].Sessions != int64(landed["b1"]) || st.Backends[1].Sessions != int64(landed["b2"]) {
				t.Errorf("status counts %d and %d sessions, the backends answered %v", st.Backends[0].Sessions, st.Backends[1].Sessions, landed)
			}
		})
	}
}

// TestProxyDrainKeepsLiveSessions: a drained backend gets no new session
// and keeps serving its live ones, from the same source address, until it
// is enabled again.
func TestProxyDrainKeepsLiveSessions(t *testing.T) {
	for _, p := range []Policy{PolicyMaglev, PolicyLeastSessions, PolicyRoundRobin} {
		t.Run(p.String(), func(t *testing.T) {
			b1, b2 := startBackend(t, "b1"), startBackend(t, "b2")
			srv, h := startProxy(t, Config{Backends: []netip.AddrPort{b1.addr(), b2.addr()}, Balance: p}, time.Minute, 1000)
			var live []*net.UDPConn
			var on []string
			for i := 0; len(live) < 20 || !hasBoth(on); i++ {
				if i > 200 {
					t.Fatalf("live sessions on %v only", on)
				}
				c := client(t, srv.Addr(0))
				name, _, _ := strings.Cut(exchange(c, "hello", 5*time.Second), "|")
				live, on = append(live, c), append(on, name)
			}
			if changed, err := h.Drain(b1.addr()); err != nil || !changed {
				t.Fatalf("Drain = %v, %v", changed, err)
			}
			if changed, _ := h.Drain(b1.addr()); changed {
				t.Error("a second Drain changed something")
			}
			sources := b1.sources()
			for i := range 40 {
				if name := hello(t, srv.Addr(0), fmt.Sprint("new", i)); name != "b2" {
					t.Fatalf("new session %d went to drained %s", i, name)
				}
			}
			for i, c := range live {
				if name, _, _ := strings.Cut(exchange(c, "again", 5*time.Second), "|"); name != on[i] {
					t.Fatalf("live session %d answered by %q, was on %s", i, name, on[i])
				}
			}
			after := b1.sources()
			if len(after) != len(sources) {
				t.Errorf("b1 saw %d sources before the drain, %d after: its live sessions moved or new ones came", len(sources), len(after))
			}
			st := h.Stats()
			if !st.Backends[0].Drained || st.Backends[1].Drained || st.Backends[0].Sessions == 0 {
				t.Errorf("status %+v: want b1 drained with its sessions", st.Backends)
			}
			if changed, err := h.Enable(b1.addr()); err != nil || !changed {
				t.Fatalf("Enable = %v, %v", changed, err)
			}
			got := map[string]bool{}
			for i := 0; !got["b1"]; i++ {
				if i > 100 {
					t.Fatal("no new session on b1 once enabled")
				}
				got[hello(t, srv.Addr(0), fmt.Sprint("back", i))] = true
			}
		})
	}
}

func hasBoth(on []string) bool {
	return strings.Contains(strings.Join(on, ","), "b1") && strings.Contains(strings.Join(on, ","), "b2")
}

// TestHandlerBackendErrors: the run-time changes name what they refuse.
func TestHandlerBackendErrors(t *testing.T) {
	u := newUnit(t, 2, Config{})
	gone := netip.MustParseAddrPort("127.0.0.1:9")
	u.h.bal.retire(gone)
	tests := []struct {
		name string
		do   func() error
		want string
	}{
		{"drain", func() error { _, err := u.h.Drain(u.h.backends[0]); return err }, ""},
		{"enable", func() error { _, err := u.h.Enable(u.h.backends[0]); return err }, ""},
		{"weight", func() error { return u.h.SetWeight(u.h.backends[1], 7) }, ""},
		{"drain unknown", func() error { _, err := u.h.Drain(netip.MustParseAddrPort("127.0.0.2:1")); return err }, "127.0.0.2:1 is not a backend of this listener"},
		{"enable retired", func() error { _, err := u.h.Enable(gone); return err }, "backend 127.0.0.1:9 is retired"},
		{"weight too large", func() error { return u.h.SetWeight(u.h.backends[1], MaxWeight+1) }, "backend 127.0.0.1:40002: proxy: weight 1001 is not within 0..1000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.do()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
	if st := u.h.Stats(); st.Backends[1].Weight != 7 || st.Backends[0].Drained {
		t.Errorf("backends %+v", st.Backends)
	}
}

// TestRecoveryAsksDrainedBackends: a drained backend's sessions live on,
// so a recovery asks it as any healthy backend, even when every backend is
// drained.
func TestRecoveryAsksDrainedBackends(t *testing.T) {
	for _, drained := range []int{1, 3} {
		t.Run(fmt.Sprint(drained, " drained"), func(t *testing.T) {
			u := newRecoveryUnit(t, 3, RecoveryConfig{Fanout: 3}, Config{})
			for i := range drained {
				u.h.Drain(u.h.backends[i])
			}
			s, err := u.recover("198.51.100.1:1000", "first")
			if err != nil {
				t.Fatal(err)
			}
			asked := map[netip.AddrPort]bool{}
			for _, k := range s.Sockets() {
				asked[k.RemoteAddr()] = true
			}
			if len(asked) != 3 {
				t.Errorf("asked %v; want all three backends", asked)
			}
		})
	}
}

// TestRouteToDrainedBackend: a connection ID of a drained backend's server
// ID still goes to it (the connection is its), while a client's first
// Initial, a new connection, never does.
func TestRouteToDrainedBackend(t *testing.T) {
	u := newRouteUnit(t, true)
	u.h.Drain(u.h.backends[0])
	if s := u.openWith("198.51.100.1:1000", oneRTT(serverCID(t, routeIDs[0]))); u.backendOf(s) != 0 {
		t.Errorf("a connection of the drained backend's went to backend %d", u.backendOf(s))
	}
	for i := range 50 {
		if s := u.openWith(fmt.Sprintf("198.51.100.2:%d", 2000+i), clientInitial(clientDCID(i))); u.backendOf(s) == 0 {
			t.Fatalf("client %d's Initial went to the drained backend", i)
		}
	}
}
