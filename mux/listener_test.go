//go:build linux

package mux

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

func listen(t *testing.T, cfg ListenConfig) *Listener {
	t.Helper()
	cfg.Logger = quietLogger()
	ln, err := cfg.Listen(context.Background(), "udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func accept(t *testing.T, ln *Listener) net.Conn {
	t.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.c
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return within 5s")
		return nil
	}
}

func TestListenerAcceptReadWrite(t *testing.T) {
	ln := listen(t, ListenConfig{Workers: 2})
	client := dial(t, "udp4", netip.AddrPort{}, netip.MustParseAddrPort(ln.Addr().String()))
	client.Write([]byte("hello"))
	c := accept(t, ln)
	if c.RemoteAddr().String() != client.LocalAddr().String() {
		t.Errorf("RemoteAddr %s, want %s", c.RemoteAddr(), client.LocalAddr())
	}
	buf := make([]byte, 64)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("Read: %q, %v", buf[:n], err)
	}
	if _, err := c.Write([]byte("world")); err != nil {
		t.Fatal(err)
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err = client.Read(buf)
	if err != nil || string(buf[:n]) != "world" {
		t.Fatalf("client Read: %q, %v", buf[:n], err)
	}
	// A second peer is a second Conn.
	other := dial(t, "udp4", netip.AddrPort{}, netip.MustParseAddrPort(ln.Addr().String()))
	other.Write([]byte("x"))
	if c2 := accept(t, ln); c2.RemoteAddr().String() == c.RemoteAddr().String() {
		t.Error("second peer got the first peer's Conn")
	}
}

func TestConnReadDeadline(t *testing.T) {
	ln := listen(t, ListenConfig{})
	client := dial(t, "udp4", netip.AddrPort{}, netip.MustParseAddrPort(ln.Addr().String()))
	client.Write([]byte("a"))
	c := accept(t, ln)
	c.Read(make([]byte, 8))
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read after deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	c.SetReadDeadline(time.Time{})
	client.Write([]byte("b"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 8)); err != nil || n != 1 {
		t.Fatalf("Read after clearing the deadline: %d, %v", n, err)
	}
}

func TestConnQueueOverflowIsCounted(t *testing.T) {
	ln := listen(t, ListenConfig{Workers: 1, ConnQueue: 4})
	client := dial(t, "udp4", netip.AddrPort{}, netip.MustParseAddrPort(ln.Addr().String()))
	for i := 0; i < 10; i++ {
		client.Write([]byte{byte(i)})
	}
	c := accept(t, ln)
	// The receive counter moves before delivery; the drop counter after.
	waitFor(t, 5*time.Second, "6 datagrams dropped from a full queue", func() bool {
		_, drops := ln.Stats()
		return drops.QueueFull == 6
	})
	buf := make([]byte, 8)
	for want := 0; want < 4; want++ {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(buf); err != nil || n != 1 || buf[0] != byte(want) {
			t.Fatalf("datagram %d: %v %v", want, buf[:n], err)
		}
	}
}

func TestAcceptBacklogFullRefusesSession(t *testing.T) {
	ln := listen(t, ListenConfig{Workers: 1, AcceptBacklog: 1})
	addr := netip.MustParseAddrPort(ln.Addr().String())
	dial(t, "udp4", netip.AddrPort{}, addr).Write([]byte("first"))
	dial(t, "udp4", netip.AddrPort{}, addr).Write([]byte("second"))
	waitFor(t, 5*time.Second, "one session refused", func() bool {
		_, drops := ln.Stats()
		return drops.BacklogFull == 1
	})
}

func TestConnEndsWithEOFWhenIdle(t *testing.T) {
	ln := listen(t, ListenConfig{IdleTimeout: time.Second})
	client := dial(t, "udp4", netip.AddrPort{}, netip.MustParseAddrPort(ln.Addr().String()))
	client.Write([]byte("a"))
	c := accept(t, ln)
	c.Read(make([]byte, 8))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 8)); err != io.EOF {
		t.Fatalf("Read of an idle session: %v, want io.EOF", err)
	}
}

func TestListenerCloseUnblocksEverything(t *testing.T) {
	ln := listen(t, ListenConfig{})
	client := dial(t, "udp4", netip.AddrPort{}, netip.MustParseAddrPort(ln.Addr().String()))
	client.Write([]byte("a"))
	c := accept(t, ln)
	c.Read(make([]byte, 8))
	readErr := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 8))
		readErr <- err
	}()
	ln.Close()
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v", err)
	}
	select {
	case err := <-readErr:
		if err != io.EOF {
			t.Errorf("Read after listener Close: %v, want io.EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked 5s after the listener closed")
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Error("Write after the listener closed succeeded")
	}
	c.Close()
	if _, err := c.Read(nil); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v", err)
	}
}

// handConn returns a Conn of a Listener whose one loop the test drives by
// hand, so that writes stay queued until it calls onWake, and the client
// that opened the Conn's session.
func handConn(t *testing.T, cfg ListenConfig) (*loop, *Conn, *udpsys.Socket) {
	t.Helper()
	cfg.Workers, cfg.Logger = 1, quietLogger()
	ln, err := cfg.newListener(netip.MustParseAddrPort("127.0.0.1:0"), false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.srv.Close() })
	l := ln.srv.loops[0]
	client, err := udpsys.DialUDP(ln.srv.Addr(0), udpsys.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	unix.Write(client.FD, []byte("open"))
	l.readSocket(l.socks[0])
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return l, c.(*Conn), client
}

// TestConnWriteWaitsForItsQueue: a Conn with ConnQueue writes waiting for
// its loop makes the next Write wait, until the write deadline or until the
// loop has sent one.
func TestConnWriteWaitsForItsQueue(t *testing.T) {
	l, c, client := handConn(t, ListenConfig{ConnQueue: 2})
	for i := range 2 {
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.Write([]byte{2}); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("third Write with two waiting: %v, want os.ErrDeadlineExceeded", err)
	}
	c.SetWriteDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := c.Write([]byte{3})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Write with a full queue returned before the loop sent: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	l.onWake()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	l.onWake()
	got := make([]byte, 8)
	for _, want := range []byte{0, 1, 3} {
		if n, err := unix.Read(client.FD, got); err != nil || n != 1 || got[0] != want {
			t.Fatalf("client got %v, %v; want [%d]", got[:n], err, want)
		}
	}
}

// TestConnWriteWaitsForRoomInTheLoop: writes that fill the loop's queue
// make the next one wait until the loop drains it, and none is lost.
func TestConnWriteWaitsForRoomInTheLoop(t *testing.T) {
	l, c, _ := handConn(t, ListenConfig{ConnQueue: connWriteSlots + 1})
	p := make([]byte, 1)
	for range connWriteSlots {
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.Write(p)
		done <- err
	}()
	waitFor(t, 5*time.Second, "a writer waiting for room", l.writes.starved.Load)
	l.onWake()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	l.onWake()
	if got := c.Session().Stats().TxPackets; got != connWriteSlots+1 {
		t.Errorf("sent %d datagrams, want %d", got, connWriteSlots+1)
	}
}

// TestConnWriteUnblocksOnClose: a Write waiting for its queue returns
// net.ErrClosed when the Conn closes.
func TestConnWriteUnblocksOnClose(t *testing.T) {
	_, c, _ := handConn(t, ListenConfig{ConnQueue: 1})
	c.Write([]byte("queued"))
	done := make(chan error, 1)
	go func() {
		_, err := c.Write([]byte("waits"))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("waiting Write after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Write still waiting 5s after Close")
	}
}

// TestConnWritesAreCounted: what Conns write is in the listener's and the
// session's transmit counters, as handlers' replies are.
func TestConnWritesAreCounted(t *testing.T) {
	ln := listen(t, ListenConfig{Workers: 2})
	client := dial(t, "udp4", netip.AddrPort{}, netip.MustParseAddrPort(ln.Addr().String()))
	client.Write([]byte("open"))
	c := accept(t, ln).(*Conn)
	const n, size = 10, 100
	for range n {
		if _, err := c.Write(make([]byte, size)); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 2*size)
	for i := range n {
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if got, err := client.Read(buf); err != nil || got != size {
			t.Fatalf("datagram %d: %d bytes, %v", i, got, err)
		}
	}
	waitFor(t, 5*time.Second, "the writes counted", func() bool {
		st, _ := ln.Stats()
		return st.Listeners[0].TxDatagrams == n && st.Listeners[0].TxBytes == n*size
	})
	if got := c.Session().Stats(); got.TxPackets != n || got.TxBytes != n*size {
		t.Errorf("session TxPackets %d TxBytes %d, want %d and %d", got.TxPackets, got.TxBytes, n, n*size)
	}
}

// TestConnWriteErrors: what a Write that cannot send returns.
func TestConnWriteErrors(t *testing.T) {
	ln := listen(t, ListenConfig{})
	client := dial(t, "udp4", netip.AddrPort{}, netip.MustParseAddrPort(ln.Addr().String()))
	client.Write([]byte("open"))
	c := accept(t, ln)
	var op *net.OpError
	if _, err := c.Write(make([]byte, udpsys.MaxDatagram+1)); !errors.Is(err, session.ErrTooLarge) || !errors.As(err, &op) {
		t.Errorf("Write of %d bytes: %v, want session.ErrTooLarge in a *net.OpError", udpsys.MaxDatagram+1, err)
	}
	c.SetWriteDeadline(time.Now().Add(-time.Second))
	if _, err := c.Write([]byte("late")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Write past the deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	c.SetWriteDeadline(time.Time{})
	c.Close()
	if _, err := c.Write([]byte("closed")); !errors.Is(err, net.ErrClosed) || !errors.As(err, &op) || op.Op != "write" {
		t.Errorf("Write after Close: %v, want net.ErrClosed in a write *net.OpError", err)
	}
}

// TestConnWriteRacingCloseIsSentOrRefused: Writes that race the listener's
// Close either return an error or are sent: none is taken and then lost.
func TestConnWriteRacingCloseIsSentOrRefused(t *testing.T) {
	for round := range 20 {
		ln := listen(t, ListenConfig{Workers: 1, ConnQueue: 64})
		client := dial(t, "udp4", netip.AddrPort{}, netip.MustParseAddrPort(ln.Addr().String()))
		client.SetReadBuffer(4 << 20)
		client.Write([]byte("open"))
		c := accept(t, ln)
		var arrived atomic.Int64
		go func() {
			buf := make([]byte, 16)
			for {
				if _, err := client.Read(buf); err != nil {
					return // closed when the test ends
				}
				arrived.Add(1)
			}
		}()
		const writers = 4
		taken := make(chan int, writers)
		for range writers {
			go func() {
				n := 0
				for ; n < 2000; n++ {
					if _, err := c.Write([]byte("w")); err != nil {
						break
					}
				}
				taken <- n
			}()
		}
		time.Sleep(time.Duration(round%5) * time.Millisecond)
		ln.Close()
		want := 0
		for range writers {
			want += <-taken
		}
		deadline := time.Now().Add(5 * time.Second)
		for arrived.Load() < int64(want) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if got := arrived.Load(); got != int64(want) {
			t.Fatalf("round %d: %d Writes returned nil, %d datagrams arrived", round, want, got)
		}
	}
}
