//go:build linux

package proxy

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/udpmux/udpmux/proxy/check"
)

// TestCheckedTransitions walks one backend through health probe results
// and refusals (default Rise 2, Fall 3, back-off 5 s), checking its
// health, the transitions and the events at each step.
func TestCheckedTransitions(t *testing.T) {
	const s = time.Second
	clk := newFakeClock()
	var events []string
	b := newTestBalancer(t, PolicyMaglev, 3, clk, func(e HealthEvent) {
		events = append(events, fmt.Sprintf("up=%v check=%v %s", e.Up, e.Check, e.Reason))
	})
	const be = 1
	fail := errors.New("no answer")
	type op int
	const (
		ok op = iota
		bad
		markDown // a passive refusal verdict
		markUp   // a datagram from the backend
		refresh
	)
	steps := []struct {
		at      time.Duration
		op      op
		changed bool // Checked's result, or MarkDown's/MarkUp's
		healthy bool
		check   string
		event   string
	}{
		{0, ok, false, true, "up", ""},
		{1 * s, bad, false, true, "up", ""},
		{2 * s, bad, false, true, "up", ""},
		{3 * s, ok, false, true, "up", ""}, // a run broken: counts afresh
		{4 * s, bad, false, true, "up", ""},
		{5 * s, bad, false, true, "up", ""},
		{6 * s, bad, true, false, "down", "up=false check=true no answer"},
		{7 * s, bad, false, false, "down", ""},
		{8 * s, markUp, false, false, "down", ""}, // a session's datagram does not outvote the probes
		{9 * s, ok, false, false, "down", ""},
		{10 * s, bad, false, false, "down", ""},
		{11 * s, ok, false, false, "down", ""},
		{12 * s, ok, true, true, "up", "up=true check=true "},
		// Refusals while the checks pass: the passive signal takes it out
		// on its own account, and an answered probe brings it back.
		{13 * s, markDown, true, false, "up", "up=false check=false "},
		{14 * s, ok, false, true, "up", "up=true check=false "},
		// Both signals down: one event each way.
		{15 * s, markDown, true, false, "up", "up=false check=false "},
		{16 * s, bad, false, false, "up", ""},
		{17 * s, bad, false, false, "up", ""},
		{18 * s, bad, true, false, "down", ""},      // already out: no event
		{21 * s, refresh, false, false, "down", ""}, // back-off over, checks still down
		{22 * s, ok, false, false, "down", ""},
		{23 * s, ok, true, true, "up", "up=true check=true "},
	}
	for i, st := range steps {
		clk.Set(st.at)
		events = nil
		var changed bool
		switch st.op {
		case ok:
			changed = b.Checked(be, nil, clk.Now())
		case bad:
			changed = b.Checked(be, fail, clk.Now())
		case markDown:
			changed = b.MarkDown(be, clk.Now())
		case markUp:
			changed = b.MarkUp(be)
		case refresh:
			changed = b.Refresh(clk.Now()) > 0
		}
		got := b.Status(be)
		if changed != st.changed || got.Healthy != st.healthy || got.Check != st.check {
			t.Fatalf("step %d (%v, op %d): changed %v healthy %v check %q; want %v %v %q",
				i, st.at, st.op, changed, got.Healthy, got.Check, st.changed, st.healthy, st.check)
		}
		if want := st.event; (want == "") != (len(events) == 0) || (want != "" && events[0] != want) || len(events) > 1 {
			t.Fatalf("step %d (%v): events %q; want %q", i, st.at, events, want)
		}
		for range 3 {
			if p, _ := b.Pick(uint64(i)); p == be && !st.healthy {
				t.Fatalf("step %d: picked backend %d, which is out", i, be)
			}
		}
		if got.Healthy != b.Available(be) || got.Healthy == b.Down(be) {
			t.Fatalf("step %d: Status, Available and Down disagree", i)
		}
	}
	st := b.Status(be)
	if st.LastFailure == nil || st.LastFailure.Reason != "no answer" || !st.LastFailure.At.Equal(clk.At(18*s)) {
		t.Fatalf("last failure %+v", st.LastFailure)
	}
	if st.ProbesOK != 8 || st.ProbesFailed != 10 {
		t.Fatalf("probes ok %d failed %d", st.ProbesOK, st.ProbesFailed)
	}
	if other := b.Status(0); other.Check != "up" || other.LastFailure != nil {
		t.Fatalf("an unprobed backend: %+v", other)
	}
}

func TestCheckConfigNormalize(t *testing.T) {
	p := check.QUIC{}
	tests := []struct {
		name string
		cfg  CheckConfig
		want string // substring of the error; "" for success
	}{
		{"defaults", CheckConfig{Probe: p}, ""},
		{"timeout as the interval", CheckConfig{Probe: p, Interval: 500 * time.Millisecond}, ""},
		{"no probe", CheckConfig{}, "without a probe"},
		{"negative", CheckConfig{Probe: p, Interval: -1}, "negative"},
		{"timeout past the interval", CheckConfig{Probe: p, Interval: time.Second, Timeout: 2 * time.Second}, "longer than its interval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.cfg.normalize()
			if tt.want == "" {
				if err != nil || c.Timeout > c.Interval || c.Interval == 0 {
					t.Fatalf("%+v, %v", c, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v; want %q", err, tt.want)
			}
		})
	}
}

// checkBackend is a backend on a loopback socket whose answers to health
// probes the test switches: answered (answer), silent (nil), or forged
// (an answer with the request's identifier changed, from the backend's
// own address and port, as an attacker who can spoof the backend but not
// read the request would at best send).
type checkBackend struct {
	conn   *net.UDPConn
	answer atomic.Pointer[func(req []byte) []byte]
	seen   atomic.Int64 // requests received
	wg     sync.WaitGroup
}

func newCheckBackend(t *testing.T, addr string) *checkBackend {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	b := &checkBackend{conn: c}
	b.wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			b.seen.Add(1)
			if f := b.answer.Load(); f != nil {
				if p := (*f)(buf[:n]); p != nil {
					c.WriteToUDPAddrPort(p, from)
				}
			}
		}
	})
	t.Cleanup(func() { c.Close(); b.wg.Wait() })
	return b
}

func (b *checkBackend) set(f func(req []byte) []byte) {
	if f == nil {
		b.answer.Store(nil)
		return
	}
	b.answer.Store(&f)
}

// Answers of the test backends to each probe, right and forged.
func ovpnAnswer(forge bool) func(req []byte) []byte {
	return func(req []byte) []byte {
		p := []byte{8 << 3, 1, 2, 3, 4, 5, 6, 7, 8, 1, 0, 0, 0, 0}
		p = append(p, req[1:9]...)
		if forge {
			p[len(p)-1] ^= 1
		}
		return append(p, 0, 0, 0, 0)
	}
}

func quicAnswer(forge bool) func(req []byte) []byte {
	return func(req []byte) []byte {
		dcid, scid := req[6:14], req[15:23]
		p := []byte{0x80, 0, 0, 0, 0, 8}
		p = append(p, scid...)
		p = append(p, 8)
		p = append(p, dcid...)
		if forge {
			p[6] ^= 1
		}
		return binary.BigEndian.AppendUint32(p, 1)
	}
}

func genericAnswer(forge bool) func(req []byte) []byte {
	return func(req []byte) []byte {
		if forge {
			return []byte("pong 0123456789abcdef")
		}
		return append([]byte("pong "), req[5:]...)
	}
}

// wgAnswer answers with a cookie reply, which the backend sends under
// load, sealed for the initiation's mac1 (the forgery: for another one).
func wgAnswer(spub [32]byte, forge bool) func(req []byte) []byte {
	return func(req []byte) []byte {
		p := make([]byte, 64)
		p[0] = 3
		copy(p[4:8], req[4:8])
		rand.Read(p[8:32])
		key := blake2s.Sum256(append([]byte("cookie--"), spub[:]...))
		aead, _ := chacha20poly1305.NewX(key[:])
		mac1 := append([]byte(nil), req[116:132]...)
		if forge {
			mac1[0] ^= 1
		}
		aead.Seal(p[32:32], p[8:32], make([]byte, 16), mac1)
		return p
	}
}

// TestRunChecks runs a proxy's health checks over real sockets against a
// backend for each probe, beside one that always answers: the backend is
// marked down within Fall intervals of falling silent (hung) or closing
// its socket (refused), stays down while forged answers from its own
// address and port come in, and is back within Rise intervals of
// answering again; the other backend never leaves, and every probe socket
// is closed at the end.
func TestRunChecks(t *testing.T) {
	spriv, _ := ecdh.X25519().GenerateKey(rand.Reader)
	hpriv, _ := ecdh.X25519().GenerateKey(rand.Reader)
	var spub [32]byte
	copy(spub[:], spriv.PublicKey().Bytes())
	wgProbe, err := check.NewWireGuard([32]byte(hpriv.Bytes()), spub)
	if err != nil {
		t.Fatal(err)
	}
	ovpn, _ := check.NewOpenVPN(check.OpenVPNConfig{})
	gen, _ := check.NewGeneric(check.GenericConfig{Send: "ping {nonce}", Prefix: "pong {nonce}"})
	cases := []struct {
		name   string
		probe  check.Probe
		answer func(forge bool) func([]byte) []byte
	}{
		{"openvpn", ovpn, ovpnAnswer},
		{"quic", check.QUIC{}, quicAnswer},
		{"generic", gen, genericAnswer},
		{"wireguard", wgProbe, func(forge bool) func([]byte) []byte { return wgAnswer(spub, forge) }},
	}
	const (
		interval = 50 * time.Millisecond
		timeout  = 40 * time.Millisecond
		rise     = 2
		fall     = 3
		// slack covers the first probe's random delay, one probe in
		// flight and scheduling on a loaded machine.
		slack = 2*interval + 2*time.Second
	)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			good := newCheckBackend(t, "127.0.0.1:0")
			good.set(c.answer(false))
			addr := fmt.Sprintf("127.0.%d.2:%d", i+1, 20000+i)
			sick := newCheckBackend(t, addr)
			sick.set(c.answer(false))
			h, err := New(Config{
				Backends: []netip.AddrPort{good.conn.LocalAddr().(*net.UDPAddr).AddrPort(), netip.MustParseAddrPort(addr)},
				Health:   HealthConfig{Rise: rise, Fall: fall},
				Check:    &CheckConfig{Probe: c.probe, Interval: interval, Timeout: timeout},
				Logger:   slog.New(slog.DiscardHandler),
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { h.RunChecks(ctx); close(done) }()
			defer func() { cancel(); <-done }()

			// waitCheck polls until the sick backend's check reads want
			// and returns how long that took.
			waitCheck := func(want string, within time.Duration, what string) time.Duration {
				t.Helper()
				start := time.Now()
				for {
					st := h.Stats().Backends
					if st[0].Check != "up" || !st[0].Healthy {
						t.Fatalf("%s: the answering backend is %+v", what, st[0])
					}
					if st[1].Check == want {
						return time.Since(start)
					}
					if time.Since(start) > within {
						t.Fatalf("%s: backend check %q after %v; want %q (%+v)", what, st[1].Check, within, want, st[1])
					}
					time.Sleep(5 * time.Millisecond) // polling, bounded by within
				}
			}
			pickable := func() bool {
				h.bal.settle() // the Maglev table of the new healthy set
				for k := range uint64(64) {
					if b, _ := h.bal.Pick(k * 0x9e3779b97f4a7c15); b == 1 {
						return true
					}
				}
				return false
			}
			// Up from the start; wait for answered probes.
			for deadline := time.Now().Add(slack); h.Stats().Backends[1].ProbesOK < 2; {
				if time.Now().After(deadline) {
					t.Fatalf("no answered probe: %+v", h.Stats().Backends[1])
				}
				time.Sleep(5 * time.Millisecond)
			}
			sick.set(nil) // hung
			d := waitCheck("down", fall*interval+slack, "hung")
			if pickable() {
				t.Fatal("a backend that is down is picked")
			}
			if r := h.Stats().Backends[1].LastFailure; r == nil || !strings.Contains(r.Reason, "timeout") {
				t.Fatalf("last failure %+v; want a timeout", r)
			}
			t.Logf("hung: down after %v", d)

			sick.set(c.answer(true)) // forged answers from the backend's address and port
			seen := sick.seen.Load()
			for deadline := time.Now().Add(rise*interval + slack); time.Now().Before(deadline) || sick.seen.Load() < seen+2*rise; {
				if st := h.Stats().Backends[1]; st.Check != "down" || st.Healthy {
					t.Fatalf("forged answers brought the backend up: %+v", st)
				}
				if time.Now().After(deadline.Add(5 * time.Second)) {
					t.Fatal("too few probes while forging")
				}
				time.Sleep(5 * time.Millisecond)
			}
			if r := h.Stats().Backends[1].LastFailure; r == nil || !strings.Contains(r.Reason, "not the backend's answer") {
				t.Fatalf("last failure %+v; want a refused answer", r)
			}

			sick.set(c.answer(false))
			d = waitCheck("up", rise*interval+slack, "answering again")
			if !pickable() {
				t.Fatal("a backend that is up is never picked")
			}
			t.Logf("up again after %v", d)

			sick.conn.Close() // stopped: the kernel refuses the probes
			sick.wg.Wait()
			d = waitCheck("down", fall*interval+slack, "stopped")
			if r := h.Stats().Backends[1].LastFailure; r == nil || !strings.Contains(r.Reason, "refused") {
				t.Fatalf("last failure %+v; want a refusal", r)
			}
			t.Logf("stopped: down after %v", d)
			cancel()
			<-done
			if n := socketsTo(t, h.backends...); n != 0 {
				t.Fatalf("%d probe sockets left open", n)
			}
		})
	}
}

// socketsTo counts the IPv4 UDP sockets of this network namespace
// connected to any of addrs (/proc/net/udp: the remote address as hex of
// its bytes in memory order, a colon and the port in hex).
func socketsTo(t *testing.T, addrs ...netip.AddrPort) int {
	t.Helper()
	text, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(text), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		host, port, _ := strings.Cut(f[2], ":")
		a, err1 := strconv.ParseUint(host, 16, 32)
		p, err2 := strconv.ParseUint(port, 16, 16)
		if err1 != nil || err2 != nil {
			t.Fatalf("/proc/net/udp: %q", line)
		}
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], uint32(a))
		for _, want := range addrs {
			if want == netip.AddrPortFrom(netip.AddrFrom4(b), uint16(p)) {
				n++
			}
		}
	}
	return n
}
