package udpsys

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// UDP generic segmentation offload (UDP_SEGMENT, Linux 4.18): consecutive
// datagrams to one destination go to the kernel as one message, which
// crosses the stack once and is cut into datagrams at the last moment (on
// a virtual link, by the receiver). Sending a burst so costs one traversal
// instead of one per datagram.

// Limits of one segmented message: the kernel's UDP_MAX_SEGMENTS (64 before
// Linux 6.9), and an IPv6 UDP payload without jumbograms.
const (
	maxSegments    = 64
	maxSegmentsLen = 65535 - 40 - 8
	// maxSegmentSize keeps segments within a 1500-byte MTU after IPv6 and
	// UDP headers: the kernel refuses a segment size the route's MTU cannot
	// carry, and datagrams larger than that are sent one by one.
	maxSegmentSize = 1500 - 40 - 8
)

// segmentControlSpace is the room a UDP_SEGMENT control message takes.
var segmentControlSpace = unix.CmsgSpace(2)

// SocketGSO reports whether the kernel segments UDP (UDP_SEGMENT) on
// socket fd, as Socket.GSO does for the sockets this package opens.
func SocketGSO(fd int) bool {
	_, err := unix.GetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_SEGMENT)
	return err == nil
}

// putSegmentControl writes a UDP_SEGMENT control message for segments of
// size bytes into b and returns its length.
func putSegmentControl(b []byte, size int) int {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&b[cmsgAlign(unix.SizeofCmsghdr)])) = uint16(size)
	return segmentControlSpace
}

// segmentRun returns how many of msgs, from the first, can go as one
// segmented message: same destination and source, the first's size for all
// but the last, which may be shorter.
func segmentRun(msgs []Message) int {
	first := &msgs[0]
	size := first.N
	if size == 0 || size > maxSegmentSize {
		return 1
	}
	n, total := 1, size
	for n < len(msgs) && n < maxSegments {
		m := &msgs[n]
		if m.Addr != first.Addr || m.Local != first.Local || m.N == 0 || m.N > size || total+m.N > maxSegmentsLen {
			break
		}
		n++
		total += m.N
		if m.N < size {
			break // a shorter datagram ends a run
		}
	}
	return n
}
