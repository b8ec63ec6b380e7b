package udpsys

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MaxDatagram is the largest UDP payload over IPv6 jumbo-less paths and the
// default slot size: a smaller receive buffer would truncate legal datagrams.
const MaxDatagram = 65535

// Message is one datagram of a Batch.
type Message struct {
	// Buf is the slot's buffer, owned by the Batch. A received datagram is
	// Buf[:N]; Send sends Buf[:N].
	Buf []byte
	N   int
	// Addr is the peer: the source of a received datagram, the destination of
	// one to send. Leave it zero to send on a connected socket.
	Addr netip.AddrPort
	// Local is the address a received datagram was sent to, when the socket
	// reports packet info; on send, a valid Local picks the source address.
	Local netip.Addr
	// Truncated reports a received datagram larger than Buf (MSG_TRUNC): what
	// is in Buf is not the whole datagram.
	Truncated bool
}

// Batch is a reusable set of messages for one recvmmsg or sendmmsg call.
// A Batch belongs to one goroutine at a time.
type Batch struct {
	// Msgs are the batch's slots; Recv fills a prefix of them, Send sends one.
	Msgs []Message

	family int
	hdrs   []unix.Mmsghdr
	iovs   []unix.Iovec
	names  []sockaddr
	oob    []byte

	drops    uint32
	hasDrops bool

	// segments holds each received message's UDP_GRO segment size (0: not
	// coalesced), coalesced counts the messages of the last Recv that were,
	// and grams holds the views Datagrams cuts them into; it grows to
	// maxSegments per slot at most, once.
	segments  []int
	coalesced int
	grams     []Message

	// gso is set by EnableGSO; segHdrs and segCount are then Send's
	// headers for runs of datagrams and how many datagrams each carries.
	gso      bool
	segHdrs  []unix.Mmsghdr
	segCount []int
}

// NewBatch returns a batch of n slots of bufSize bytes each for a socket of
// the given address family (unix.AF_INET or unix.AF_INET6).
func NewBatch(n, bufSize, family int) *Batch {
	b := &Batch{
		Msgs:   make([]Message, n),
		family: family,
		hdrs:   make([]unix.Mmsghdr, n),
		iovs:   make([]unix.Iovec, n),
		names:  make([]sockaddr, n),
		oob:    make([]byte, n*controlSpace),

		segments: make([]int, n),
	}
	bufs := make([]byte, n*bufSize)
	for i := range b.Msgs {
		b.Msgs[i].Buf = bufs[i*bufSize : (i+1)*bufSize : (i+1)*bufSize]
		h := &b.hdrs[i].Hdr
		h.Iov = &b.iovs[i]
		h.Iovlen = 1
	}
	return b
}

// Len returns the number of slots.
func (b *Batch) Len() int { return len(b.Msgs) }

// Recv reads up to len(b.Msgs) datagrams from the non-blocking socket fd and
// returns how many arrived. It returns unix.EAGAIN when none is queued.
func (b *Batch) Recv(fd int) (int, error) {
	for i := range b.Msgs {
		h := &b.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.Namelen = sizeofSockaddr
		h.Control = &b.oob[i*controlSpace]
		h.Controllen = controlSpace
		h.Flags = 0
		b.iovs[i].Base = &b.Msgs[i].Buf[0]
		b.iovs[i].SetLen(len(b.Msgs[i].Buf))
	}
	b.hasDrops = false
	b.coalesced = 0
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd),
		uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(len(b.hdrs)), unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	for i := 0; i < int(n); i++ {
		m, h := &b.Msgs[i], &b.hdrs[i]
		m.N = int(h.Len)
		m.Truncated = h.Hdr.Flags&unix.MSG_TRUNC != 0
		m.Addr = decodeSockaddr(&b.names[i])
		c := parseControl(b.oob[i*controlSpace : i*controlSpace+int(h.Hdr.Controllen)])
		m.Local = c.dst
		if c.hasDrops {
			b.drops, b.hasDrops = c.drops, true
		}
		b.segments[i] = c.segment
		if c.segment > 0 && c.segment < m.N {
			b.coalesced++
		}
	}
	return int(n), nil
}

// Datagrams returns the datagrams of the n messages the last Recv read:
// Msgs[:n] itself unless some were coalesced (UDP_GRO, see EnableGRO), else
// views that cut those into their datagrams, in order, sharing the
// messages' buffers until the next Recv.
func (b *Batch) Datagrams(n int) []Message {
	if b.coalesced == 0 {
		return b.Msgs[:n]
	}
	return b.datagrams(n)
}

// Drops returns the cumulative receive-queue drop count (SO_RXQ_OVFL) of
// the socket the last Recv read, and whether that Recv saw a report; the
// kernel reports it only once it is non-zero, and a Batch may read several
// sockets, so each caller keeps its socket's last value. The counter is 32
// bits and wraps: callers take differences in uint32.
func (b *Batch) Drops() (uint32, bool) { return b.drops, b.hasDrops }

// EnableGSO makes Send coalesce runs of datagrams to one destination into
// segmented messages (UDP_SEGMENT), for a socket whose Socket.GSO is set. A
// route that refuses segmentation gets the datagrams one by one; one that
// cannot do it at all (EIO) turns it off for the batch.
func (b *Batch) EnableGSO() {
	b.gso = true
	if b.segHdrs == nil {
		b.segHdrs = make([]unix.Mmsghdr, len(b.Msgs))
		b.segCount = make([]int, len(b.Msgs))
	}
}

// GSO reports whether Send still segments: EnableGSO was called and no
// route has refused segmentation outright since.
func (b *Batch) GSO() bool { return b.gso }

// Shift moves Msgs[from:to] to the front, in order, and returns how many
// that is: the messages a Send left unsent, to be sent again later. The
// slots keep their buffers, so no two share one.
func (b *Batch) Shift(from, to int) int {
	if from > 0 {
		for i := from; i < to; i++ {
			b.Msgs[i-from], b.Msgs[i] = b.Msgs[i], b.Msgs[i-from]
		}
	}
	return to - from
}

// Send sends Msgs[from:to] on the non-blocking socket fd with as few
// sendmmsg calls as the kernel allows, and returns how many were sent. When
// that is less than to-from, err is the error of the first message not sent
// (unix.EAGAIN when the send buffer is full); the caller decides whether to
// retry it or skip it.
func (b *Batch) Send(fd, from, to int) (int, error) {
	b.prepareSend(from, to)
	if b.gso {
		return b.sendSegmented(fd, from, to)
	}
	return b.sendEach(fd, from, to)
}

// prepareSend fills the headers of Msgs[from:to], one datagram each.
func (b *Batch) prepareSend(from, to int) {
	for i := from; i < to; i++ {
		m, h := &b.Msgs[i], &b.hdrs[i].Hdr
		if m.Addr.IsValid() {
			h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
			h.Namelen = encodeSockaddr(&b.names[i], m.Addr, b.family)
		} else {
			h.Name, h.Namelen = nil, 0
		}
		oob := b.oob[i*controlSpace : (i+1)*controlSpace]
		if cl := putSourceControl(oob, m.Local, b.family); cl > 0 {
			h.Control, h.Controllen = &oob[0], uint64(cl)
		} else {
			h.Control, h.Controllen = nil, 0
		}
		b.iovs[i].Base = &m.Buf[0]
		b.iovs[i].SetLen(m.N)
	}
}

// sendEach sends prepared Msgs[from:to], one datagram per header.
func (b *Batch) sendEach(fd, from, to int) (int, error) {
	sent := 0
	for from+sent < to {
		r, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd),
			uintptr(unsafe.Pointer(&b.hdrs[from+sent])), uintptr(to-from-sent), unix.MSG_DONTWAIT, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return sent, errno
		}
		sent += int(r)
	}
	return sent, nil
}

// sendSegmented sends prepared Msgs[from:to], each run segmentRun allows as
// one header whose iovecs are the run's buffers.
func (b *Batch) sendSegmented(fd, from, to int) (int, error) {
	k := 0
	for i := from; i < to; {
		g := segmentRun(b.Msgs[i:to])
		h := b.hdrs[i]
		h.Hdr.Iovlen = uint64(g)
		if g > 1 {
			oob := b.oob[i*controlSpace : (i+1)*controlSpace]
			cl := int(h.Hdr.Controllen)
			cl += putSegmentControl(oob[cl:], b.Msgs[i].N)
			h.Hdr.Control, h.Hdr.Controllen = &oob[0], uint64(cl)
		}
		b.segHdrs[k], b.segCount[k] = h, g
		k++
		i += g
	}
	sent := 0
	for hdr := 0; hdr < k; {
		r, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd),
			uintptr(unsafe.Pointer(&b.segHdrs[hdr])), uintptr(k-hdr), unix.MSG_DONTWAIT, 0, 0)
		switch {
		case errno == unix.EINTR:
			continue
		case errno != 0 && b.segCount[hdr] > 1 && errno != unix.EAGAIN:
			// The route would not segment: EIO without checksum offload,
			// EINVAL when a segment exceeds its MTU. The rest goes one by one.
			if errno == unix.EIO {
				b.gso = false
			}
			n, err := b.sendEach(fd, from+sent, to)
			return sent + n, err
		case errno != 0:
			return sent, errno
		}
		for _, c := range b.segCount[hdr : hdr+int(r)] {
			sent += c
		}
		hdr += int(r)
	}
	return sent, nil
}
