// Package mmsg wraps the Linux recvmmsg(2) and sendmmsg(2) batch calls around
// a reusable set of message headers and buffers, so that a loop moves up to a
// whole batch of datagrams per system call without allocating.
package mmsg

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Batch is a set of n message slots, each with its own buffer and, optionally,
// room for a peer address (msg_name). A Batch is not safe for concurrent use.
type Batch struct {
	Hdrs     []unix.Mmsghdr
	Bufs     [][]byte
	iovs     []unix.Iovec
	names    []unix.RawSockaddrInet6 // large enough for IPv4 and IPv6 addresses
	ctrl     []byte                  // per-slot ancillary data, ctrlSize bytes each (EnableControl)
	ctrlSize int
}

// EnableControl gives every slot size bytes of room for ancillary data
// (cmsgs), which Recv fills and Control returns.
func (b *Batch) EnableControl(size int) {
	b.ctrlSize = size
	b.ctrl = make([]byte, len(b.Hdrs)*size)
	for i := range b.Hdrs {
		b.Hdrs[i].Hdr.Control = &b.ctrl[i*size]
	}
}

// Control returns the ancillary data slot i received, or nil.
func (b *Batch) Control(i int) []byte {
	if b.ctrl == nil {
		return nil
	}
	return b.ctrl[i*b.ctrlSize : i*b.ctrlSize+int(b.Hdrs[i].Hdr.Controllen)]
}

// Name returns the peer address of slot i as the kernel wrote it, or nil
// for a batch without addresses.
func (b *Batch) Name(i int) []byte {
	h := &b.Hdrs[i].Hdr
	if h.Name == nil {
		return nil
	}
	return unsafe.Slice(h.Name, h.Namelen)
}

// NewBatch returns a batch of n slots with bufSize-byte buffers. With withAddr,
// every slot carries a peer address: filled by Recv, used as destination by
// Send (for unconnected sockets).
func NewBatch(n, bufSize int, withAddr bool) *Batch {
	b := &Batch{
		Hdrs: make([]unix.Mmsghdr, n),
		Bufs: make([][]byte, n),
		iovs: make([]unix.Iovec, n),
	}
	if withAddr {
		b.names = make([]unix.RawSockaddrInet6, n)
	}
	mem := make([]byte, n*bufSize)
	for i := range n {
		b.Bufs[i] = mem[i*bufSize : (i+1)*bufSize : (i+1)*bufSize]
		b.iovs[i].Base = &b.Bufs[i][0]
		b.iovs[i].SetLen(bufSize)
		h := &b.Hdrs[i].Hdr
		h.Iov = &b.iovs[i]
		h.SetIovlen(1)
		if withAddr {
			h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
			h.Namelen = unix.SizeofSockaddrInet6
		}
	}
	return b
}

// Len returns the number of bytes slot i holds after Recv, or the number of
// bytes sent from it after Send.
func (b *Batch) Len(i int) int { return int(b.Hdrs[i].Len) }

// SetLen sets how many bytes of slot i's buffer the next Send transmits.
func (b *Batch) SetLen(i, n int) { b.iovs[i].SetLen(n) }

// Recv reads up to len(b.Hdrs) datagrams from fd with recvmmsg(2) and returns
// how many arrived. flags are recvmmsg flags such as MSG_WAITFORONE or
// MSG_DONTWAIT. Each slot's buffer length and address length are reset first,
// so a batch can be received into again after Send.
func (b *Batch) Recv(fd int, flags int) (int, error) {
	for i := range b.Hdrs {
		b.iovs[i].SetLen(len(b.Bufs[i]))
		if b.names != nil {
			b.Hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		}
		if b.ctrl != nil {
			b.Hdrs[i].Hdr.SetControllen(b.ctrlSize)
		}
	}
	r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.Hdrs[0])),
		uintptr(len(b.Hdrs)), uintptr(flags), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// Send transmits slots [0, n) on fd with sendmmsg(2), starting with the first
// slot, and returns how many the kernel accepted (possibly fewer than n).
// With an address batch each slot goes to its own address (as left by Recv,
// which makes echoing a received batch a matter of calling Send).
func (b *Batch) Send(fd int, n int, flags int) (int, error) {
	return b.SendFrom(fd, 0, n, flags)
}

// SendFrom is Send for slots [from, n).
func (b *Batch) SendFrom(fd int, from, n int, flags int) (int, error) {
	if from >= n {
		return 0, nil
	}
	r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.Hdrs[from])),
		uintptr(n-from), uintptr(flags), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// EchoLens makes each of slots [0, n) send back exactly the bytes it received.
func (b *Batch) EchoLens(n int) {
	for i := range n {
		b.iovs[i].SetLen(int(b.Hdrs[i].Len))
	}
}

// Sockaddr converts ap (IPv4 only) to a unix.Sockaddr for bind and connect.
func Sockaddr(ap netip.AddrPort) unix.Sockaddr {
	return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
}
