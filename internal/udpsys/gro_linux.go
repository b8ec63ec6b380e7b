package udpsys

import "golang.org/x/sys/unix"

// UDP generic receive offload (UDP_GRO, Linux 5.0): the kernel hands a
// socket consecutive datagrams of one flow that its GRO engine merged (on a
// NIC or veth with GRO on, or a GSO send over loopback) as one message, with
// the size of the datagrams in a control message, instead of cutting them
// apart first. A burst then crosses the stack, and costs a receive slot,
// once. The receiver cuts the message into its datagrams (Batch.Datagrams).
//
// A coalesced message may be as large as a UDP datagram can be: on a socket
// whose receive slots are smaller, the kernel would truncate it and lose the
// datagrams past the slot's end (Envoy #33474), so the caller enables GRO
// only for slots of MaxDatagram bytes.

// EnableGRO asks the kernel to deliver coalesced datagrams on UDP socket fd
// and reports whether it will; kernels before 5.0 refuse, and then every
// datagram arrives on its own as before.
func EnableGRO(fd int) bool {
	return unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
}

// datagrams cuts the received messages that are coalesced into views of
// their datagrams, which share the messages' buffers; see Batch.Datagrams.
func (b *Batch) datagrams(n int) []Message {
	if b.grams == nil {
		b.grams = make([]Message, 0, len(b.Msgs)*maxSegments)
	}
	out := b.grams[:0]
	for i := 0; i < n; i++ {
		m, seg := &b.Msgs[i], b.segments[i]
		if seg <= 0 || seg >= m.N || m.Truncated {
			out = append(out, *m)
			continue
		}
		for off := 0; off < m.N; off += seg {
			end := min(off+seg, m.N)
			out = append(out, Message{Buf: m.Buf[off:end:end], N: end - off, Addr: m.Addr, Local: m.Local})
		}
	}
	b.grams = out
	return out
}
