package udpsys

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// controlSpace is the per-message control buffer: room for one packet-info
// message of either family, the receive-queue overflow counter, and a UDP_GRO
// segment size, with headroom.
const controlSpace = 128

// control is what udpmux reads from a received datagram's control messages.
type control struct {
	dst      netip.Addr // destination address of the datagram (packet info)
	ifindex  int32
	drops    uint32 // SO_RXQ_OVFL: the socket's cumulative drop count
	hasDrops bool
	segment  int // UDP_GRO: the size of the datagrams coalesced into this one
}

func cmsgAlign(n int) int {
	const a = int(unsafe.Sizeof(uintptr(0)))
	return (n + a - 1) &^ (a - 1)
}

// parseControl walks the control messages in b without allocating. Messages
// it does not know are skipped; a malformed length ends the walk.
func parseControl(b []byte) (c control) {
	hdrLen := cmsgAlign(unix.SizeofCmsghdr)
	for len(b) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(b) {
			return c
		}
		data := b[hdrLen:l]
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			c.dst = netip.AddrFrom4(pi.Addr)
			c.ifindex = pi.Ifindex
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
			c.dst = netip.AddrFrom16(pi.Addr).Unmap()
			c.ifindex = int32(pi.Ifindex)
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SO_RXQ_OVFL && len(data) >= 4:
			c.drops = binary.NativeEndian.Uint32(data)
			c.hasDrops = true
		case h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO && len(data) >= 4:
			c.segment = int(int32(binary.NativeEndian.Uint32(data)))
		}
		next := cmsgAlign(l)
		if next >= len(b) {
			return c
		}
		b = b[next:]
	}
	return c
}

// putSourceControl writes a packet-info message into b that makes the kernel
// send from src, and returns its length. It writes nothing for an invalid src.
// On an IPv6 socket an IPv4 source goes v4-mapped in IPV6_PKTINFO, which the
// kernel accepts for v4-mapped destinations.
func putSourceControl(b []byte, src netip.Addr, family int) int {
	if !src.IsValid() {
		return 0
	}
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	data := b[cmsgAlign(unix.SizeofCmsghdr):]
	if family == unix.AF_INET {
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
		*pi = unix.Inet4Pktinfo{Spec_dst: src.As4()}
		return unix.CmsgSpace(unix.SizeofInet4Pktinfo)
	}
	h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
	pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
	*pi = unix.Inet6Pktinfo{Addr: src.As16()}
	return unix.CmsgSpace(unix.SizeofInet6Pktinfo)
}

// SourceControl returns a control message that makes a sendmsg leave from
// src, for callers that send one datagram outside a Batch.
func SourceControl(src netip.Addr, family int) []byte {
	b := make([]byte, controlSpace)
	return b[:putSourceControl(b, src, family)]
}
