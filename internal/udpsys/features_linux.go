package udpsys

import (
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"
)

// Features are kernel behaviours udpmux adapts to, detected once.
type Features struct {
	// Release is the running kernel's release string.
	Release string
	// IncomingCPUInGroup reports whether SO_INCOMING_CPU steers the pick
	// inside a reuseport group (Linux 6.1 and later; earlier kernels' fast
	// reuseport path ignored it and picked by hash alone).
	IncomingCPUInGroup bool
	// ConnectedHash4 reports the connected-UDP 4-tuple hash of Linux 6.13 and
	// later: connected sockets no longer share one O(n) bucket per port.
	ConnectedHash4 bool
	// DualStack reports that an IPv6 socket can take IPv4 too (v4-mapped
	// addresses): the host has IPv6, so a wildcard listener of both
	// families is one IPv6 socket.
	DualStack bool
}

var (
	featuresOnce sync.Once
	features     Features
)

// Detect returns the running kernel's features.
func Detect() Features {
	featuresOnce.Do(func() {
		features.DualStack = probeDualStack()
		var u unix.Utsname
		if err := unix.Uname(&u); err != nil {
			return
		}
		features.Release = unix.ByteSliceToString(u.Release[:])
		major, minor := parseRelease(features.Release)
		features.IncomingCPUInGroup = major > 6 || major == 6 && minor >= 1
		features.ConnectedHash4 = major > 6 || major == 6 && minor >= 13
	})
	return features
}

// probeDualStack binds an IPv6 socket to IPv4's loopback, v4-mapped, as
// Go's net does to learn the same.
func probeDualStack() bool {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	if unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0) != nil {
		return false
	}
	sa := &unix.SockaddrInet6{Addr: netip.AddrFrom4([4]byte{127, 0, 0, 1}).As16()}
	return unix.Bind(fd, sa) == nil
}

// parseRelease reads the leading "major.minor" of a kernel release such as
// "6.1.0-18-amd64"; anything it cannot read is 0.
func parseRelease(r string) (major, minor int) {
	n, field := 0, 0
	for i := 0; i <= len(r); i++ {
		if i < len(r) && r[i] >= '0' && r[i] <= '9' {
			n = n*10 + int(r[i]-'0')
			continue
		}
		if field == 0 {
			major = n
		} else {
			return major, n
		}
		if i == len(r) || r[i] != '.' {
			return major, 0
		}
		field, n = 1, 0
	}
	return major, minor
}
