package udpsys

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Errors of the calls on descriptors that callers tell apart, as the
// calls return them (compare with ==).
var (
	// ErrAgain: nothing to read, or no room to write, on a non-blocking
	// descriptor.
	ErrAgain error = unix.EAGAIN
	// ErrInterrupted: a signal interrupted the call; try again.
	ErrInterrupted error = unix.EINTR
	// ErrRefused: a connected UDP socket's peer refused a datagram (an ICMP
	// port unreachable came back).
	ErrRefused error = unix.ECONNREFUSED
	// ErrAddrInUse: the address is taken.
	ErrAddrInUse error = unix.EADDRINUSE
)

// Address families of Batches (NewBatch).
const (
	FamilyIPv4 = unix.AF_INET
	FamilyIPv6 = unix.AF_INET6
	FamilyUnix = unix.AF_UNIX
)

// Close closes fd.
func Close(fd int) error { return unix.Close(fd) }

// Write writes p to fd, a non-blocking descriptor, as one datagram.
func Write(fd int, p []byte) (int, error) { return unix.Write(fd, p) }

// Dup returns a duplicate of fd, closed on exec.
func Dup(fd int) (int, error) {
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("dup: %w", err)
	}
	return d, nil
}

// IsSocket reports whether fd is a socket.
func IsSocket(fd int) bool {
	var st unix.Stat_t
	return unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK
}

// DatagramPair returns a pair of connected, non-blocking Unix datagram
// sockets, each with a send buffer of sendBuffer bytes if the process may
// (beyond net.core.wmem_max only with CAP_NET_ADMIN; else as large as it
// may).
func DatagramPair(sendBuffer int) ([2]int, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fds, fmt.Errorf("socketpair: %w", err)
	}
	for _, fd := range fds {
		// A Unix datagram's sender is limited by its send buffer alone.
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sendBuffer) != nil {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, sendBuffer)
		}
	}
	return fds, nil
}
