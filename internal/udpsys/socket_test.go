//go:build linux

package udpsys

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func getInt(t *testing.T, fd, level, opt int) int {
	t.Helper()
	v, err := unix.GetsockoptInt(fd, level, opt)
	if err != nil {
		t.Fatalf("getsockopt: %v", err)
	}
	return v
}

// TestControlRunsBeforeBind: Control sees the socket unbound, with the
// network and address it is about to be bound to, and what it sets stays.
func TestControlRunsBeforeBind(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0", "0.0.0.0:0", "[::]:0"} {
		t.Run(addr, func(t *testing.T) {
			ap := netip.MustParseAddrPort(addr)
			var gotNet, gotAddr string
			var controlErr error
			s, err := ListenUDP(ap, ListenConfig{IncomingCPU: -1, Control: func(network, address string, c syscall.RawConn) error {
				gotNet, gotAddr = network, address
				controlErr = c.Control(func(fd uintptr) {
					if sa, _ := unix.Getsockname(int(fd)); AddrPortOf(sa).Port() != 0 {
						t.Error("Control ran after bind")
					}
					unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PRIORITY, 5)
				})
				return nil
			}})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			want := "udp4"
			if ap.Addr().Is6() {
				want = "udp6"
			}
			if gotNet != want || gotAddr != addr || controlErr != nil {
				t.Errorf("Control got %q %q (Control: %v); want %q %q", gotNet, gotAddr, controlErr, want, addr)
			}
			if prio := getInt(t, s.FD, unix.SOL_SOCKET, unix.SO_PRIORITY); prio != 5 {
				t.Errorf("SO_PRIORITY %d after Control set 5", prio)
			}
		})
	}
}

func TestControlErrorFailsListen(t *testing.T) {
	boom := errors.New("boom")
	var rawErrs []error
	_, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		rawErrs = append(rawErrs, c.Read(func(uintptr) bool { return true }), c.Write(func(uintptr) bool { return true }))
		return boom
	}})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "control") {
		t.Errorf("ListenUDP: %v, want the Control error", err)
	}
	for _, e := range rawErrs {
		if e == nil {
			t.Error("RawConn.Read or Write before bind succeeded")
		}
	}
}

// TestV6Only: an IPv6 socket is dual-stack unless asked, whatever the
// host's default.
func TestV6Only(t *testing.T) {
	for _, v6only := range []bool{false, true} {
		s, err := ListenUDP(netip.MustParseAddrPort("[::]:0"), ListenConfig{V6Only: v6only})
		if err != nil {
			t.Fatal(err)
		}
		got := getInt(t, s.FD, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY) != 0
		b, err := Inspect(s.FD)
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got != v6only || b.V6Only != v6only || !b.ReusePort {
			t.Errorf("V6Only %v: IPV6_V6ONLY %v, Inspect %+v", v6only, got, b)
		}
	}
}

// TestInspectRefusesWhatIsNoBoundUDPSocket names what is wrong with each.
func TestInspectRefusesWhatIsNoBoundUDPSocket(t *testing.T) {
	socket := func(family, typ, proto int) int {
		fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	f, err := os.CreateTemp(t.TempDir(), "file")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, tc := range []struct {
		name string
		fd   int
		want string
	}{
		{"file", int(f.Fd()), "socket operation on non-socket"},
		{"tcp", socket(unix.AF_INET, unix.SOCK_STREAM, 0), "not SOCK_DGRAM"},
		{"unix", socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0), "neither AF_INET nor AF_INET6"},
		{"unbound", socket(unix.AF_INET, unix.SOCK_DGRAM, 0), "not bound"},
	} {
		if _, err := Inspect(tc.fd); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
}

// TestAdoptUDP: a socket bound elsewhere, duplicated from its *os.File,
// gets what a listening socket needs.
func TestAdoptUDP(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv6unspecified})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	f, err := pc.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd, err := DupFile(f)
	if err != nil {
		t.Fatal(err)
	}
	s, err := AdoptUDP(fd, ListenConfig{IncomingCPU: 0, RecvBuffer: 1 << 20})
	if err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	defer s.Close()
	if s.Local.Port() != uint16(pc.LocalAddr().(*net.UDPAddr).Port) || !s.Wildcard || s.Family != unix.AF_INET6 {
		t.Errorf("adopted %+v, from %v", s, pc.LocalAddr())
	}
	for _, o := range []struct {
		level, opt int
		name       string
	}{
		{unix.SOL_SOCKET, unix.SO_RXQ_OVFL, "SO_RXQ_OVFL"},
		{unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO"},
		{unix.IPPROTO_IP, unix.IP_PKTINFO, "IP_PKTINFO"},
	} {
		if getInt(t, s.FD, o.level, o.opt) == 0 {
			t.Errorf("%s not set on the adopted socket", o.name)
		}
	}
	if fl, _ := unix.FcntlInt(uintptr(s.FD), unix.F_GETFL, 0); fl&unix.O_NONBLOCK == 0 {
		t.Error("the adopted socket blocks")
	}
	if s.RecvBuffer == 0 {
		t.Error("the adopted socket's receive buffer was not read back")
	}
}

// TestWakeAfterCloseWritesNothing: a Poller's wake descriptor number, once
// closed, may name another file; Wake then must not write to it.
func TestWakeAfterCloseWritesNothing(t *testing.T) {
	p, err := NewPoller(4, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wake := p.wake
	p.Close()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	if fds[0] != wake && fds[1] != wake {
		t.Skipf("the pipe got descriptors %v, not the closed wake descriptor %d", fds, wake)
	}
	p.Wake()
	buf := make([]byte, 16)
	if n, _ := unix.Read(fds[0], buf); n > 0 {
		t.Fatalf("Wake wrote %d bytes into the file that reused the wake descriptor", n)
	}
}

// TestPoller: what a Poller reports: a watched descriptor ready to read or
// write by its token, its wake-ups and ticks apart from the events.
func TestPoller(t *testing.T) {
	p, err := NewPoller(4, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	tok := Token{Kind: 7, Index: 3}
	if err := p.Add(fds[0], tok); err != nil {
		t.Fatal(err)
	}
	unix.Write(fds[1], []byte("x"))
	p.Wake()
	n, woken, _, err := p.Wait(false)
	if err != nil || n != 1 || !woken || p.Event(0) != (Event{Token: tok, Readable: true}) {
		t.Fatalf("Wait = %d, woken %v, %v; event %+v", n, woken, err, p.Event(0))
	}
	if err := p.Add(fds[1], Token{Kind: 8}); err != nil {
		t.Fatal(err)
	}
	if err := p.Set(fds[1], Token{Kind: 8}, false, true); err != nil {
		t.Fatal(err)
	}
	p.Remove(fds[0])
	for ticked := false; !ticked; {
		var n int
		if n, _, ticked, err = p.Wait(false); err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if ev := p.Event(i); ev != (Event{Token: Token{Kind: 8}, Writable: true}) {
				t.Errorf("event %+v", ev)
			}
		}
	}
}
