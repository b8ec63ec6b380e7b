package main

import (
	"bytes"
	"encoding/binary"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/benchmarks/internal/mmsg"
)

// UDP offload socket options and cmsg types from <linux/udp.h>.
const (
	udpSegment = 103 // UDP_SEGMENT: send a buffer as segments of this size (GSO)
	udpGRO     = 104 // UDP_GRO: receive coalesced datagrams with their segment size
)

// Limits of one GSO message: the kernel's UDP_MAX_SEGMENTS (64 before
// Linux 6.10, 128 since: the older bound) and the IPv4 datagram size.
const (
	gsoMaxSegments = 64
	gsoMaxBytes    = 65507
)

// gsoSender echoes a received batch with UDP GSO: every run of consecutive
// datagrams from one peer, all of one size but a shorter last one, goes
// back as one message that the kernel cuts into those datagrams (one
// sendmmsg entry per run, its iovecs pointing into the receive buffers, so
// nothing is copied). A datagram the kernel coalesced (UDP_GRO) goes back
// as one message with its own segment size.
type gsoSender struct {
	hdrs []unix.Mmsghdr
	iovs []unix.Iovec
	ctrl []byte // one UDP_SEGMENT cmsg per message
}

// cmsgSize is the room for one UDP_SEGMENT or UDP_GRO cmsg.
var cmsgSize = unix.CmsgSpace(4)

// newGSOSender returns a sender for batches of up to n datagrams.
func newGSOSender(n int) *gsoSender {
	return &gsoSender{hdrs: make([]unix.Mmsghdr, n), iovs: make([]unix.Iovec, n), ctrl: make([]byte, n*cmsgSize)}
}

// segRun is a group of received slots sent back as one message.
type segRun struct {
	first, count int // slots [first, first+count)
	segment      int // segment size, 0 for a single datagram
}

// gsoRuns groups slots [0, n) of b: consecutive slots from one peer whose
// lengths are seg, …, seg, ≤ seg, within the GSO limits. groSize gives a
// slot's coalesced segment size (0 when it holds one datagram); such a
// slot is a run of its own.
func gsoRuns(b *mmsg.Batch, n int, groSize func(i int) int, out []segRun) []segRun {
	out = out[:0]
	for i := 0; i < n; {
		if g := groSize(i); g > 0 {
			out = append(out, segRun{first: i, count: 1, segment: g})
			i++
			continue
		}
		seg, total, j := b.Len(i), b.Len(i), i+1
		for j < n && j-i < gsoMaxSegments && groSize(j) == 0 && b.Len(j) <= seg &&
			total+b.Len(j) <= gsoMaxBytes && bytes.Equal(b.Name(j), b.Name(i)) {
			total += b.Len(j)
			j++
			if b.Len(j-1) < seg {
				break // a shorter datagram can only be the last segment
			}
		}
		r := segRun{first: i, count: j - i}
		if r.count > 1 {
			r.segment = seg
		}
		out = append(out, r)
		i = j
	}
	return out
}

// echo sends every run back to its peer on fd and returns how many of the
// runs the kernel took.
func (s *gsoSender) echo(fd int, b *mmsg.Batch, rs []segRun) (int, error) {
	for m, r := range rs {
		for k := range r.count {
			i := r.first + k
			s.iovs[i] = unix.Iovec{Base: &b.Bufs[i][0]}
			s.iovs[i].SetLen(b.Len(i))
		}
		h := &s.hdrs[m].Hdr
		name := b.Name(r.first)
		*h = unix.Msghdr{Name: &name[0], Namelen: uint32(len(name)), Iov: &s.iovs[r.first]}
		h.SetIovlen(r.count)
		if r.segment > 0 {
			c := s.ctrl[m*cmsgSize : (m+1)*cmsgSize]
			putSegmentCmsg(c, r.segment)
			h.Control = &c[0]
			h.SetControllen(unix.CmsgSpace(2))
		}
	}
	sent := 0
	for sent < len(rs) {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&s.hdrs[sent])),
			uintptr(len(rs)-sent), 0, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return sent, e
		}
		sent += int(n)
	}
	return sent, nil
}

// putSegmentCmsg writes a UDP_SEGMENT cmsg of segment size seg into c.
func putSegmentCmsg(c []byte, seg int) {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
	h.Level, h.Type = unix.SOL_UDP, udpSegment
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(c[unix.CmsgLen(0):], uint16(seg))
}

// groSegment returns the segment size of a UDP_GRO cmsg in ctrl, or 0.
func groSegment(ctrl []byte) int {
	for len(ctrl) >= unix.CmsgLen(0) {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&ctrl[0]))
		if int(h.Len) < unix.CmsgLen(0) || int(h.Len) > len(ctrl) {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == udpGRO && int(h.Len) >= unix.CmsgLen(4) {
			return int(binary.NativeEndian.Uint32(ctrl[unix.CmsgLen(0):]))
		}
		next := unix.CmsgSpace(int(h.Len) - unix.CmsgLen(0))
		if next > len(ctrl) {
			return 0
		}
		ctrl = ctrl[next:]
	}
	return 0
}

// segments returns how many datagrams a received slot of n bytes holds
// when coalesced with segment size seg (0: one).
func segments(n, seg int) int {
	if seg <= 0 || n <= seg {
		return 1
	}
	return (n + seg - 1) / seg
}
