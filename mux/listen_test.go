//go:build linux

package mux

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/udpsys"
)

// echoListen serves lc's Listener on network and address with an echo per
// Conn, until the test ends.
func echoListen(t *testing.T, lc ListenConfig, network, address string) *Listener {
	t.Helper()
	lc.Logger = quietLogger()
	ln, err := lc.Listen(context.Background(), network, address)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				buf := make([]byte, 2048)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					c.Write(buf[:n])
				}
			})
		}
	})
	return ln
}

// echoes reports whether a client on network reaches ln's port at ip and
// hears its datagram back.
func echoes(t *testing.T, ln *Listener, network string, ip netip.Addr) bool {
	t.Helper()
	to := netip.AddrPortFrom(ip, uint16(ln.Addr().(*net.UDPAddr).Port))
	c, err := net.DialUDP(network, nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		t.Fatalf("dial %s: %v", to, err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	// The first datagram may race with the listener's first Accept; a
	// refusal (ICMP port unreachable) is an answer at once.
	for range 3 {
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n]) == "ping"
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			return false
		}
	}
	return false
}

// TestListenAddresses: each network and address binds what net's would,
// and serves the families net's would.
func TestListenAddresses(t *testing.T) {
	v4, v6 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")
	tests := []struct {
		network, address string
		bound            string // the IP Addr reports
		v6only           bool   // IPV6_V6ONLY on an IPv6 socket
		reach4, reach6   bool
	}{
		{"udp", "127.0.0.1:0", "127.0.0.1", false, true, false},
		{"udp4", "127.0.0.1:0", "127.0.0.1", false, true, false},
		{"udp", "localhost:0", "127.0.0.1", false, true, false},
		{"udp6", "[::1]:0", "::1", true, false, true},
		{"udp", "[::1]:0", "::1", true, false, true}, // the kernel's, for a bind to an IPv6 address
		{"udp4", ":0", "0.0.0.0", false, true, false},
		{"udp6", ":0", "::", true, false, true},
		{"udp", ":0", "::", false, true, true},
		{"udp", "", "::", false, true, true},
		{"udp", "[::]:0", "::", false, true, true},
		{"udp6", "[::]:0", "::", true, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.network+" "+tt.address, func(t *testing.T) {
			ln := echoListen(t, ListenConfig{Workers: 2}, tt.network, tt.address)
			addr := ln.Addr().(*net.UDPAddr)
			if got := addr.AddrPort().Addr().String(); got != tt.bound || addr.Port == 0 {
				t.Errorf("Addr %s, want %s with a port", addr, tt.bound)
			}
			for _, l := range ln.srv.loops {
				sock := l.socks[0].sock
				if sock.Family != unix.AF_INET6 {
					continue
				}
				if v, _ := unix.GetsockoptInt(sock.FD, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); (v != 0) != tt.v6only {
					t.Errorf("loop %d: IPV6_V6ONLY %d, want %v", l.id, v, tt.v6only)
				}
			}
			if got := echoes(t, ln, "udp4", v4); got != tt.reach4 {
				t.Errorf("an IPv4 client is answered: %v, want %v", got, tt.reach4)
			}
			if got := echoes(t, ln, "udp6", v6); got != tt.reach6 {
				t.Errorf("an IPv6 client is answered: %v, want %v", got, tt.reach6)
			}
		})
	}
}

// TestListenErrors: errors are *net.OpError, worded as net's.
func TestListenErrors(t *testing.T) {
	taken, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	boom := errors.New("boom")
	tests := []struct {
		name, network, address string
		lc                     ListenConfig
		want                   string
		is                     error
	}{
		{name: "network", network: "tcp", address: ":0", want: "listen tcp: unknown network tcp"},
		{name: "no port", network: "udp", address: "127.0.0.1", want: "listen udp: address 127.0.0.1: missing port in address"},
		{name: "family", network: "udp6", address: "127.0.0.1:0", want: "listen udp6: address 127.0.0.1:0: no suitable address found"},
		{name: "zone", network: "udp6", address: "[fe80::1%lo]:0", want: "listen udp6: address fe80::1%lo: IPv6 zones are not supported"},
		{name: "in use", network: "udp", address: taken.LocalAddr().String(),
			want: fmt.Sprintf("listen udp %[1]s: %[1]s is already served by another server of this process", taken.LocalAddr())},
		{name: "control", network: "udp4", address: "127.0.0.1:0",
			lc:   ListenConfig{Control: func(string, string, syscall.RawConn) error { return boom }},
			want: "listen udp4 127.0.0.1:0: control 127.0.0.1:0: boom", is: boom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.lc.Logger = quietLogger()
			ln, err := tt.lc.Listen(context.Background(), tt.network, tt.address)
			if err == nil {
				ln.Close()
				t.Fatal("Listen succeeded")
			}
			var op *net.OpError
			if !errors.As(err, &op) || op.Op != "listen" || !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("error %q (%T), want %q... in a *net.OpError", err, err, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %q does not wrap %v", err, tt.is)
			}
		})
	}
}

// TestListenControl: Control runs for every worker's socket before bind,
// and what it sets is on the sockets that serve.
func TestListenControl(t *testing.T) {
	var mu sync.Mutex
	var calls []string
	lc := ListenConfig{Workers: 2, Control: func(network, address string, c syscall.RawConn) error {
		mu.Lock()
		calls = append(calls, network+" "+address)
		mu.Unlock()
		var err error
		c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_FREEBIND, 1) })
		return err
	}}
	ln := echoListen(t, lc, "udp4", "127.0.0.1:0")
	port := ln.Addr().(*net.UDPAddr).Port
	// The first socket binds port 0; the others the port it got.
	want := []string{"udp4 127.0.0.1:0", fmt.Sprintf("udp4 127.0.0.1:%d", port)}
	if fmt.Sprint(calls) != fmt.Sprint(want) {
		t.Errorf("Control calls %q, want %q", calls, want)
	}
	for _, l := range ln.srv.loops {
		if v, err := unix.GetsockoptInt(l.socks[0].sock.FD, unix.IPPROTO_IP, unix.IP_FREEBIND); err != nil || v != 1 {
			t.Errorf("loop %d: IP_FREEBIND %d, %v; Control set 1", l.id, v, err)
		}
	}
	if !echoes(t, ln, "udp4", netip.MustParseAddr("127.0.0.1")) {
		t.Error("no echo")
	}
}

// boundFile returns the file of a socket bound to address, with
// SO_REUSEPORT if reuse, as a .socket unit would pass it: a UDP socket, or
// for network "tcp" a listening TCP one.
func boundFile(t *testing.T, network, address string, reuse bool) *os.File {
	t.Helper()
	nlc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		if reuse {
			c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		}
		return err
	}}
	var sock interface {
		File() (*os.File, error)
		Close() error
	}
	var err error
	if network == "tcp" {
		var ln net.Listener
		ln, err = nlc.Listen(context.Background(), network, address)
		sock, _ = ln.(*net.TCPListener)
	} else {
		var pc net.PacketConn
		pc, err = nlc.ListenPacket(context.Background(), network, address)
		sock, _ = pc.(*net.UDPConn)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	f, err := sock.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestListenAdoptsSockets: a Listener serves the sockets it is given, and
// its other workers join their group when they can.
func TestListenAdoptsSockets(t *testing.T) {
	tests := []struct {
		name    string
		network string
		sock    *os.File
		workers int
		address func(sock *os.File) string // "" for the sockets' own
		want    string                     // "" for success, else part of the error
	}{
		{name: "reuseport, 2 workers", network: "udp4", sock: boundFile(t, "udp4", "127.0.0.1:0", true), workers: 2},
		{name: "reuseport, 2 workers, IPv6", network: "udp6", sock: boundFile(t, "udp6", "[::1]:0", true), workers: 2},
		{name: "wildcard, address named", network: "udp", sock: boundFile(t, "udp", ":0", true), workers: 2,
			address: func(f *os.File) string { return localAddr(t, f).String() }},
		{name: "no reuseport, 1 worker", network: "udp4", sock: boundFile(t, "udp4", "127.0.0.1:0", false), workers: 1},
		{name: "no reuseport, 2 workers", network: "udp4", sock: boundFile(t, "udp4", "127.0.0.1:0", false), workers: 2,
			want: "without SO_REUSEPORT on them the other workers cannot bind it too: set ReusePort=yes in the .socket unit, or set workers to 1"},
		{name: "IPv4 wildcard, empty host", network: "udp", sock: boundFile(t, "udp4", ":0", true), workers: 2,
			address: func(f *os.File) string { return fmt.Sprintf(":%d", localAddr(t, f).Port()) }},
		{name: "another address", network: "udp4", sock: boundFile(t, "udp4", "127.0.0.1:0", true), workers: 1,
			address: func(*os.File) string { return "127.0.0.1:1" }, want: "listen udp4: address 127.0.0.1:1: the sockets given are bound to 127.0.0.1:"},
		{name: "another family", network: "udp6", sock: boundFile(t, "udp4", "127.0.0.1:0", true), workers: 1,
			want: "listen udp6: the sockets given are of another family, bound to 127.0.0.1:"},
		{name: "tcp", network: "udp", sock: boundFile(t, "tcp", "127.0.0.1:0", false), workers: 1, want: "listeners[0].sockets[0] (tcp:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lc := ListenConfig{Workers: tt.workers, Sockets: []*os.File{tt.sock}, Logger: quietLogger()}
			address := ""
			if tt.address != nil {
				address = tt.address(tt.sock)
			}
			if tt.want != "" {
				ln, err := lc.Listen(context.Background(), tt.network, address)
				if err == nil {
					ln.Close()
					t.Fatal("Listen succeeded")
				}
				if !strings.Contains(err.Error(), tt.want) {
					t.Errorf("error %q does not say %q", err, tt.want)
				}
				return
			}
			ln := echoListen(t, lc, tt.network, address)
			want := localAddr(t, tt.sock)
			if got := ln.Addr().(*net.UDPAddr).AddrPort(); got != want {
				t.Errorf("Addr %s, want the socket's %s", got, want)
			}
			ino := fileInode(t, tt.sock)
			if got, _ := udpsys.Inode(ln.srv.loops[0].socks[0].sock.FD); got != ino {
				t.Error("loop 0 does not serve the socket it was given")
			}
			if tt.workers > 1 {
				if got, _ := udpsys.Inode(ln.srv.loops[1].socks[0].sock.FD); got == ino {
					t.Error("loop 1 serves the given socket too, instead of one of its own")
				}
			}
			tt.sock.Close() // the Listener holds its own duplicate
			ip := want.Addr()
			if ip.IsUnspecified() {
				ip = netip.MustParseAddr("127.0.0.1")
			}
			network := "udp4"
			if ip.Is6() {
				network = "udp6"
			}
			if !echoes(t, ln, network, ip) {
				t.Error("no echo through the adopted socket")
			}
		})
	}
}

func localAddr(t *testing.T, f *os.File) netip.AddrPort {
	t.Helper()
	b, err := udpsys.InspectFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return b.Local
}

// fileInode returns the inode of f's socket; f.Fd would make the socket,
// which the Listener shares, blocking.
func fileInode(t *testing.T, f *os.File) uint64 {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var ino uint64
	rc.Control(func(fd uintptr) { ino, err = udpsys.Inode(int(fd)) })
	if err != nil {
		t.Fatal(err)
	}
	return ino
}

// TestActivationSockets runs itself again as systemd would start a
// socket-activated service: the socket on descriptor 3, LISTEN_FDS=1 and
// LISTEN_PID the child's (which only the child knows, so it sets it).
func TestActivationSockets(t *testing.T) {
	if addr := os.Getenv("UDPMUX_TEST_ACTIVATION"); addr != "" {
		activationChild(t, addr)
		return
	}
	f := boundFile(t, "udp4", "127.0.0.1:0", true)
	addr := localAddr(t, f)
	cmd := exec.Command(os.Args[0], "-test.run=^TestActivationSockets$", "-test.v")
	cmd.Env = append(os.Environ(), "UDPMUX_TEST_ACTIVATION="+addr.String(), "LISTEN_FDS=1")
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestActivationSockets") {
		t.Fatalf("activated child: %v\n%s", err, out)
	}
}

func activationChild(t *testing.T, addr string) {
	os.Setenv("LISTEN_PID", fmt.Sprint(os.Getpid()))
	port := netip.MustParseAddrPort(addr).Port()
	if got, err := ActivationSockets(fmt.Sprintf("127.0.0.2:%d", port)); err != nil || len(got) != 0 {
		t.Fatalf("ActivationSockets of another address: %v, %v", got, err)
	}
	socks, err := ActivationSockets(addr)
	if err != nil || len(socks) != 1 {
		t.Fatalf("ActivationSockets(%s): %v, %v; want the socket on descriptor 3", addr, socks, err)
	}
	if os.Getenv("LISTEN_FDS") != "" {
		t.Error("LISTEN_FDS is still set")
	}
	if again, _ := ActivationSockets(addr); len(again) != 0 {
		t.Errorf("the socket was handed out twice")
	}
	ln := echoListen(t, ListenConfig{Workers: 2, Sockets: socks}, "udp", addr)
	socks[0].Close()
	if !echoes(t, ln, "udp4", netip.MustParseAddr("127.0.0.1")) {
		t.Error("no echo through the activation socket")
	}
}

func TestAcceptContextAndDeadline(t *testing.T) {
	ln := listen(t, ListenConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	_, err := ln.AcceptContext(ctx)
	var op *net.OpError
	if !errors.Is(err, context.Canceled) || !errors.As(err, &op) || op.Op != "accept" {
		t.Errorf("AcceptContext after cancel: %v, want context.Canceled in an accept *net.OpError", err)
	}

	ln.SetDeadline(time.Now().Add(20 * time.Millisecond))
	start := time.Now()
	_, err = ln.Accept()
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("Accept after the deadline: %v, want a timeout wrapping os.ErrDeadlineExceeded", err)
	}
	if waited := time.Since(start); waited < 15*time.Millisecond {
		t.Errorf("Accept gave up after %s, before the deadline", waited)
	}
	// A deadline already past wins over a waiting session, as net's.
	dial(t, "udp4", netip.AddrPort{}, netip.MustParseAddrPort(ln.Addr().String())).Write([]byte("x"))
	waitFor(t, 5*time.Second, "a session waiting", func() bool { return len(ln.handler.backlog) == 1 })
	if _, err := ln.Accept(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Accept with a past deadline: %v", err)
	}
	ln.SetDeadline(time.Time{})
	if _, err := ln.Accept(); err != nil {
		t.Errorf("Accept after clearing the deadline: %v", err)
	}
}
