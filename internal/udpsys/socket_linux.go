package udpsys

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"

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
	// V6Only makes an IPv6 socket refuse IPv4 (IPV6_V6ONLY). Without it the
	// socket is dual-stack whatever the net.ipv6.bindv6only sysctl says, so
	// that a [::] listener means the same on every host.
	V6Only bool
	// Source, for DialUDP only, is the address the socket sends from when
	// it is not one of this host's own: the socket is bound to it with
	// IP_TRANSPARENT and SO_REUSEADDR before it connects, and what it received
	// before it was connected is dropped. The zero AddrPort lets the
	// kernel pick a local address and port as usual.
	Source netip.AddrPort
	// Control, when set, is called for the socket once this package has set
	// its options and before bind, as net.ListenConfig.Control is: network
	// is "udp4" or "udp6", address the address to bind. Its error fails the
	// listen.
	Control func(network, address string, c syscall.RawConn) error
}

// Socket is an open, non-blocking UDP socket.
type Socket struct {
	FD     int
	Family int
	// Local is the bound address with the port the kernel chose; Remote the
	// address the socket is connected to, or the zero AddrPort.
	Local, Remote netip.AddrPort
	// Wildcard reports a bind to 0.0.0.0 or ::; such a socket reports and sets
	// the local address per datagram through packet info.
	Wildcard bool
	// RecvBuffer and SendBuffer are the sizes the kernel granted, read back.
	RecvBuffer, SendBuffer int
	// GSO reports that the kernel segments UDP on this socket
	// (UDP_SEGMENT), so a Batch sending on it may use Batch.EnableGSO.
	GSO bool
	// Transparent reports IP_TRANSPARENT (IPV6_TRANSPARENT): the socket may
	// be bound to an address that is not this host's (ListenConfig.Source).
	Transparent bool
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

// setup prepares a new socket and binds it: the options only a socket not
// yet bound takes, those of every listening socket (configure), then the
// caller's Control.
func (s *Socket) setup(addr netip.AddrPort, cfg ListenConfig) error {
	if err := unix.SetsockoptInt(s.FD, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return fmt.Errorf("setsockopt SO_REUSEPORT: %w", err)
	}
	if s.Family == unix.AF_INET6 {
		v6only := 0
		if cfg.V6Only {
			v6only = 1
		}
		if err := unix.SetsockoptInt(s.FD, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only); err != nil {
			return fmt.Errorf("setsockopt IPV6_V6ONLY: %w", err)
		}
	}
	if err := s.configure(cfg); err != nil {
		return err
	}
	if cfg.Control != nil {
		network := "udp4"
		if s.Family == unix.AF_INET6 {
			network = "udp6"
		}
		if err := cfg.Control(network, addr.String(), rawConn(s.FD)); err != nil {
			return fmt.Errorf("control %s: %w", addr, err)
		}
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

// configure sets what every listening socket needs, bound or not: the
// receive-queue overflow counter, the CPU it serves, packet info on a
// wildcard address, and its buffers.
func (s *Socket) configure(cfg ListenConfig) error {
	if err := unix.SetsockoptInt(s.FD, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1); err != nil {
		return fmt.Errorf("setsockopt SO_RXQ_OVFL: %w", err)
	}
	if cfg.IncomingCPU >= 0 {
		if err := unix.SetsockoptInt(s.FD, unix.SOL_SOCKET, unix.SO_INCOMING_CPU, cfg.IncomingCPU); err != nil {
			return fmt.Errorf("setsockopt SO_INCOMING_CPU: %w", err)
		}
	}
	if s.Wildcard {
		if err := s.enablePacketInfo(); err != nil {
			return err
		}
	}
	return s.sizeBuffers(cfg.RecvBuffer, cfg.SendBuffer)
}

// rawConn is the syscall.RawConn a Control function gets: a socket not yet
// bound, with no poller behind it to wait until it is readable or writable.
type rawConn int

var errRawIO = errors.New("udpsys: the socket Control gets cannot be read or written")

func (c rawConn) Control(f func(fd uintptr)) error { f(uintptr(c)); return nil }
func (rawConn) Read(func(fd uintptr) bool) error   { return errRawIO }
func (rawConn) Write(func(fd uintptr) bool) error  { return errRawIO }

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
// (SO_RXQ_OVFL), as a listening socket does. With cfg.Source it sends from
// that address, which need not be this host's and must be of remote's
// family: see ListenConfig.Source.
func DialUDP(remote netip.AddrPort, cfg ListenConfig) (*Socket, error) {
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	family := familyOf(remote.Addr())
	if cfg.Source.IsValid() && familyOf(cfg.Source.Addr().Unmap()) != family {
		return nil, fmt.Errorf("dial %s from %s: %w", remote, cfg.Source, errFamilies)
	}
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
	if cfg.Source.IsValid() {
		if err := s.bindTransparent(cfg.Source); err != nil {
			return err
		}
	}
	if err := unix.Connect(s.FD, SockaddrFor(remote, s.Family)); err != nil {
		return fmt.Errorf("connect %s: %w", remote, err)
	}
	if s.Transparent {
		s.discardQueued()
	}
	sa, err := unix.Getsockname(s.FD)
	if err != nil {
		return fmt.Errorf("getsockname: %w", err)
	}
	s.Local, s.Remote = AddrPortOf(sa), remote
	return nil
}

// Bound is what Inspect reads of a bound UDP socket.
type Bound struct {
	Family int
	// Local is the address the socket is bound to.
	Local netip.AddrPort
	// ReusePort reports SO_REUSEPORT: sockets bound after it may join its
	// group, with its address.
	ReusePort bool
	// V6Only reports IPV6_V6ONLY on an IPv6 socket: it refuses IPv4.
	V6Only bool
}

// Inspect reads what fd is, and returns an error unless it is a UDP socket
// of the IPv4 or IPv6 family bound to an address.
func Inspect(fd int) (Bound, error) {
	var b Bound
	getInt := func(level, opt int, name string) (int, error) {
		v, err := unix.GetsockoptInt(fd, level, opt)
		if err != nil {
			return 0, fmt.Errorf("descriptor %d: getsockopt %s: %w", fd, name, err)
		}
		return v, nil
	}
	typ, err := getInt(unix.SOL_SOCKET, unix.SO_TYPE, "SO_TYPE")
	if err != nil {
		return b, err
	}
	if typ != unix.SOCK_DGRAM {
		return b, fmt.Errorf("descriptor %d: socket type %d is not SOCK_DGRAM", fd, typ)
	}
	if b.Family, err = getInt(unix.SOL_SOCKET, unix.SO_DOMAIN, "SO_DOMAIN"); err != nil {
		return b, err
	}
	if b.Family != unix.AF_INET && b.Family != unix.AF_INET6 {
		return b, fmt.Errorf("descriptor %d: socket family %d is neither AF_INET nor AF_INET6", fd, b.Family)
	}
	proto, err := getInt(unix.SOL_SOCKET, unix.SO_PROTOCOL, "SO_PROTOCOL")
	if err != nil {
		return b, err
	}
	if proto != unix.IPPROTO_UDP {
		return b, fmt.Errorf("descriptor %d: protocol %d is not UDP", fd, proto)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return b, fmt.Errorf("descriptor %d: getsockname: %w", fd, err)
	}
	if b.Local = AddrPortOf(sa); b.Local.Port() == 0 {
		return b, fmt.Errorf("descriptor %d: the socket is not bound", fd)
	}
	reuse, err := getInt(unix.SOL_SOCKET, unix.SO_REUSEPORT, "SO_REUSEPORT")
	if err != nil {
		return b, err
	}
	b.ReusePort = reuse != 0
	if b.Family == unix.AF_INET6 {
		v6only, err := getInt(unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, "IPV6_V6ONLY")
		if err != nil {
			return b, err
		}
		b.V6Only = v6only != 0
	}
	return b, nil
}

// SocketFromFD adopts fd, a UDP socket inherited from another process, and
// reads back its family, address and buffer sizes.
func SocketFromFD(fd int) (*Socket, error) {
	s, err := fromFD(fd)
	if err != nil {
		return nil, err
	}
	if err := s.sizeBuffers(0, 0); err != nil {
		return nil, err
	}
	return s, nil
}

// AdoptUDP makes fd, a bound UDP socket from elsewhere (systemd's socket
// activation, a caller's own), a listening socket like those ListenUDP
// opens: it sets the options of every listening socket as cfg says;
// V6Only and Control apply only before bind and are ignored.
func AdoptUDP(fd int, cfg ListenConfig) (*Socket, error) {
	s, err := fromFD(fd)
	if err != nil {
		return nil, err
	}
	if err := s.configure(cfg); err != nil {
		return nil, fmt.Errorf("descriptor %d: %w", fd, err)
	}
	return s, nil
}

// fromFD checks that fd is a bound UDP socket and makes it non-blocking and
// close-on-exec.
func fromFD(fd int) (*Socket, error) {
	b, err := Inspect(fd)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("descriptor %d: %w", fd, err)
	}
	unix.CloseOnExec(fd)
	s := &Socket{FD: fd, Family: b.Family, Local: b.Local, Wildcard: b.Local.Addr().IsUnspecified(), GSO: SocketGSO(fd), Transparent: transparent(fd, b.Family)}
	if sa, err := unix.Getpeername(fd); err == nil {
		s.Remote = AddrPortOf(sa)
	}
	return s, nil
}

// InspectFile is Inspect for f's descriptor.
func InspectFile(f *os.File) (Bound, error) {
	var b Bound
	err := withFD(f, func(fd int) (err error) {
		b, err = Inspect(fd)
		return err
	})
	return b, err
}

// DupFile returns a close-on-exec duplicate of f's descriptor, which the
// caller owns.
func DupFile(f *os.File) (int, error) {
	dup := -1
	err := withFD(f, func(fd int) (err error) {
		if dup, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0); err != nil {
			return fmt.Errorf("dup %s: %w", f.Name(), err)
		}
		return nil
	})
	return dup, err
}

// withFD runs fn with f's descriptor. Unlike f.Fd, it leaves f's blocking
// mode alone.
func withFD(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var fnErr error
	if err := rc.Control(func(fd uintptr) { fnErr = fn(int(fd)) }); err != nil {
		return err
	}
	return fnErr
}
