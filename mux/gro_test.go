//go:build linux

package mux

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/prereq"
	"github.com/udpmux/udpmux/internal/udpsys"
)

// TestCoalescedBurstIsCutApart sends a client's burst as one segmented
// message over loopback, which the kernel delivers coalesced to a socket
// with UDP GRO: the loop cuts it apart, and each datagram is echoed on its
// own, whole and in order. With receive slots too small for a coalesced
// message the loop leaves GRO off, and the kernel cuts the burst instead:
// nothing is truncated either way.
func TestCoalescedBurstIsCutApart(t *testing.T) {
	const burst, size = 30, 1200
	for _, tc := range []struct {
		name        string
		maxDatagram int
		coalesced   bool
	}{
		{"slots for any datagram", 0, true},
		{"small slots", 2048, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := echoConfig("127.0.0.1:0", 1)
			cfg.MaxDatagram = tc.maxDatagram
			srv := serve(t, cfg)
			probe, err := udpsys.ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), udpsys.ListenConfig{IncomingCPU: -1})
			if err != nil {
				t.Fatal(err)
			}
			defer probe.Close()
			if !probe.GSO || !udpsys.EnableGRO(probe.FD) {
				prereq.Missing(t, "the kernel lacks UDP_SEGMENT or UDP_GRO")
			}
			client, err := udpsys.ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), udpsys.ListenConfig{IncomingCPU: -1})
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			out := udpsys.NewBatch(burst, size, unix.AF_INET)
			out.EnableGSO()
			for i := range out.Msgs {
				m := &out.Msgs[i]
				m.Addr, m.N = srv.Addr(0), size
				for j := range m.Buf {
					m.Buf[j] = byte(i)
				}
			}
			if sent, err := out.Send(client.FD, 0, burst); err != nil || sent != burst {
				t.Fatalf("sent %d of %d: %v", sent, burst, err)
			}
			in := udpsys.NewBatch(burst, udpsys.MaxDatagram, unix.AF_INET)
			got := 0
			for deadline := time.Now().Add(5 * time.Second); got < burst && time.Now().Before(deadline); {
				n, err := in.Recv(client.FD)
				if err == unix.EAGAIN {
					time.Sleep(time.Millisecond)
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range in.Msgs[:n] {
					if m.N != size || m.Buf[0] != byte(got) || m.Buf[size-1] != byte(got) {
						t.Fatalf("echo %d: %d bytes of %d, want %d of %d", got, m.N, m.Buf[0], size, got)
					}
					got++
				}
			}
			if got != burst {
				t.Fatalf("%d echoes of %d", got, burst)
			}
			st := srv.Stats().Listeners[0]
			if st.RxDatagrams != burst || st.Truncated != 0 || (st.RxCoalesced == burst) != tc.coalesced {
				t.Errorf("received %d, truncated %d, coalesced %d; want %d, 0, coalesced %v",
					st.RxDatagrams, st.Truncated, st.RxCoalesced, burst, tc.coalesced)
			}
		})
	}
}
