package udpsys

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// ListenConfig says how to open a listening socket.
type ListenConfig struct {
	// IncomingCPU, when >= 0, sets SO_INCOMING_CPU so that the kernel prefers
	// this socket of the reuseport group for datagrams processed on that CPU.
	IncomingCPU int
	// RecvBuffer and SendBuffer are the wanted socket buffer sizes in bytes;
	// 0 keeps the kernel's default.
	RecvBuffer, SendBuffer int
}

// Socket is an open, non-blocking UDP socket.
type Socket struct {
	FD     int
	Family int
	// Local is the bound address with the port the kernel chose.
	Local netip.AddrPort
	// Wildcard reports a bind to 0.0.0.0 or ::; such a socket reports and sets
	// the local address per datagram through packet info.
	Wildcard bool
	// RecvBuffer and SendBuffer are the sizes the kernel granted, read back.
	RecvBuffer, SendBuffer int
	// GSO reports that the kernel segments UDP on this socket
	// (UDP_SEGMENT), so a Batch sending on it may use Batch.EnableGSO.
	GSO bool
}

// Close closes the socket.
func (s *Socket) Close() error { return unix.Close(s.FD) }

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// ListenUDP opens a socket bound to addr in a SO_REUSEPORT group, so that one
// such socket per event loop shares the address, with the receive-queue
// overflow counter and, on wildcard binds, packet info enabled.
func ListenUDP(addr netip.AddrPort, cfg ListenConfig) (*Socket, error) {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	family := familyOf(addr.Addr())
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	s := &Socket{FD: fd, Family: family, Wildcard: addr.Addr().IsUnspecified(), GSO: SocketGSO(fd)}
	if err := s.setup(addr, cfg); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return s, nil
}

func (s *Socket) setup(addr netip.AddrPort, cfg ListenConfig) error {
	type sockopt struct {
		level, opt, val int
		name            string
	}
	opts := []sockopt{
		{unix.SOL_SOCKET, unix.SO_REUSEPORT, 1, "SO_REUSEPORT"},
		{unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1, "SO_RXQ_OVFL"},
	}
	if cfg.IncomingCPU >= 0 {
		opts = append(opts, sockopt{unix.SOL_SOCKET, unix.SO_INCOMING_CPU, cfg.IncomingCPU, "SO_INCOMING_CPU"})
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(s.FD, o.level, o.opt, o.val); err != nil {
			return fmt.Errorf("setsockopt %s: %w", o.name, err)
		}
	}
	if s.Wildcard {
		if err := s.enablePacketInfo(); err != nil {
			return err
		}
	}
	if err := s.sizeBuffers(cfg.RecvBuffer, cfg.SendBuffer); err != nil {
		return err
	}
	if err := unix.Bind(s.FD, SockaddrFor(addr, s.Family)); err != nil {
		return fmt.Errorf("bind %s: %w", addr, err)
	}
	sa, err := unix.Getsockname(s.FD)
	if err != nil {
		return fmt.Errorf("getsockname: %w", err)
	}
	s.Local = AddrPortOf(sa)
	return nil
}

// enablePacketInfo asks for each datagram's destination address, so that a
// reply can leave from the address the request came to on a multi-homed host.
// An IPv6 socket that also accepts IPv4 needs both options.
func (s *Socket) enablePacketInfo() error {
	if s.Family == unix.AF_INET6 {
		if err := unix.SetsockoptInt(s.FD, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1); err != nil {
			return fmt.Errorf("setsockopt IPV6_RECVPKTINFO: %w", err)
		}
	}
	if err := unix.SetsockoptInt(s.FD, unix.IPPROTO_IP, unix.IP_PKTINFO, 1); err != nil {
		return fmt.Errorf("setsockopt IP_PKTINFO: %w", err)
	}
	return nil
}

// sizeBuffers sets the buffers with the FORCE variants first, which pass the
// net.core.[rw]mem_max limits for a privileged process, then reads back what
// the kernel granted. The kernel reports twice the usable size; the halved
// value is what callers compare with what they asked for.
func (s *Socket) sizeBuffers(recv, send int) error {
	set := func(size, force, plain int) (int, error) {
		if size > 0 {
			if err := unix.SetsockoptInt(s.FD, unix.SOL_SOCKET, force, size); err != nil {
				if err := unix.SetsockoptInt(s.FD, unix.SOL_SOCKET, plain, size); err != nil {
					return 0, err
				}
			}
		}
		got, err := unix.GetsockoptInt(s.FD, unix.SOL_SOCKET, plain)
		return got / 2, err
	}
	var err error
	if s.RecvBuffer, err = set(recv, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF); err != nil {
		return fmt.Errorf("receive buffer %d: %w", recv, err)
	}
	if s.SendBuffer, err = set(send, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF); err != nil {
		return fmt.Errorf("send buffer %d: %w", send, err)
	}
	return nil
}

// DialUDP opens a non-blocking socket connected to remote, for a session's own
// upstream path: the kernel then filters datagrams to that peer and reports
// ICMP errors from it (ECONNREFUSED) on the socket. Its buffers are sized as
// cfg says (IncomingCPU is ignored) and it reports its receive-queue drops
// (SO_RXQ_OVFL), as a listening socket does.
func DialUDP(remote netip.AddrPort, cfg ListenConfig) (*Socket, error) {
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	family := familyOf(remote.Addr())
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	s := &Socket{FD: fd, Family: family, GSO: SocketGSO(fd)}
	if err := s.connect(remote, cfg); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return s, nil
}

func (s *Socket) connect(remote netip.AddrPort, cfg ListenConfig) error {
	if err := unix.SetsockoptInt(s.FD, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1); err != nil {
		return fmt.Errorf("setsockopt SO_RXQ_OVFL: %w", err)
	}
	if err := s.sizeBuffers(cfg.RecvBuffer, cfg.SendBuffer); err != nil {
		return err
	}
	if err := unix.Connect(s.FD, SockaddrFor(remote, s.Family)); err != nil {
		return fmt.Errorf("connect %s: %w", remote, err)
	}
	sa, err := unix.Getsockname(s.FD)
	if err != nil {
		return fmt.Errorf("getsockname: %w", err)
	}
	s.Local = AddrPortOf(sa)
	return nil
}

// SocketFromFD adopts fd, a UDP socket inherited from another process, and
// reads back its family, address and buffer sizes.
func SocketFromFD(fd int) (*Socket, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("descriptor %d: %w", fd, err)
	}
	if typ != unix.SOCK_DGRAM {
		return nil, fmt.Errorf("descriptor %d: socket type %d is not SOCK_DGRAM", fd, typ)
	}
	family, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return nil, fmt.Errorf("descriptor %d: %w", fd, err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil, fmt.Errorf("descriptor %d: getsockname: %w", fd, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("descriptor %d: %w", fd, err)
	}
	unix.CloseOnExec(fd)
	s := &Socket{FD: fd, Family: family, Local: AddrPortOf(sa), GSO: SocketGSO(fd)}
	s.Wildcard = s.Local.Addr().IsUnspecified()
	if err := s.sizeBuffers(0, 0); err != nil {
		return nil, err
	}
	return s, nil
}
