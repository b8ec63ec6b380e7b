//go:build linux

package udpsys

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// buildControl lays out control messages as the kernel does.
func buildControl(msgs ...func([]byte) int) []byte {
	b := make([]byte, 512)
	off := 0
	for _, m := range msgs {
		off += m(b[off:])
	}
	return b[:off]
}

func pktinfo4(a netip.Addr) func([]byte) int {
	return func(b []byte) int {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&b[unix.CmsgLen(0)]))
		pi.Ifindex, pi.Addr = 3, a.As4()
		return unix.CmsgSpace(unix.SizeofInet4Pktinfo)
	}
}

func pktinfo6(a netip.Addr) func([]byte) int {
	return func(b []byte) int {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
		h.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
		pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&b[unix.CmsgLen(0)]))
		pi.Ifindex, pi.Addr = 4, a.As16()
		return unix.CmsgSpace(unix.SizeofInet6Pktinfo)
	}
}

func overflow(n uint32) func([]byte) int {
	return func(b []byte) int {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level, h.Type = unix.SOL_SOCKET, unix.SO_RXQ_OVFL
		h.SetLen(unix.CmsgLen(4))
		binary.NativeEndian.PutUint32(b[unix.CmsgLen(0):], n)
		return unix.CmsgSpace(4)
	}
}

func TestParseControl(t *testing.T) {
	v4, v6 := netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::9")
	tests := []struct {
		name    string
		b       []byte
		dst     netip.Addr
		drops   uint32
		hasDrop bool
	}{
		{"empty", nil, netip.Addr{}, 0, false},
		{"ipv4 pktinfo", buildControl(pktinfo4(v4)), v4, 0, false},
		{"ipv6 pktinfo", buildControl(pktinfo6(v6)), v6, 0, false},
		{"v4-mapped pktinfo is unmapped", buildControl(pktinfo6(netip.AddrFrom16(v4.As16()))), v4, 0, false},
		{"overflow then pktinfo", buildControl(overflow(42), pktinfo4(v4)), v4, 42, true},
		{"pktinfo then overflow", buildControl(pktinfo6(v6), overflow(1<<31)), v6, 1 << 31, true},
		{"truncated header", []byte{1, 2, 3}, netip.Addr{}, 0, false},
		{"length past the end", func() []byte { b := buildControl(overflow(5)); return b[:len(b)-8] }(), netip.Addr{}, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := parseControl(tc.b)
			if c.dst != tc.dst || c.drops != tc.drops || c.hasDrops != tc.hasDrop {
				t.Errorf("got dst %v drops %d/%v, want %v %d/%v", c.dst, c.drops, c.hasDrops, tc.dst, tc.drops, tc.hasDrop)
			}
		})
	}
}

func TestSourceControlRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		src    string
		family int
	}{{"192.0.2.1", unix.AF_INET}, {"2001:db8::1", unix.AF_INET6}, {"192.0.2.1", unix.AF_INET6}} {
		src := netip.MustParseAddr(tc.src)
		b := SourceControl(src, tc.family)
		got := parseControl(b).dst
		if tc.family == unix.AF_INET {
			// Sending reads ipi_spec_dst, which receiving leaves alone.
			got = netip.AddrFrom4((*unix.Inet4Pktinfo)(unsafe.Pointer(&b[unix.CmsgLen(0)])).Spec_dst)
		}
		if got != src {
			t.Errorf("%s on family %d: parsed back %v", src, tc.family, got)
		}
	}
	if len(SourceControl(netip.Addr{}, unix.AF_INET)) != 0 {
		t.Error("an invalid source produced a control message")
	}
}

// FuzzParseControl: whatever bytes sit in a control buffer, parsing must not
// panic or read outside it.
func FuzzParseControl(f *testing.F) {
	f.Add(buildControl(pktinfo4(netip.MustParseAddr("10.1.2.3")), overflow(7)))
	f.Add(buildControl(pktinfo6(netip.MustParseAddr("::1"))))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		parseControl(b)
	})
}

func TestSockaddrRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		ap     string
		family int
		want   string
	}{
		{"192.0.2.1:53", unix.AF_INET, "192.0.2.1:53"},
		{"[2001:db8::1]:65535", unix.AF_INET6, "[2001:db8::1]:65535"},
		{"192.0.2.1:1", unix.AF_INET6, "[::ffff:192.0.2.1]:1"},
	} {
		var sa sockaddr
		encodeSockaddr(&sa, netip.MustParseAddrPort(tc.ap), tc.family)
		if got := decodeSockaddr(&sa).String(); got != tc.want {
			t.Errorf("%s via family %d: %s, want %s", tc.ap, tc.family, got, tc.want)
		}
	}
	var unknown sockaddr
	unknown.Family = unix.AF_UNIX
	if decodeSockaddr(&unknown).IsValid() {
		t.Error("decoded an AF_UNIX address as IP")
	}
}

func TestParseRelease(t *testing.T) {
	for _, tc := range []struct {
		r            string
		major, minor int
	}{
		{"6.1.0-18-amd64", 6, 1}, {"6.18.44-fc-v595", 6, 18}, {"5.15", 5, 15}, {"4", 4, 0}, {"", 0, 0}, {"x.y", 0, 0},
	} {
		if ma, mi := parseRelease(tc.r); ma != tc.major || mi != tc.minor {
			t.Errorf("parseRelease(%q) = %d.%d, want %d.%d", tc.r, ma, mi, tc.major, tc.minor)
		}
	}
}

func TestBatchOverLoopback(t *testing.T) {
	srv, err := ListenUDP(netip.MustParseAddrPort("0.0.0.0:0"), ListenConfig{IncomingCPU: -1, RecvBuffer: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if !srv.Wildcard || srv.RecvBuffer < 1<<20 {
		t.Errorf("wildcard %v, recv buffer %d", srv.Wildcard, srv.RecvBuffer)
	}
	cl, err := DialUDP(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.5"), srv.Local.Port()), ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	out := NewBatch(4, 100, unix.AF_INET)
	for i := range out.Msgs {
		out.Msgs[i].N = copy(out.Msgs[i].Buf, []byte{byte(i), 1, 2})
	}
	if n, err := out.Send(cl.FD, 0, 4); n != 4 || err != nil {
		t.Fatalf("send: %d, %v", n, err)
	}
	in := NewBatch(8, 2, unix.AF_INET) // 2-byte slots: every 3-byte datagram truncates
	n, err := in.Recv(srv.FD)
	if err != nil || n != 4 {
		t.Fatalf("recv: %d, %v", n, err)
	}
	for i := 0; i < n; i++ {
		m := in.Msgs[i]
		if !m.Truncated || m.Addr != cl.Local || m.Local != netip.MustParseAddr("127.0.0.5") || m.Buf[0] != byte(i) {
			t.Errorf("message %d: %+v", i, m)
		}
	}
	if d, ok := in.Drops(); ok {
		t.Errorf("SO_RXQ_OVFL reported %d drops on a socket that dropped nothing", d)
	}
	if _, err := in.Recv(srv.FD); err != unix.EAGAIN {
		t.Errorf("empty socket: %v, want EAGAIN", err)
	}
}
