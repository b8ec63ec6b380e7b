//go:build linux

package udpsys

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/prereq"
)

func TestSegmentRun(t *testing.T) {
	a := netip.MustParseAddrPort("192.0.2.1:5000")
	b := netip.MustParseAddrPort("192.0.2.2:5000")
	msg := func(to netip.AddrPort, n int) Message { return Message{Addr: to, N: n} }
	many, large := make([]Message, 70), make([]Message, 50)
	for i := range many {
		many[i] = msg(a, 100)
	}
	for i := range large {
		large[i] = msg(a, 1400)
	}
	tests := []struct {
		name string
		msgs []Message
		want int
	}{
		{"alone", []Message{msg(a, 100)}, 1},
		{"same size, same peer", []Message{msg(a, 100), msg(a, 100), msg(a, 100)}, 3},
		{"another peer ends the run", []Message{msg(a, 100), msg(a, 100), msg(b, 100)}, 2},
		{"a shorter datagram is the last", []Message{msg(a, 100), msg(a, 60), msg(a, 60)}, 2},
		{"a longer datagram starts a new run", []Message{msg(a, 60), msg(a, 100)}, 1},
		{"another source ends the run", []Message{msg(a, 100), {Addr: a, N: 100, Local: netip.MustParseAddr("192.0.2.9")}}, 1},
		{"an empty datagram goes alone", []Message{msg(a, 0), msg(a, 0)}, 1},
		{"beyond one MTU goes alone", []Message{msg(a, 1500), msg(a, 1500)}, 1},
		{"at most the kernel's segment count", many, maxSegments},
		{"at most a datagram's length", large, maxSegmentsLen / 1400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := segmentRun(tc.msgs); got != tc.want {
				t.Errorf("run of %d, want %d", got, tc.want)
			}
		})
	}
}

// TestSegmentedBatchOverLoopback sends runs to two peers, one of them with
// a shorter last datagram, through a batch with GSO: each receiver gets its
// datagrams whole, in order, with their own lengths.
func TestSegmentedBatchOverLoopback(t *testing.T) {
	var peers [2]*Socket
	for i := range peers {
		s, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), ListenConfig{IncomingCPU: -1})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		peers[i] = s
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
	type dgram struct {
		peer, n int
	}
	plan := []dgram{{0, 300}, {0, 300}, {0, 300}, {0, 120}, {1, 500}, {1, 500}, {0, 300}}
	for i, d := range plan {
		m := &out.Msgs[i]
		m.Addr = peers[d.peer].Local
		m.N = d.n
		for j := range m.Buf[:d.n] {
			m.Buf[j] = byte(i)
		}
	}
	if n, err := out.Send(from.FD, 0, len(plan)); n != len(plan) || err != nil {
		t.Fatalf("sent %d of %d: %v", n, len(plan), err)
	}
	in := NewBatch(16, 1500, unix.AF_INET)
	for p := range peers {
		var want []int
		for i, d := range plan {
			if d.peer == p {
				want = append(want, i)
			}
		}
		n, err := in.Recv(peers[p].FD)
		if err != nil || n != len(want) {
			t.Fatalf("peer %d: received %d datagrams, want %d: %v", p, n, len(want), err)
		}
		for k, i := range want {
			m := in.Msgs[k]
			if m.N != plan[i].n || m.Buf[0] != byte(i) || m.Buf[m.N-1] != byte(i) || m.Addr != from.Local {
				t.Errorf("peer %d datagram %d: %d bytes starting %d from %v; want %d bytes of %d from %v",
					p, k, m.N, m.Buf[0], m.Addr, plan[i].n, i, from.Local)
			}
		}
	}
}
