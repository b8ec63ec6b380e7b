package main

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/benchmarks/internal/mmsg"
)

// A batch of runs from two peers goes back as GSO messages that the kernel
// cuts into exactly the datagrams that came in, in order, to each peer.
func TestGSOEcho(t *testing.T) {
	fd, err := bareSocket(netip.MustParseAddrPort("127.0.0.1:0"), 0, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	sa, _ := unix.Getsockname(fd)
	srv := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*unix.SockaddrInet4).Port}
	a, b := dial(t, srv), dial(t, srv)
	sent := map[*net.UDPConn][][]byte{
		a: {bytes.Repeat([]byte{1}, 100), bytes.Repeat([]byte{2}, 100), bytes.Repeat([]byte{3}, 40)},
		b: {bytes.Repeat([]byte{4}, 100), bytes.Repeat([]byte{5}, 200)},
	}
	for _, c := range []*net.UDPConn{a, b} {
		for _, p := range sent[c] {
			if _, err := c.Write(p); err != nil {
				t.Fatal(err)
			}
		}
	}
	batch := mmsg.NewBatch(16, 2048, true)
	n := 0
	for deadline := time.Now().Add(2 * time.Second); n < 5 && time.Now().Before(deadline); {
		m, err := batch.Recv(fd, unix.MSG_DONTWAIT)
		if err == unix.EAGAIN {
			time.Sleep(time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		n = m // one recvmmsg takes all five once they are queued
	}
	if n != 5 {
		t.Fatalf("received %d datagrams in one batch, want 5", n)
	}
	rs := gsoRuns(batch, n, func(int) int { return 0 }, nil)
	want := []segRun{{0, 3, 100}, {3, 1, 0}, {4, 1, 0}} // b's 200 bytes cannot follow its 100
	if len(rs) != len(want) || rs[0] != want[0] || rs[1] != want[1] || rs[2] != want[2] {
		t.Fatalf("runs = %+v, want %+v", rs, want)
	}
	if m, err := newGSOSender(16).echo(fd, batch, rs); err != nil || m != len(rs) {
		t.Fatalf("echo sent %d messages, %v", m, err)
	}
	for _, c := range []*net.UDPConn{a, b} {
		for i, p := range sent[c] {
			buf := make([]byte, 2048)
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			k, err := c.Read(buf)
			if err != nil || !bytes.Equal(buf[:k], p) {
				t.Fatalf("reply %d: %d bytes (%v), want %d bytes of %d", i, k, err, len(p), p[0])
			}
		}
	}
}

func dial(t *testing.T, to *net.UDPAddr) *net.UDPConn {
	c, err := net.DialUDP("udp4", nil, to)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestGROSegment(t *testing.T) {
	c := make([]byte, cmsgSize)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
	h.Level, h.Type = unix.SOL_UDP, udpGRO
	h.SetLen(unix.CmsgLen(4))
	c[unix.CmsgLen(0)] = 0x78 // 1400, little-endian
	c[unix.CmsgLen(0)+1] = 0x05
	if got := groSegment(c); got != 1400 {
		t.Errorf("groSegment = %d, want 1400", got)
	}
	if got := groSegment(nil); got != 0 {
		t.Errorf("groSegment(nil) = %d", got)
	}
	if segments(2900, 1400) != 3 || segments(1400, 1400) != 1 || segments(64, 0) != 1 {
		t.Error("segments miscounts")
	}
}
