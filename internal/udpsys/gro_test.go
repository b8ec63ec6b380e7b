//go:build linux

package udpsys

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/prereq"
)

func TestDatagramsCutsCoalescedMessages(t *testing.T) {
	a := netip.MustParseAddrPort("192.0.2.1:5000")
	tests := []struct {
		name      string
		n, seg    int
		truncated bool
		want      []int // lengths of the datagrams
	}{
		{"not coalesced", 700, 0, false, []int{700}},
		{"equal segments", 300, 100, false, []int{100, 100, 100}},
		{"a shorter last", 250, 100, false, []int{100, 100, 50}},
		{"one segment", 100, 100, false, []int{100}},
		{"truncated stays whole", 300, 100, true, []int{300}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBatch(2, MaxDatagram, unix.AF_INET)
			for i := range b.Msgs[0].Buf[:tc.n] {
				b.Msgs[0].Buf[i] = byte(i)
			}
			b.Msgs[0].N, b.Msgs[0].Addr, b.Msgs[0].Truncated = tc.n, a, tc.truncated
			b.segments[0] = tc.seg
			b.Msgs[1].N, b.Msgs[1].Addr = 7, a
			got := b.datagrams(2)
			if len(got) != len(tc.want)+1 {
				t.Fatalf("%d datagrams, want %d", len(got), len(tc.want)+1)
			}
			off := 0
			for i, w := range tc.want {
				g := got[i]
				if g.N != w || g.Addr != a || !bytes.Equal(g.Buf[:g.N], b.Msgs[0].Buf[off:off+w]) {
					t.Errorf("datagram %d: %d bytes from %v, want %d", i, g.N, g.Addr, w)
				}
				if len(tc.want) > 1 && cap(g.Buf) != g.N {
					t.Errorf("datagram %d: a handler could write past it into the next", i)
				}
				off += w
			}
			if last := got[len(got)-1]; last.N != 7 {
				t.Errorf("the message after: %d bytes", last.N)
			}
		})
	}
}

// TestGROOverLoopback sends a segmented burst over loopback to a socket with
// GRO on: it arrives as one message, which Datagrams cuts into the burst's
// datagrams, each whole and in order.
func TestGROOverLoopback(t *testing.T) {
	to, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), ListenConfig{IncomingCPU: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer to.Close()
	if !EnableGRO(to.FD) {
		prereq.Missing(t, "the kernel does not know UDP_GRO (Linux 5.0)")
	}
	from, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), ListenConfig{IncomingCPU: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer from.Close()
	if !from.GSO {
		prereq.Missing(t, "the kernel does not know UDP_SEGMENT")
	}
	out := NewBatch(16, 1500, unix.AF_INET)
	out.EnableGSO()
	sizes := []int{1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 300}
	for i, n := range sizes {
		m := &out.Msgs[i]
		m.Addr, m.N = to.Local, n
		for j := range m.Buf[:n] {
			m.Buf[j] = byte(i)
		}
	}
	if sent, err := out.Send(from.FD, 0, len(sizes)); err != nil || sent != len(sizes) {
		t.Fatalf("sent %d of %d: %v", sent, len(sizes), err)
	}
	in := NewBatch(4, MaxDatagram, unix.AF_INET)
	var got []Message
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < len(sizes) && time.Now().Before(deadline) {
		n, err := in.Recv(to.FD)
		if err == unix.EAGAIN {
			time.Sleep(time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("the burst came as %d messages, want 1", n)
		}
		for _, m := range in.Datagrams(n) {
			m.Buf = append([]byte(nil), m.Buf[:m.N]...)
			got = append(got, m)
		}
	}
	if len(got) != len(sizes) {
		t.Fatalf("%d datagrams, want %d", len(got), len(sizes))
	}
	for i, m := range got {
		if m.N != sizes[i] || m.Addr != from.Local || m.Buf[0] != byte(i) || m.Buf[m.N-1] != byte(i) {
			t.Errorf("datagram %d: %d bytes from %v, first %d; want %d bytes of %d", i, m.N, m.Addr, m.Buf[0], sizes[i], i)
		}
	}
}
