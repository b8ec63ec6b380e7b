//go:build linux

package netlab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Forger sends UDP datagrams over IPv4 with any source address and port,
// as an attacker that spoofs its source does: from a raw socket
// (IPPROTO_RAW, which implies IP_HDRINCL) that writes the IP header
// itself. The kernel routes each datagram by its destination, from the
// namespace the socket was opened in, and checks nothing about its source.
// Send is safe for concurrent use; it needs root (CAP_NET_RAW).
type Forger struct{ fd int }

// NewForger opens a Forger in the calling thread's network namespace (see
// Namespace.Forger for one inside a lab's namespace).
func NewForger() (*Forger, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("netlab: raw socket: %w", err)
	}
	return &Forger{fd: fd}, nil
}

// Forger opens a Forger inside the namespace, whose routes its datagrams
// take; it is closed at the lab's teardown (after the test's own cleanups),
// or earlier by Close.
func (n *Namespace) Forger() *Forger {
	n.lab.t.Helper()
	var f *Forger
	err := n.Do(func() (err error) {
		f, err = NewForger()
		return err
	})
	if err != nil {
		n.lab.t.Fatalf("netlab: forger in %s: %v", n.name, err)
	}
	n.lab.t.Cleanup(func() { f.Close() })
	return f
}

// Send sends payload as a UDP datagram from src to dst, both IPv4.
func (f *Forger) Send(src, dst netip.AddrPort, payload []byte) error {
	pkt, err := udp4Packet(src, dst, payload)
	if err != nil {
		return err
	}
	d4 := dst.Addr().As4()
	return unix.Sendto(f.fd, pkt, 0, &unix.SockaddrInet4{Addr: d4})
}

// Close closes the raw socket; closing it again does nothing.
func (f *Forger) Close() error {
	if f.fd < 0 {
		return nil
	}
	err := unix.Close(f.fd)
	f.fd = -1
	return err
}

// udp4Packet returns the IPv4 packet that carries payload from src to dst
// over UDP: a 20-byte IP header (TTL 64; the kernel fills in the ID and the
// header checksum) and a UDP header without a checksum (0, as IPv4 allows).
func udp4Packet(src, dst netip.AddrPort, payload []byte) ([]byte, error) {
	if !src.Addr().Is4() || !dst.Addr().Is4() {
		return nil, fmt.Errorf("netlab: forged datagram %v -> %v: IPv4 only", src, dst)
	}
	if 28+len(payload) > 0xffff {
		return nil, errors.New("netlab: forged datagram too large")
	}
	pkt := make([]byte, 28+len(payload))
	ip := pkt[:20]
	ip[0] = 0x45 // version 4, 5 words of header
	binary.BigEndian.PutUint16(ip[2:], uint16(len(pkt)))
	ip[8], ip[9] = 64, unix.IPPROTO_UDP
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	udp := pkt[20:28]
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(pkt[28:], payload)
	return pkt, nil
}
