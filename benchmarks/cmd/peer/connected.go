package main

import (
	"fmt"
	"net/netip"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/benchmarks/internal/mmsg"
)

// The seeds' "UDP accept" (-kind connected): a listening socket bound to
// the service address with SO_REUSEADDR and SO_REUSEPORT; for a datagram
// from a peer it has no socket for, a new socket bound to the same address
// and connected to the peer, which the kernel prefers from then on for that
// peer's datagrams (an exact 4-tuple match; on Linux 6.13 and later found by
// the connected-socket 4-tuple hash, hash4, and out of the reuseport
// group). epoll says which socket is ready: its data is the session. One
// thread, like the other peers' loops.
//
// Up to maxSessions sockets; a new peer beyond that gets no socket and its
// datagrams are dropped (counted as refused), as udpmux refuses sessions
// beyond sessions.max. Between bind and connect a new socket can receive
// another peer's datagram (the race the seeds name): it is answered from the
// listening socket, as one that arrived there.
type connectedServer struct {
	ap       netip.AddrPort
	listener int
	epfd     int
	echo     bool
	max      int
	// peers maps a peer to its socket; peerOf a socket to its peer.
	peers  map[netip.AddrPort]int
	peerOf map[int]netip.AddrPort
	c      *counters
}

// serveConnected runs the connected-socket server on ap until an error.
func serveConnected(ap netip.AddrPort, rcvbuf, sndbuf, maxSessions int, echo bool, c *counters) error {
	runtime.LockOSThread()
	s, err := newConnectedServer(ap, rcvbuf, sndbuf, maxSessions, echo, c)
	if err != nil {
		return err
	}
	return s.serve()
}

// newConnectedServer binds the listening socket (port 0 picks one, which
// the sessions' sockets then bind too).
func newConnectedServer(ap netip.AddrPort, rcvbuf, sndbuf, maxSessions int, echo bool, c *counters) (*connectedServer, error) {
	if err := raiseNoFile(maxSessions + 64); err != nil {
		return nil, err
	}
	lfd, err := reuseSocket(ap, rcvbuf, sndbuf)
	if err != nil {
		return nil, err
	}
	if sa, err := unix.Getsockname(lfd); err == nil {
		if in, ok := sa.(*unix.SockaddrInet4); ok {
			ap = netip.AddrPortFrom(netip.AddrFrom4(in.Addr), uint16(in.Port))
		}
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		unix.Close(lfd)
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	s := &connectedServer{ap: ap, listener: lfd, epfd: epfd, echo: echo, max: maxSessions,
		peers: map[netip.AddrPort]int{}, peerOf: map[int]netip.AddrPort{}, c: c}
	if err := s.watch(lfd); err != nil {
		return nil, err
	}
	return s, nil
}

// serve runs the loop until an error.
func (s *connectedServer) serve() error {
	events := make([]unix.EpollEvent, 256)
	b := mmsg.NewBatch(64, 2048, true)
	for {
		n, err := unix.EpollWait(s.epfd, events, -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return fmt.Errorf("epoll_wait: %w", err)
		}
		for _, ev := range events[:n] {
			if err := s.drain(int(ev.Fd), b); err != nil {
				return err
			}
		}
	}
}

// drain reads socket fd until it has nothing more, and answers.
func (s *connectedServer) drain(fd int, b *mmsg.Batch) error {
	for {
		n, err := b.Recv(fd, unix.MSG_DONTWAIT)
		switch {
		case err == unix.EAGAIN || err == unix.EWOULDBLOCK:
			return nil
		case err == unix.EINTR:
			continue
		case err == unix.ECONNREFUSED:
			continue // an ICMP error for a connected socket's peer
		case err != nil:
			return fmt.Errorf("recvmmsg: %w", err)
		}
		s.c.Received.Add(uint64(n))
		s.c.Messages.Add(uint64(n))
		for i := range n {
			peer := peerAddr(b.Name(i))
			own, ok := s.peerOf[fd]
			switch {
			case ok && peer == own:
				s.reply(fd, b.Bufs[i][:b.Len(i)], netip.AddrPort{})
			default:
				s.fromListener(peer, b.Bufs[i][:b.Len(i)])
			}
		}
		if n < len(b.Hdrs) {
			return nil
		}
	}
}

// fromListener serves a datagram that reached a socket other than its
// peer's: it opens the peer's socket if there is room, and answers from
// the listening socket.
func (s *connectedServer) fromListener(peer netip.AddrPort, p []byte) {
	if _, ok := s.peers[peer]; !ok {
		if len(s.peers) >= s.max {
			s.c.Refused.Add(1)
			return
		}
		fd, err := s.open(peer)
		if err != nil {
			s.c.Refused.Add(1)
			return
		}
		s.peers[peer], s.peerOf[fd] = fd, peer
	}
	s.reply(s.listener, p, peer)
}

// reply echoes p on fd (to peer, unless fd is connected).
func (s *connectedServer) reply(fd int, p []byte, peer netip.AddrPort) {
	if !s.echo {
		return
	}
	var err error
	if peer.IsValid() {
		err = unix.Sendto(fd, p, unix.MSG_DONTWAIT, mmsg.Sockaddr(peer))
	} else {
		err = unix.Send(fd, p, unix.MSG_DONTWAIT)
	}
	if err == nil {
		s.c.Sent.Add(1)
	}
}

// open returns a new socket bound to the service address and connected to
// peer, watched by epoll.
func (s *connectedServer) open(peer netip.AddrPort) (int, error) {
	fd, err := reuseSocket(s.ap, 0, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, mmsg.Sockaddr(peer)); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := s.watch(fd); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// watch adds fd to the epoll set, its descriptor as the event's data.
func (s *connectedServer) watch(fd int) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
	if err := unix.EpollCtl(s.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return nil
}

// reuseSocket returns a non-blocking UDP socket with SO_REUSEADDR and
// SO_REUSEPORT, bound to ap.
func reuseSocket(ap netip.AddrPort, rcvbuf, sndbuf int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	for _, o := range []struct{ opt, v int }{
		{unix.SO_REUSEADDR, 1}, {unix.SO_REUSEPORT, 1}, {unix.SO_RCVBUFFORCE, rcvbuf}, {unix.SO_SNDBUFFORCE, sndbuf},
	} {
		if o.v == 0 {
			continue
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o.opt, o.v); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("setsockopt %d: %w", o.opt, err)
		}
	}
	if err := unix.Bind(fd, mmsg.Sockaddr(ap)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %v: %w", ap, err)
	}
	return fd, nil
}

// peerAddr decodes a sockaddr_in the kernel wrote.
func peerAddr(name []byte) netip.AddrPort {
	if len(name) < 8 {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(name[4:8])), uint16(name[2])<<8|uint16(name[3]))
}

// raiseNoFile raises the descriptor limit to n if it is lower (root may
// raise the hard limit too).
func raiseNoFile(n int) error {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	if rl.Cur >= uint64(n) {
		return nil
	}
	rl.Cur = uint64(n)
	rl.Max = max(rl.Max, rl.Cur)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Errorf("RLIMIT_NOFILE %d: %w", n, err)
	}
	return nil
}
