//go:build linux

package proxy

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/prereq"
	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/session"
)

// icmpUnreachable returns an ICMP "port unreachable" message about a UDP
// datagram from src to dst, as a host at dst would send it.
func icmpUnreachable(src, dst netip.AddrPort) []byte {
	msg := make([]byte, 8+20+8)
	msg[0], msg[1] = 3, 3 // destination unreachable, port unreachable
	ip := msg[8:28]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 28+8)
	ip[8], ip[9] = 64, unix.IPPROTO_UDP
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	udp := msg[28:]
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], 8+28)
	binary.BigEndian.PutUint16(msg[2:], checksum(msg))
	return msg
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// TestForgedICMPEndsNothing: an off-path attacker sprays "port unreachable"
// for every ephemeral port, claiming to be the backend. Every session stays
// on its backend and its upstream socket (so its source port), the backend
// is not marked down because it answers, and the reports are counted as
// ignored.
func TestForgedICMPEndsNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		prereq.Missing(t, "needs root: sends forged ICMP from a raw socket")
	}
	b := startBackend(t, "b")
	srv, h := startProxy(t, Config{Backends: []netip.AddrPort{b.addr()}}, time.Minute, 1000)
	const n = 50
	var clients []*udpConnPair
	for i := range n {
		c := client(t, srv.Addr(0))
		msg := fmt.Sprint("c", i)
		if reply := exchange(c, msg, 5*time.Second); reply != "b|"+msg {
			t.Fatalf("client %d: %q", i, reply)
		}
		clients = append(clients, &udpConnPair{c: c, msg: msg})
	}
	ports := upstreamPorts(srv, h)
	if len(ports) != n {
		t.Fatalf("%d upstream sockets for %d sessions", len(ports), n)
	}
	raw, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(raw)
	to := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	for round := range 3 {
		for port := 32768; port <= 60999; port++ {
			src := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
			unix.Sendto(raw, icmpUnreachable(src, b.addr()), 0, to)
		}
		for i, p := range clients {
			msg := fmt.Sprintf("%s after spray %d", p.msg, round)
			if reply := exchange(p.c, msg, 5*time.Second); reply != "b|"+msg {
				t.Fatalf("client %d after spray %d: %q", i, round, reply)
			}
		}
	}
	st := h.Stats()
	if !st.Backends[0].Healthy || st.Backends[0].Downs != 0 {
		t.Errorf("backend marked down by forged ICMP: %+v", st.Backends[0])
	}
	if st.RefusedByBackend < n || st.IgnoredRefusals == 0 {
		t.Errorf("RefusedByBackend %d, IgnoredRefusals %d: the forged reports did not arrive", st.RefusedByBackend, st.IgnoredRefusals)
	}
	after := upstreamPorts(srv, h)
	for p := range ports {
		if !after[p] {
			t.Errorf("upstream port %d gone after the spray: a session was reopened", p)
		}
	}
	if closed := srv.Stats().Listeners[0].SessionsClosed; len(closed) != 0 {
		t.Errorf("sessions closed: %v", closed)
	}
}

// TestOneForgedICMPMarksNothingDown: one forged "port unreachable" for the
// upstream port of a backend's only session, a backend that has not
// answered (yet), leaves the backend up: a report alone may be forged.
func TestOneForgedICMPMarksNothingDown(t *testing.T) {
	if os.Geteuid() != 0 {
		prereq.Missing(t, "needs root: sends forged ICMP from a raw socket")
	}
	silent, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	backend := silent.LocalAddr().(*net.UDPAddr).AddrPort()
	clk := newFakeClock()
	srv, h := startProxy(t, Config{Backends: []netip.AddrPort{backend}, Health: HealthConfig{Now: clk.Now}}, time.Minute, 1000)
	c := client(t, srv.Addr(0))
	c.Write([]byte("hello"))
	buf := make([]byte, 64)
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := silent.Read(buf); err != nil {
		t.Fatal("the session's first datagram did not reach the backend")
	}
	clk.Advance(time.Hour)
	raw, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(raw)
	for port := range upstreamPorts(srv, h) {
		src := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
		unix.Sendto(raw, icmpUnreachable(src, backend), 0, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
	}
	waitUntil(t, "the forged report", func() bool { return h.Stats().RefusedByBackend == 1 })
	if st := h.Stats(); !st.Backends[0].Healthy || st.IgnoredRefusals != 1 {
		t.Errorf("one forged report: backend %+v, IgnoredRefusals %d", st.Backends[0], st.IgnoredRefusals)
	}
}

type udpConnPair struct {
	c   *net.UDPConn
	msg string
}

// upstreamPorts returns the local ports of the proxy sessions' upstream
// sockets.
func upstreamPorts(srv *mux.Server, h *Handler) map[uint16]bool {
	ports := map[uint16]bool{}
	srv.Sessions(func(s session.Session) bool {
		if info, ok := h.Session(s); ok {
			ports[info.Source.Port()] = true
		}
		return true
	})
	return ports
}
