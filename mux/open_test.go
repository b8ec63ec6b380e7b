//go:build linux

package mux

import (
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/udpmux/udpmux/session"
)

// firstDatagram is a session.DatagramOpener that keeps a copy of the
// datagram that created each session and answers every datagram with it,
// and refuses sessions whose first datagram is "no". Open must not run.
type firstDatagram struct{ opens atomic.Int32 }

func (h *firstDatagram) Open(session.Session) error {
	h.opens.Add(1)
	return errors.New("Open called for a session created by a datagram")
}

func (h *firstDatagram) OpenDatagram(s session.Session, p []byte) error {
	if string(p) == "no" {
		return errors.New("refused by its first datagram")
	}
	s.SetState(string(p)) // a copy: p is the loop's
	return nil
}

func (h *firstDatagram) Datagram(s session.Session, p []byte) {
	s.Write(append([]byte(s.State().(string)+" "), p...))
}

func (h *firstDatagram) Close(session.Session, session.Reason) {}

// TestOpenDatagram: for a session.DatagramOpener the engine calls
// OpenDatagram with the datagram that creates the session, in place of
// Open, once per session, and a refusal refuses the session as Open's
// does.
func TestOpenDatagram(t *testing.T) {
	h := &firstDatagram{}
	cfg := echoConfig("127.0.0.1:0", 2)
	cfg.Listeners[0].Handler = h
	srv := serve(t, cfg)
	c := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	exchange := func(send, want string) {
		t.Helper()
		if _, err := c.Write([]byte(send)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 100)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("sent %q: got %q, %v; want %q", send, buf[:n], err, want)
		}
	}
	exchange("hello", "hello hello")
	exchange("again", "hello again")

	refused := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	refused.Write([]byte("no"))
	waitFor(t, 5*time.Second, "one session refused", func() bool { return srv.Stats().Listeners[0].RefusedOpen == 1 })
	// The refusal left nothing behind: the client's next datagram opens a
	// session of its own.
	c = refused
	exchange("yes", "yes yes")

	st := srv.Stats()
	if n := h.opens.Load(); n != 0 || st.Sessions != 2 || st.Listeners[0].SessionsOpened != 2 {
		t.Errorf("Open ran %d times, %d live sessions, %d opened; want 0, 2, 2", n, st.Sessions, st.Listeners[0].SessionsOpened)
	}
}
