//go:build linux

package proxy

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/prereq"
	"github.com/udpmux/udpmux/internal/udpsys"
)

// TestCoalescedRepliesReachTheClient: a backend answers with a burst sent as
// one segmented message, which reaches the session's upstream socket
// coalesced (UDP GRO on loopback); the proxy cuts it apart and the client
// gets every reply, whole and in order.
func TestCoalescedRepliesReachTheClient(t *testing.T) {
	const burst, size = 20, 1000
	backend, err := udpsys.ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), udpsys.ListenConfig{IncomingCPU: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	if !backend.GSO || !udpsys.EnableGRO(backend.FD) {
		prereq.Missing(t, "the kernel lacks UDP_SEGMENT or UDP_GRO")
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		in := udpsys.NewBatch(1, udpsys.MaxDatagram, unix.AF_INET)
		out := udpsys.NewBatch(burst, size, unix.AF_INET)
		out.EnableGSO()
		for {
			n, err := in.Recv(backend.FD)
			if err == unix.EAGAIN {
				select {
				case <-done:
					return
				case <-time.After(time.Millisecond):
				}
				continue
			}
			if err != nil || n == 0 {
				return
			}
			for i := range out.Msgs {
				m := &out.Msgs[i]
				m.Addr, m.N = in.Msgs[0].Addr, size
				for j := range m.Buf {
					m.Buf[j] = byte(i)
				}
			}
			out.Send(backend.FD, 0, burst)
		}
	}()
	srv, _ := startProxy(t, Config{Backends: []netip.AddrPort{backend.Local}}, time.Minute, 100)
	c := client(t, srv.Addr(0))
	c.Write([]byte("go"))
	buf := make([]byte, 2048)
	for i := range burst {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("reply %d of %d: %v", i, burst, err)
		}
		if n != size || buf[0] != byte(i) || buf[n-1] != byte(i) {
			t.Fatalf("reply %d: %d bytes of %d, want %d of %d", i, n, buf[0], size, i)
		}
	}
	if st := srv.Stats().Listeners[0]; st.UpstreamCoalesced != burst {
		t.Errorf("%d of the %d replies arrived coalesced, want all", st.UpstreamCoalesced, burst)
	}
}
