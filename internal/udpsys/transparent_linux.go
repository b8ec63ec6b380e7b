package udpsys

import (
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// A proxy that sends a client's datagrams from the client's own address
// (nginx's `proxy_bind $remote_addr transparent`, Envoy's original_src,
// go-mmproxy) binds its upstream socket to an address that is not this
// host's, which Linux allows with IP_TRANSPARENT (IPV6_TRANSPARENT): the
// kernel then also sends from it. Setting the option needs CAP_NET_ADMIN or
// CAP_NET_RAW. Replies to that address reach the socket only where policy
// routing delivers them to this host (docs/operations.md).

// errFamilies refuses a source of another family than the peer's: an IPv4
// client cannot be the source of a datagram to an IPv6 backend.
var errFamilies = errors.New("the source and the remote address are of different families")

// bindTransparent binds s, not yet bound, to src, with IP_TRANSPARENT (or
// IPV6_TRANSPARENT) so that src need not be an address of this host's, and
// SO_REUSEADDR so that several sockets may be bound to the same src as long
// as each is connected to another address: the kernel gives a datagram to
// the socket connected to its sender. Which socket gets it when two are
// connected to the same one, it does not say, so the caller keeps each
// source and remote pair to one socket.
func (s *Socket) bindTransparent(src netip.AddrPort) error {
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	level, opt, name := unix.IPPROTO_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT"
	if s.Family == unix.AF_INET6 {
		level, opt, name = unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT"
	}
	if err := unix.SetsockoptInt(s.FD, level, opt, 1); err != nil {
		return fmt.Errorf("setsockopt %s (needs CAP_NET_ADMIN or CAP_NET_RAW): %w", name, err)
	}
	s.Transparent = true
	if err := unix.SetsockoptInt(s.FD, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fmt.Errorf("setsockopt SO_REUSEADDR: %w", err)
	}
	if err := unix.Bind(s.FD, SockaddrFor(src, s.Family)); err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	return nil
}

// maxDiscard bounds discardQueued's reads: a receive buffer holds no more
// datagrams than this many of the smallest, and what comes after the
// connect is the peer's.
const maxDiscard = 1 << 16

// discardQueued drops what the socket received before it was connected.
// Between its bind and its connect, a transparent socket bound to a
// client's address takes datagrams from any sender to that address that
// policy routing delivers here, and connecting does not flush them: read
// later, they would pass for the peer's.
func (s *Socket) discardQueued() {
	for range maxDiscard {
		if _, _, err := unix.Recvfrom(s.FD, nil, unix.MSG_DONTWAIT|unix.MSG_TRUNC); err != nil {
			return
		}
	}
}

// transparent reports whether fd, a socket of family, has IP_TRANSPARENT
// (IPV6_TRANSPARENT) set.
func transparent(fd, family int) bool {
	level, opt := unix.IPPROTO_IP, unix.IP_TRANSPARENT
	if family == unix.AF_INET6 {
		level, opt = unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT
	}
	v, err := unix.GetsockoptInt(fd, level, opt)
	return err == nil && v != 0
}

// CanBindTransparent reports whether this process may bind sockets to
// addresses that are not its host's (IP_TRANSPARENT): whether CAP_NET_ADMIN
// or CAP_NET_RAW is in its effective capability set, which the kernel checks
// when the option is set.
func CanBindTransparent() (bool, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	// Version 3 has two sets of 32 bits each; the kernel writes both.
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false, fmt.Errorf("capget: %w", err)
	}
	has := func(c int) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	return has(unix.CAP_NET_ADMIN) || has(unix.CAP_NET_RAW), nil
}
