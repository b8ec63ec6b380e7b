// Command peer runs one of the UDP servers that udpmux is measured against,
// as an echo server (every datagram goes back to its sender) or a sink
// (datagrams are read and dropped):
//
//	-kind bare   recvmmsg/sendmmsg loop, batch -batch, one thread per address:
//	             the floor, nothing can do less work per datagram. Also the
//	             backend echo server of the proxy runs (several -addr).
//	             With -gso it echoes each run of datagrams to one peer as one
//	             UDP GSO message (the fair limit for udpmux, which does the
//	             same); with -gro its socket takes coalesced datagrams
//	             (UDP_GRO), which it returns as GSO messages.
//	-kind gonet  Go's net.UDPConn, ReadFromUDPAddrPort / WriteToUDPAddrPort.
//	-kind gnet   gnet v2 UDP server with one event loop.
//	-kind pion   pion/transport's udp.Listener: a net.Conn per peer, a
//	             goroutine per Conn reading and writing it.
//	-kind muxlisten udpmux's mux.Listen, the same way.
//	-kind connected the seeds' "UDP accept": a socket per peer, bound to the
//	             service address and connected to the peer, found by the
//	             kernel's 4-tuple lookup, served from one epoll loop; at
//	             most -max-sessions (connected.go).
//
// On SIGINT or SIGTERM it prints {"received":N,"sent":M,"messages":K} and
// exits (messages: recvmmsg slots of the bare loop, fewer than received when
// the kernel coalesced datagrams).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/benchmarks/internal/mmsg"
)

// counters are updated by the serving loops and printed at exit.
type counters struct {
	Received atomic.Uint64
	Sent     atomic.Uint64
	Messages atomic.Uint64 // received messages: fewer than Received when the kernel coalesced (UDP_GRO)
	Refused  atomic.Uint64 // connected: datagrams of new peers beyond -max-sessions, dropped
}

func main() {
	var (
		kind   = flag.String("kind", "bare", "bare, gonet, gnet, pion, muxlisten or connected")
		gso    = flag.Bool("gso", false, "bare: echo runs of datagrams to one peer as UDP GSO messages")
		gro    = flag.Bool("gro", false, "bare: receive coalesced datagrams (UDP_GRO); implies -gso")
		mode   = flag.String("mode", "echo", "echo or sink")
		addrs  = flag.String("addr", "198.18.0.2:9000", "listen address:port; bare accepts a comma-separated list")
		batch  = flag.Int("batch", 64, "bare: datagrams per recvmmsg/sendmmsg")
		rcvbuf = flag.Int("rcvbuf", 0, "socket receive buffer bytes; 0 = system default")
		sndbuf = flag.Int("sndbuf", 0, "socket send buffer bytes; 0 = system default")
		maxSes = flag.Int("max-sessions", 1<<20, "connected: sockets (sessions) at most")
	)
	flag.Parse()
	echo := *mode == "echo"
	if !echo && *mode != "sink" {
		fail(fmt.Errorf("-mode %q: want echo or sink", *mode))
	}
	var list []netip.AddrPort
	for s := range strings.SplitSeq(*addrs, ",") {
		ap, err := netip.ParseAddrPort(strings.TrimSpace(s))
		if err != nil || !ap.Addr().Is4() {
			fail(fmt.Errorf("-addr %q: want IPv4 address:port", s))
		}
		list = append(list, ap)
	}
	if *kind != "bare" && len(list) != 1 {
		fail(fmt.Errorf("-kind %s serves exactly one -addr", *kind))
	}
	if *batch < 1 || *batch > 1024 {
		fail(errors.New("-batch must be in [1, 1024]"))
	}

	// One P beyond the serving threads, as udpmux's Serve arranges for its
	// loops: otherwise the runtime takes the P of a thread blocked in
	// recvmmsg and wakes every 20 µs while it does, a cost no server here
	// should carry when it is compared with udpmux.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), len(list)+1))
	}
	var c counters
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	errc := make(chan error, len(list))
	switch *kind {
	case "bare":
		for _, ap := range list {
			fd, err := bareSocket(ap, *rcvbuf, *sndbuf, *gro)
			if err != nil {
				fail(err)
			}
			opts := bareOptions{batch: *batch, echo: echo, gso: *gso || *gro, gro: *gro}
			go func() { errc <- serveBare(fd, opts, &c) }()
		}
	case "gonet":
		go func() { errc <- serveGoNet(list[0], *rcvbuf, *sndbuf, echo, &c) }()
	case "gnet":
		go func() { errc <- serveGnet(list[0], *rcvbuf, *sndbuf, echo, &c) }()
	case "connected":
		go func() { errc <- serveConnected(list[0], *rcvbuf, *sndbuf, *maxSes, echo, &c) }()
	case "pion", "muxlisten":
		ln, err := listen(*kind, list[0], *rcvbuf, *sndbuf)
		if err != nil {
			fail(err)
		}
		go func() { errc <- serveListener(ln, echo, &c) }()
	default:
		fail(fmt.Errorf("-kind %q: want bare, gonet, gnet, pion, muxlisten or connected", *kind))
	}
	select {
	case <-sig:
	case err := <-errc:
		fail(err)
	}
	out, _ := json.Marshal(map[string]uint64{"received": c.Received.Load(), "sent": c.Sent.Load(), "messages": c.Messages.Load(), "refused": c.Refused.Load()})
	fmt.Println(string(out))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "peer:", err)
	os.Exit(1)
}

// bareSocket returns a blocking UDP socket bound to ap, with UDP_GRO if gro.
func bareSocket(ap netip.AddrPort, rcvbuf, sndbuf int, gro bool) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if rcvbuf > 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
			return -1, fmt.Errorf("SO_RCVBUFFORCE: %w", err)
		}
	}
	if sndbuf > 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sndbuf); err != nil {
			return -1, fmt.Errorf("SO_SNDBUFFORCE: %w", err)
		}
	}
	if gro {
		if err := unix.SetsockoptInt(fd, unix.SOL_UDP, udpGRO, 1); err != nil {
			return -1, fmt.Errorf("UDP_GRO: %w", err)
		}
	}
	if err := unix.Bind(fd, mmsg.Sockaddr(ap)); err != nil {
		return -1, fmt.Errorf("bind %v: %w", ap, err)
	}
	return fd, nil
}

// bareOptions set up the bare loop.
type bareOptions struct {
	batch int  // datagrams per recvmmsg
	echo  bool // return every datagram (else drop it)
	gso   bool // echo runs to one peer as GSO messages
	gro   bool // the socket has UDP_GRO: a slot may hold several datagrams
}

// serveBare is the reference loop: one blocking recvmmsg of up to batch
// datagrams, then (echo) one sendmmsg that returns each to its sender, one
// message per datagram or, with gso, one per run to one peer.
func serveBare(fd int, o bareOptions, c *counters) error {
	runtime.LockOSThread()
	b := mmsg.NewBatch(o.batch, 65536, o.echo)
	if o.gro {
		b.EnableControl(cmsgSize)
	}
	groSize := func(i int) int {
		if !o.gro {
			return 0
		}
		return groSegment(b.Control(i))
	}
	var gs *gsoSender
	var rs []segRun
	if o.gso {
		gs = newGSOSender(o.batch)
	}
	for {
		n, err := b.Recv(fd, unix.MSG_WAITFORONE)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return fmt.Errorf("recvmmsg: %w", err)
		}
		got := n
		if o.gro {
			got = 0
			for i := range n {
				got += segments(b.Len(i), groSize(i))
			}
		}
		c.Received.Add(uint64(got))
		c.Messages.Add(uint64(n))
		if !o.echo {
			continue
		}
		if gs != nil {
			rs = gsoRuns(b, n, groSize, rs)
			gs.echo(fd, b, rs) // a reply that cannot be sent is dropped, as a real server would
		} else {
			echoEach(fd, b, n)
		}
		c.Sent.Add(uint64(got))
	}
}

// echoEach returns slots [0, n) of b to their senders, one message each.
func echoEach(fd int, b *mmsg.Batch, n int) {
	b.EchoLens(n)
	for done := 0; done < n; {
		m, err := b.SendFrom(fd, done, n, 0)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return // a reply that cannot be sent is dropped, as a real server would
		}
		done += m
	}
}

// serveGoNet serves with the standard library, one datagram per call.
func serveGoNet(ap netip.AddrPort, rcvbuf, sndbuf int, echo bool, c *counters) error {
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return err
	}
	if rcvbuf > 0 {
		if err := conn.SetReadBuffer(rcvbuf); err != nil {
			return err
		}
	}
	if sndbuf > 0 {
		if err := conn.SetWriteBuffer(sndbuf); err != nil {
			return err
		}
	}
	buf := make([]byte, 65536)
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return err
		}
		c.Received.Add(1)
		if echo {
			if _, err := conn.WriteToUDPAddrPort(buf[:n], from); err == nil {
				c.Sent.Add(1)
			}
		}
	}
}

// gnetServer is the gnet event handler: it reads each datagram and, in echo
// mode, writes it back on the same connection (gnet's UDP Conn replies to the
// datagram's sender).
type gnetServer struct {
	gnet.BuiltinEventEngine
	echo bool
	c    *counters
}

// OnTraffic handles one datagram.
func (s *gnetServer) OnTraffic(conn gnet.Conn) gnet.Action {
	buf, err := conn.Next(-1)
	if err != nil {
		return gnet.Close
	}
	s.c.Received.Add(1)
	if s.echo {
		if _, err := conn.Write(buf); err == nil {
			s.c.Sent.Add(1)
		}
	}
	return gnet.None
}

// serveGnet serves with one gnet event loop.
func serveGnet(ap netip.AddrPort, rcvbuf, sndbuf int, echo bool, c *counters) error {
	opts := []gnet.Option{gnet.WithMulticore(false), gnet.WithNumEventLoop(1), gnet.WithLockOSThread(true)}
	if rcvbuf > 0 {
		opts = append(opts, gnet.WithSocketRecvBuffer(rcvbuf))
	}
	if sndbuf > 0 {
		opts = append(opts, gnet.WithSocketSendBuffer(sndbuf))
	}
	return gnet.Run(&gnetServer{echo: echo, c: c}, "udp4://"+ap.String(), opts...)
}
