//go:build linux

package mux

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/prereq"
	"github.com/udpmux/udpmux/session"
)

// sourceRelay relays each session to backend over a socket that sends from
// the session's client address, and answers the client with the backend's
// replies; refused records each dial it could not make.
type sourceRelay struct {
	backend netip.AddrPort
	mu      sync.Mutex
	refused []error
}

func (h *sourceRelay) Open(s session.Session) error {
	k, err := s.Dial(h.backend, session.DialOptions{Source: s.PeerAddr()})
	if err != nil {
		h.mu.Lock()
		h.refused = append(h.refused, err)
		h.mu.Unlock()
		return err
	}
	s.SetState(k)
	return nil
}
func (h *sourceRelay) Datagram(s session.Session, p []byte)  { s.State().(session.Socket).Write(p) }
func (h *sourceRelay) Close(session.Session, session.Reason) {}
func (h *sourceRelay) Upstream(s session.Session, _ session.Socket, p []byte) {
	s.Write(p)
}
func (h *sourceRelay) UpstreamError(session.Session, session.Socket, error) {}

func (h *sourceRelay) errs() []error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]error(nil), h.refused...)
}

// reusable binds a UDP socket to addr with SO_REUSEADDR, as a client on
// this host must be for a socket of udpmux's to send from its address too.
func reusable(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
		return err
	}}
	pc, err := lc.ListenPacket(t.Context(), "udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.(*net.UDPConn)
}

// echoFrom starts a backend that answers each datagram with its sender's
// address.
func echoFrom(t *testing.T) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort([]byte(from.String()), from)
		}
	}()
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// whoAmI sends from c to to and returns the answer, or "" after a second.
func whoAmI(t *testing.T, c *net.UDPConn, to netip.AddrPort) string {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort([]byte("who"), to); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	c.SetReadDeadline(time.Now().Add(time.Second))
	n, _, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

// TestDialFromSource: a session's socket dialed with a Source sends from
// it, so that its backend sees the client; one client address may be the
// source of sockets to several backends (sessions of two listeners), but
// not of two to the same backend, whose replies the kernel could not tell
// apart: that dial fails with session.ErrSourceInUse, until the first
// socket closes. Over loopback, where every 127/8 address is this host's
// and replies come back without policy routing.
func TestDialFromSource(t *testing.T) {
	if os.Geteuid() != 0 {
		prereq.Missing(t, "needs root: IP_TRANSPARENT needs CAP_NET_ADMIN or CAP_NET_RAW")
	}
	b1, b2 := echoFrom(t), echoFrom(t)
	for _, tc := range []struct {
		name     string
		backends [2]netip.AddrPort
		inUse    bool
	}{
		{"two backends", [2]netip.AddrPort{b1, b2}, false},
		{"one backend", [2]netip.AddrPort{b1, b1}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := [2]*sourceRelay{{backend: tc.backends[0]}, {backend: tc.backends[1]}}
			cfg := Config{Workers: 2}
			for i, h := range hs {
				cfg.Listeners = append(cfg.Listeners, ListenerConfig{Name: string(rune('a' + i)), Address: netip.MustParseAddrPort("127.0.0.1:0"), Handler: h, IdleTimeout: time.Hour})
			}
			srv := serve(t, cfg)
			client := reusable(t, "127.0.4.1:0")
			me := client.LocalAddr().String()
			if got := whoAmI(t, client, srv.Addr(0)); got != me {
				t.Fatalf("backend saw %q; want the client's address %s", got, me)
			}
			got := whoAmI(t, client, srv.Addr(1))
			switch errs := hs[1].errs(); {
			case !tc.inUse && got != me:
				t.Errorf("the second listener's backend saw %q (dials refused: %v); want %s", got, errs, me)
			case tc.inUse && (got != "" || len(errs) == 0 || !errors.Is(errs[0], session.ErrSourceInUse)):
				t.Errorf("a second socket from %s to %v: answer %q, dials refused %v; want refused with %v", me, tc.backends[1], got, errs, session.ErrSourceInUse)
			}
			if !tc.inUse {
				return
			}
			// Once the first session has ended, its pair is free.
			srv.Sessions(func(s session.Session) bool {
				if s.Key().Scope() == 0 {
					s.Close()
				}
				return true
			})
			deadline := time.Now().Add(2 * time.Second)
			for got = whoAmI(t, client, srv.Addr(1)); got != me && time.Now().Before(deadline); got = whoAmI(t, client, srv.Addr(1)) {
			}
			if got != me {
				t.Errorf("after the first session ended the backend saw %q; want %s", got, me)
			}
		})
	}
}
