//go:build linux

package udpsys

import (
	"errors"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/netlab"
)

// transparentNS is a namespace where the clients' addresses of the
// transparent tests, 198.18.7.0/24 and 2001:db8:7::/64, are routed to this
// host by policy routing, as docs/operations.md sets it up for replies to
// clients (here for every datagram to them, with no firewall mark): not
// local addresses, which a socket may bind only with IP_TRANSPARENT.
func transparentNS(t *testing.T) *netlab.Namespace {
	t.Helper()
	ns := netlab.New(t).NewNamespace("transparent")
	ns.IP("rule", "add", "to", "198.18.7.0/24", "lookup", "100")
	ns.IP("route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
	ns.IP("-6", "rule", "add", "to", "2001:db8:7::/64", "lookup", "100")
	ns.IP("-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100")
	return ns
}

// in runs fn in ns, failing the test on its error.
func in(t *testing.T, ns *netlab.Namespace, fn func() error) {
	t.Helper()
	if err := ns.Do(fn); err != nil {
		t.Fatal(err)
	}
}

// readFrom waits up to a second for a datagram on fd and returns it with
// its sender.
func readFrom(t *testing.T, fd int) (string, netip.AddrPort) {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 1000); err != nil || n != 1 {
		t.Fatalf("nothing to read on descriptor %d within 1s (%v)", fd, err)
	}
	buf := make([]byte, 64)
	n, from, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n]), AddrPortOf(from)
}

func send(t *testing.T, fd int, p string, to netip.AddrPort, family int) {
	t.Helper()
	if err := unix.Sendto(fd, []byte(p), 0, SockaddrFor(to, family)); err != nil {
		t.Fatalf("send to %v: %v", to, err)
	}
}

// TestDialTransparent: a socket dialed with a Source that is not the
// host's sends from it, and gets the replies of the peer it is connected
// to, while another socket from the same source to another peer gets that
// one's; both families.
func TestDialTransparent(t *testing.T) {
	ns := transparentNS(t)
	for _, tc := range []struct {
		name     string
		loopback string
		source   netip.AddrPort
	}{
		{"IPv4", "127.0.0.1", netip.MustParseAddrPort("198.18.7.5:4000")},
		{"IPv4 v4-mapped source", "127.0.0.1", netip.MustParseAddrPort("[::ffff:198.18.7.6]:4000")},
		{"IPv6", "::1", netip.MustParseAddrPort("[2001:db8:7::5]:4000")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := netip.AddrPortFrom(tc.source.Addr().Unmap(), tc.source.Port())
			var backends [2]*Socket
			var socks [2]*Socket
			in(t, ns, func() (err error) {
				for i := range backends {
					if backends[i], err = ListenUDP(netip.AddrPortFrom(netip.MustParseAddr(tc.loopback), 0), ListenConfig{IncomingCPU: -1}); err != nil {
						return err
					}
					t.Cleanup(func() { backends[i].Close() })
				}
				for i := range socks {
					if socks[i], err = DialUDP(backends[i].Local, ListenConfig{Source: tc.source}); err != nil {
						return err
					}
					t.Cleanup(func() { socks[i].Close() })
				}
				return nil
			})
			for i, s := range socks {
				if s.Local != want || !s.Transparent {
					t.Errorf("socket %d: local %v, transparent %v; want %v, true", i, s.Local, s.Transparent, want)
				}
				if err := unix.Send(s.FD, []byte("hello "+strconv.Itoa(i)), 0); err != nil {
					t.Fatal(err)
				}
				p, from := readFrom(t, backends[i].FD)
				if from != want || p != "hello "+strconv.Itoa(i) {
					t.Errorf("backend %d got %q from %v; want %q from the source %v", i, p, from, "hello "+strconv.Itoa(i), want)
				}
			}
			// Replies to the same source, each for the socket connected to
			// its sender.
			for i := len(socks) - 1; i >= 0; i-- {
				send(t, backends[i].FD, "reply "+strconv.Itoa(i), want, backends[i].Family)
			}
			for i, s := range socks {
				if p, from := readFrom(t, s.FD); p != "reply "+strconv.Itoa(i) || from != backends[i].Local {
					t.Errorf("socket %d got %q from %v; want backend %d's reply", i, p, from, i)
				}
			}
			inherited, err := SocketFromFD(dup(t, socks[0].FD))
			if err != nil {
				t.Fatal(err)
			}
			defer inherited.Close()
			if !inherited.Transparent || inherited.Local != want || inherited.Remote != backends[0].Local {
				t.Errorf("SocketFromFD: transparent %v, %v -> %v; want true, %v -> %v", inherited.Transparent, inherited.Local, inherited.Remote, want, backends[0].Local)
			}
		})
	}
}

func dup(t *testing.T, fd int) int {
	t.Helper()
	d, err := unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDialTransparentDropsWhatCameBeforeConnect: a datagram from another
// sender that reached the socket between its bind and its connect is not
// read afterwards as if its peer had sent it.
func TestDialTransparentDropsWhatCameBeforeConnect(t *testing.T) {
	ns := transparentNS(t)
	src := netip.MustParseAddrPort("198.18.7.9:4001")
	var s, forger, peer *Socket
	in(t, ns, func() (err error) {
		if forger, err = ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), ListenConfig{IncomingCPU: -1}); err != nil {
			return err
		}
		if peer, err = ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), ListenConfig{IncomingCPU: -1}); err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		s = &Socket{FD: fd, Family: unix.AF_INET}
		return s.bindTransparent(src)
	})
	defer forger.Close()
	defer peer.Close()
	defer s.Close()
	send(t, forger.FD, "forged", src, unix.AF_INET)
	pfd := []unix.PollFd{{Fd: int32(s.FD), Events: unix.POLLIN}}
	if n, _ := unix.Poll(pfd, 1000); n != 1 {
		t.Fatal("the forged datagram did not reach the bound socket: the test proves nothing")
	}
	if err := s.connect(peer.Local, ListenConfig{}); err != nil {
		t.Fatal(err)
	}
	send(t, peer.FD, "peer", src, unix.AF_INET)
	if p, from := readFrom(t, s.FD); p != "peer" || from != peer.Local {
		t.Errorf("read %q from %v after connecting; want only the peer's datagram", p, from)
	}
}

func TestDialTransparentFamilies(t *testing.T) {
	_, err := DialUDP(netip.MustParseAddrPort("[::1]:9"), ListenConfig{Source: netip.MustParseAddrPort("198.18.7.5:4000")})
	if !errors.Is(err, errFamilies) {
		t.Errorf("DialUDP to IPv6 from IPv4: %v; want %v", err, errFamilies)
	}
}

// TestCanBindTransparent reads the effective set as /proc/self/status
// shows it.
func TestCanBindTransparent(t *testing.T) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	var eff uint64
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			if eff, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := eff&(1<<unix.CAP_NET_ADMIN|1<<unix.CAP_NET_RAW) != 0
	got, err := CanBindTransparent()
	if err != nil || got != want {
		t.Errorf("CanBindTransparent() = %v, %v; CapEff %x says %v", got, err, eff, want)
	}
}
