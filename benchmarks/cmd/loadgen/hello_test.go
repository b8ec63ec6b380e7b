package main

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
)

// -hello is on by default, and -hello=false turns it off.
func TestParseFlagsHello(t *testing.T) {
	tests := []struct {
		args []string
		want bool
	}{
		{[]string{"-proto", "openvpn"}, true},
		{[]string{"-proto", "wireguard", "-hello=true"}, true},
		{[]string{"-proto", "openvpn", "-hello=false"}, false},
		{[]string{"-proto", "wireguard", "-size", "64", "-hello=false"}, false},
	}
	for _, tt := range tests {
		cfg, err := parseFlags(tt.args)
		if err != nil {
			t.Errorf("parseFlags(%q): %v", tt.args, err)
			continue
		}
		if cfg.hello != tt.want {
			t.Errorf("parseFlags(%q): hello %v, want %v", tt.args, cfg.hello, tt.want)
		}
	}
}

// Only a tunnel protocol has a hello to send, and -hello=false leaves it out.
func TestSendsHello(t *testing.T) {
	for _, proto := range []string{"", protoWireGuard, protoOpenVPN} {
		for _, hello := range []bool{true, false} {
			g := &generator{cfg: config{proto: proto, hello: hello}}
			if got, want := g.sendsHello(), proto != "" && hello; got != want {
				t.Errorf("proto %q, hello %v: sendsHello() = %v, want %v", proto, hello, got, want)
			}
		}
	}
}

// echoServer is a UDP echo server on loopback that notes the datagrams it
// got from each source.
type echoServer struct {
	conn *net.UDPConn
	mu   sync.Mutex
	got  map[netip.AddrPort][][]byte
	done chan struct{}
}

func newEchoServer(t *testing.T) *echoServer {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{conn: conn, got: map[netip.AddrPort][][]byte{}, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		buf := make([]byte, 65536)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.got[from] = append(s.got[from], slices.Clone(buf[:n]))
			s.mu.Unlock()
			conn.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() { conn.Close(); <-s.done })
	return s
}

// take returns what the server got since the last take, per source.
func (s *echoServer) take() map[netip.AddrPort][][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	got := s.got
	s.got = map[netip.AddrPort][][]byte{}
	return got
}

// A run with hellos sends each flow's hello before its data; a run with
// -hello=false then sends only data, from the same source address and port
// per flow, so the sessions the first run made serve it.
func TestHelloOnlyWhenAsked(t *testing.T) {
	const flows = 3
	src := netip.MustParseAddr("127.0.0.77")
	// A free port on src to start the flows' ports from (the next ones are
	// very likely free too).
	probe, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)))
	if err != nil {
		t.Skipf("no loopback address %v: %v", src, err)
	}
	portBase := int(probe.LocalAddr().(*net.UDPAddr).Port)
	probe.Close()
	if portBase+flows > 65536 {
		portBase -= flows
	}
	for _, tc := range []struct{ proto, size string }{{protoWireGuard, "64"}, {protoOpenVPN, "100"}} {
		t.Run(tc.proto, func(t *testing.T) {
			srv := newEchoServer(t)
			var sources []netip.AddrPort
			for _, hello := range []bool{true, false} {
				args := []string{"-proto", tc.proto, "-size", tc.size, "-dst", srv.conn.LocalAddr().String(),
					"-src", src.String(), "-port-base", strconv.Itoa(portBase), "-ports-per-addr", strconv.Itoa(flows), "-flows", strconv.Itoa(flows),
					"-rate", "600", "-burst", "1", "-duration", "100ms", "-drain", "100ms"}
				if !hello {
					args = append(args, "-hello=false")
				}
				cfg, err := parseFlags(args)
				if err != nil {
					t.Fatal(err)
				}
				r, err := run(cfg)
				if err != nil {
					t.Fatalf("hello %v: %v", hello, err)
				}
				g := &generator{cfg: cfg}
				wantHS := uint64(0)
				if hello {
					wantHS = flows
				}
				if r.Handshakes != wantHS {
					t.Errorf("hello %v: %d hellos echoed, want %d", hello, r.Handshakes, wantHS)
				}
				if r.Sent == 0 || r.Received != r.Sent || r.Malformed != 0 || r.Misrouted != 0 {
					t.Errorf("hello %v: sent %d, received %d, malformed %d, misrouted %d", hello, r.Sent, r.Received, r.Malformed, r.Misrouted)
				}
				got := srv.take()
				var from []netip.AddrPort
				var data uint64
				for ap, dgrams := range got {
					from = append(from, ap)
					for i, d := range dgrams {
						switch {
						case g.isHello(d) && (!hello || i > 0):
							t.Errorf("hello %v: %v sent a hello as its datagram %d", hello, ap, i)
						case !g.isHello(d) && hello && i == 0:
							t.Errorf("hello %v: %v started with % x, not its hello", hello, ap, d[:min(len(d), 16)])
						case !g.isHello(d):
							data++
						}
					}
				}
				if data != r.Sent {
					t.Errorf("hello %v: the server got %d data datagrams, the generator sent %d", hello, data, r.Sent)
				}
				slices.SortFunc(from, netip.AddrPort.Compare)
				if len(from) != flows {
					t.Errorf("hello %v: datagrams from %v, want %d flows", hello, from, flows)
				}
				if sources == nil {
					sources = from
				} else if !slices.Equal(from, sources) {
					t.Errorf("the flows' sources changed between runs: %v, then %v", sources, from)
				}
			}
		})
	}
}
