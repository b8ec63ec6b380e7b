//go:build linux

package proxy

import (
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/prereq"
	"github.com/udpmux/udpmux/session"
)

// burstBackend answers a client's first datagram with n datagrams of size
// bytes, as fast as it can (a tunnel backend flushing a download), and each
// later one with one datagram.
func burstBackend(t *testing.T, n, size int) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 2048)
		reply := make([]byte, size)
		for first := true; ; first = false {
			_, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			for range map[bool]int{true: n, false: 1}[first] {
				c.WriteToUDPAddrPort(reply, from)
			}
		}
	}()
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// stallingProxy holds its loop for stall on the first backend reply, as a
// loop busy with other work would: the rest of a burst waits in the
// session's upstream socket meanwhile.
type stallingProxy struct {
	*Handler
	stall            time.Duration
	stalled, resumed atomic.Bool
}

func (h *stallingProxy) Upstream(s session.Session, sock session.Socket, p []byte) {
	if h.stalled.CompareAndSwap(false, true) {
		time.Sleep(h.stall)
		h.resumed.Store(true)
	}
	h.Handler.Upstream(s, sock, p)
}

// TestUpstreamBurstDropsAreCounted: a burst of replies while the proxy's
// loop is busy fills the session's upstream socket. With a small
// upstream receive buffer the kernel drops part of it, and the proxy counts
// exactly what was lost (SO_RXQ_OVFL reports drops with the next datagram
// queued after them, hence the second exchange); with a buffer sized for
// the burst nothing is lost.
func TestUpstreamBurstDropsAreCounted(t *testing.T) {
	const n, size = 3000, 1400
	for _, tc := range []struct {
		name    string
		recvBuf int
		lossy   bool
	}{
		{"small buffer", 64 << 10, true},
		{"buffer for the burst", 16 << 20, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.lossy && os.Geteuid() != 0 {
				prereq.Missing(t, "needs root (CAP_NET_ADMIN) for a receive buffer beyond net.core.rmem_max")
			}
			stalling := &stallingProxy{stall: 300 * time.Millisecond}
			srv, _ := startProxy(t, Config{Backends: []netip.AddrPort{burstBackend(t, n, size)}, RecvBuffer: tc.recvBuf}, time.Minute, 100,
				func(h *Handler) session.Handler { stalling.Handler = h; return stalling })
			c := client(t, srv.Addr(0))
			c.Write([]byte("go"))
			upstreamRx := func() uint64 { return srv.Stats().Listeners[0].UpstreamRx }
			var last uint64
			waitUntil(t, "the burst read", func() bool {
				cur := upstreamRx()
				settled := stalling.resumed.Load() && cur == last && cur > 0
				last = cur
				time.Sleep(100 * time.Millisecond)
				return settled
			})
			c.Write([]byte("again"))
			waitUntil(t, "the second reply read", func() bool { return upstreamRx() == last+1 })
			st := srv.Stats().Listeners[0]
			lost := uint64(n+1) - st.UpstreamRx
			if st.UpstreamKernelDrops != lost {
				t.Errorf("read %d of %d replies from the backend; UpstreamKernelDrops = %d, want %d", st.UpstreamRx, n+1, st.UpstreamKernelDrops, lost)
			}
			if tc.lossy != (lost > 0) {
				t.Errorf("%d replies lost; lossy = %v expected", lost, tc.lossy)
			}
		})
	}
}
