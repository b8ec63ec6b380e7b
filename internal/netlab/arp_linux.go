package netlab

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Announce sends gratuitous ARP for addr from the interface dev of the
// namespace, as a host that takes over a service address does (keepalived,
// `arping -U` and `arping -A`): a request and a reply, broadcast, that name
// addr at dev's MAC address. Neighbours that have an entry for addr take
// the new MAC address at once, and bridges learn where it is. It fails the
// test on error.
func (n *Namespace) Announce(dev string, addr netip.Addr) {
	n.lab.t.Helper()
	if err := n.Do(func() error { return announce(dev, addr) }); err != nil {
		n.lab.t.Fatalf("netlab: announce %v on %s in %s: %v", addr, dev, n.name, err)
	}
}

// announce sends the gratuitous ARP of Announce from the calling thread's
// namespace.
func announce(dev string, addr netip.Addr) error {
	if !addr.Is4() {
		return fmt.Errorf("%v is not an IPv4 address", addr)
	}
	ifi, err := net.InterfaceByName(dev)
	if err != nil {
		return err
	}
	if len(ifi.HardwareAddr) != 6 {
		return fmt.Errorf("%s has no Ethernet address (%v)", dev, ifi.HardwareAddr)
	}
	proto := htons(unix.ETH_P_ARP)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index, Halen: 6}
	copy(to.Addr[:], broadcastMAC)
	for _, op := range []uint16{arpRequest, arpReply} {
		if err := unix.Sendto(fd, gratuitousARP(op, ifi.HardwareAddr, addr), 0, to); err != nil {
			return fmt.Errorf("send ARP: %w", err)
		}
	}
	return nil
}

// ARP operations.
const (
	arpRequest = 1
	arpReply   = 2
)

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// gratuitousARP returns the ARP packet (RFC 826, Ethernet and IPv4) with
// operation op in which mac announces ip: sender and target address both
// ip; the target hardware address is zero in a request and broadcast in a
// reply, as Linux wants of a gratuitous reply.
func gratuitousARP(op uint16, mac net.HardwareAddr, ip netip.Addr) []byte {
	p := make([]byte, 28)
	binary.BigEndian.PutUint16(p[0:], 1)      // hardware type: Ethernet
	binary.BigEndian.PutUint16(p[2:], 0x0800) // protocol type: IPv4
	p[4], p[5] = 6, 4
	binary.BigEndian.PutUint16(p[6:], op)
	a := ip.As4()
	copy(p[8:14], mac)
	copy(p[14:18], a[:])
	if op == arpReply {
		copy(p[18:24], broadcastMAC)
	}
	copy(p[24:28], a[:])
	return p
}

// htons converts a 16-bit value to network byte order, as a packet
// socket's protocol wants it.
func htons(v uint16) uint16 { return v<<8 | v>>8 }
