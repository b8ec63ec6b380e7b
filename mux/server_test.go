//go:build linux

package mux

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// serve starts a server for the test and stops it, waiting for every loop,
// when the test ends.
func serve(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	startServer(t, srv)
	return srv
}

func echoConfig(addr string, workers int) Config {
	return Config{
		Workers: workers,
		Listeners: []ListenerConfig{{
			Name: "echo", Address: netip.MustParseAddrPort(addr), Handler: session.Echo{},
		}},
	}
}

// roundTrip sends p from c and waits for the echo.
func roundTrip(t *testing.T, c *net.UDPConn, p []byte) {
	t.Helper()
	if _, err := c.Write(p); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, 70000)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read echo of %d bytes: %v", len(p), err)
	}
	if !bytes.Equal(buf[:n], p) {
		t.Fatalf("echo of %d bytes came back as %d different bytes", len(p), n)
	}
}

func dial(t *testing.T, network string, local, remote netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP(network, net.UDPAddrFromAddrPort(local), net.UDPAddrFromAddrPort(remote))
	if err != nil {
		t.Fatalf("dial %s: %v", remote, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestEchoAddressFamilies(t *testing.T) {
	tests := []struct {
		name, listen string
		client       netip.Addr // where the client sends
	}{
		{"ipv4", "127.0.0.1:0", netip.MustParseAddr("127.0.0.1")},
		{"ipv6", "[::1]:0", netip.MustParseAddr("::1")},
		{"ipv4 wildcard", "0.0.0.0:0", netip.MustParseAddr("127.0.0.2")},
		{"ipv6 wildcard", "[::]:0", netip.MustParseAddr("::1")},
		{"ipv6 wildcard, ipv4 client", "[::]:0", netip.MustParseAddr("127.0.0.3")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := serve(t, echoConfig(tc.listen, 2))
			dst := netip.AddrPortFrom(tc.client, srv.Addr(0).Port())
			network := "udp4"
			if tc.client.Is6() {
				network = "udp6"
			}
			// A connected client socket accepts only replies from dst, so
			// the echo proves the reply left from the address written to.
			c := dial(t, network, netip.AddrPort{}, dst)
			for _, size := range []int{0, 1, 1472, 9000} {
				roundTrip(t, c, bytes.Repeat([]byte{byte(size)}, size))
			}
			// The loop counts a send after sendmmsg returns, which can be
			// after the client already has the echo.
			waitFor(t, 5*time.Second, "counters rx 4 tx 4 opened 1", func() bool {
				st := srv.Stats().Listeners[0]
				return st.RxDatagrams == 4 && st.TxDatagrams == 4 && st.SessionsOpened == 1
			})
		})
	}
}

func TestLargestDatagramRoundTrips(t *testing.T) {
	srv := serve(t, echoConfig("127.0.0.1:0", 1))
	c := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	c.SetReadBuffer(1 << 20)
	c.SetWriteBuffer(1 << 20)
	p := make([]byte, 65507)
	for i := range p {
		p[i] = byte(i * 7)
	}
	roundTrip(t, c, p)
}

func TestOversizedDatagramCountedNotDelivered(t *testing.T) {
	cfg := echoConfig("127.0.0.1:0", 1)
	cfg.MaxDatagram = 1500
	srv := serve(t, cfg)
	c := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	if _, err := c.Write(make([]byte, 1501)); err != nil {
		t.Fatal(err)
	}
	// The next datagram's echo proves the oversized one was read and not
	// echoed: datagrams on one flow are handled in order.
	roundTrip(t, c, []byte("after"))
	waitFor(t, 5*time.Second, "truncated 1, sent 1", func() bool {
		st := srv.Stats().Listeners[0]
		return st.Truncated == 1 && st.TxDatagrams == 1
	})
}

func TestTenThousandSessionsEchoAndExpire(t *testing.T) {
	const n = 10_000
	cfg := echoConfig("127.0.0.1:0", 2)
	// Long enough that no session expires before all have been created
	// on a slow run (the race detector, other packages' tests in parallel).
	cfg.Listeners[0].IdleTimeout = 3 * time.Second
	cfg.MaxSessions = n
	srv := serve(t, cfg)
	clients := newRawClients(t, n, srv.Addr(0))
	got := clients.exchange(t, 1000, 20*time.Second, func(i int, b []byte) int { return copy(b, fmt.Sprintf("flow %d", i)) })
	for i, p := range got {
		if want := fmt.Sprintf("flow %d", i); string(p) != want {
			t.Fatalf("client %d got %q, want %q", i, p, want)
		}
	}
	if st := srv.Stats(); st.Listeners[0].SessionsOpened != n {
		t.Fatalf("opened %d sessions, want %d", st.Listeners[0].SessionsOpened, n)
	}
	waitFor(t, 30*time.Second, "all sessions to expire", func() bool {
		st := srv.Stats()
		return st.Sessions == 0 && st.Listeners[0].SessionsClosed["idle"] == n
	})
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTableFullRefusesNewSessionsOnly(t *testing.T) {
	cfg := echoConfig("127.0.0.1:0", 1)
	cfg.MaxSessions = 2
	srv := serve(t, cfg)
	a := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	b := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	roundTrip(t, a, []byte("a"))
	roundTrip(t, b, []byte("b"))
	c := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	c.Write([]byte("refused"))
	roundTrip(t, a, []byte("a again")) // established sessions keep working
	st := srv.Stats().Listeners[0]
	if st.RefusedFull != 1 {
		t.Errorf("RefusedFull = %d, want 1", st.RefusedFull)
	}
}

func TestNoopDissectorIsStateless(t *testing.T) {
	cfg := echoConfig("127.0.0.1:0", 1)
	cfg.Listeners[0].Dissector = session.Noop{}
	srv := serve(t, cfg)
	c := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	roundTrip(t, c, []byte("query"))
	if st := srv.Stats(); st.Sessions != 0 || st.Listeners[0].SessionsOpened != 0 {
		t.Errorf("noop created sessions: live %d opened %d", st.Sessions, st.Listeners[0].SessionsOpened)
	}
}

func TestInvalidConfig(t *testing.T) {
	ok := func() Config { return echoConfig("127.0.0.1:0", 1) }
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"no listeners", func(c *Config) { c.Listeners = nil }, "listeners: none configured"},
		{"negative workers", func(c *Config) { c.Workers = -1 }, "workers: -1 is negative (0 means one per CPU)"},
		{"workers beyond the machine", func(c *Config) { c.Workers = 1 << 40 }, fmt.Sprintf("workers: %d is more than %d, 4 per CPU this process may run on (%d)", 1<<40, 4*cpuCount(t), cpuCount(t))},
		{"sessions.max huge", func(c *Config) { c.MaxSessions = 1e12 }, "sessions.max: 1000000000000 is not within 1..1073741824"},
		{"buffer huge", func(c *Config) { c.RecvBuffer = 1 << 40 }, "socket.recv_buffer: 1099511627776 is not within 0..2147483647"},
		{"stateful handler, noop dissector", func(c *Config) {
			c.Listeners[0].Handler, c.Listeners[0].Dissector = &acceptHandler{}, session.Noop{}
		}, "listeners[0].dissector: noop hands every datagram over without a session, and the handler (*mux.acceptHandler) serves sessions only"},
		{"v4-mapped twin", func(c *Config) {
			c.Listeners = append(c.Listeners, c.Listeners[0])
			c.Listeners[0].Address = netip.MustParseAddrPort("127.0.0.1:7")
			c.Listeners[1].Address = netip.MustParseAddrPort("[::ffff:127.0.0.1]:7")
			c.Listeners[1].Name = "twin"
		}, "listeners[1].address: 127.0.0.1:7 overlaps listeners[0].address 127.0.0.1:7, which receives the same datagrams"},
		{"same name", func(c *Config) {
			c.Listeners = append(c.Listeners, c.Listeners[0])
		}, `listeners[1].name: "echo" is already the name of listeners[0]`},
		{"batch too large", func(c *Config) { c.Batch = 5000 }, "batch: 5000 is not within 1..1024"},
		{"no handler", func(c *Config) { c.Listeners[0].Handler = nil }, "listeners[0].handler: not set"},
		{"no address", func(c *Config) { c.Listeners[0].Address = netip.AddrPort{} }, "listeners[0].address: not set"},
		{"negative idle", func(c *Config) { c.Listeners[0].IdleTimeout = -time.Second }, "listeners[0].idle_timeout: -1s is negative"},
		{"max datagram", func(c *Config) { c.MaxDatagram = 70000 }, "max_datagram: 70000 is not within 1..65535"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok()
			cfg.Logger = quietLogger()
			tc.mutate(&cfg)
			srv, err := New(cfg)
			if err == nil {
				srv.Close()
				t.Fatal("New accepted an invalid config")
			}
			if err.Error() != tc.want {
				t.Errorf("error %q, want %q", err, tc.want)
			}
		})
	}
}

func cpuCount(t *testing.T) int {
	cpus, err := udpsys.AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	return len(cpus)
}

func TestOverlap(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		a, b           string
		a6only, b6only bool
		want           bool
	}{
		{a: "127.0.0.1:7", b: "127.0.0.1:7", want: true},
		{a: "127.0.0.1:7", b: "127.0.0.1:8", want: false},
		{a: "127.0.0.1:7", b: "127.0.0.2:7", want: false},
		{a: "0.0.0.0:7", b: "127.0.0.1:7", want: true},
		{a: "127.0.0.1:7", b: "0.0.0.0:7", want: true},
		{a: "0.0.0.0:7", b: "[::1]:7", want: false},
		{a: "[::]:7", b: "127.0.0.1:7", want: true},
		{a: "[::]:7", b: "[::1]:7", want: true},
		{a: "[::1]:7", b: "127.0.0.1:7", want: false},
		{a: "0.0.0.0:0", b: "0.0.0.0:0", want: false}, // port 0: each gets a free port
		{a: "[::]:7", a6only: true, b: "0.0.0.0:7", want: false},
		{a: "0.0.0.0:7", b: "[::]:7", b6only: true, want: false},
		{a: "[::]:7", a6only: true, b: "[::1]:7", want: true},
		{a: "[::]:7", a6only: true, b: "[::]:7", want: true},
	}
	for _, tt := range tests {
		if got := overlap(ap(tt.a), tt.a6only, ap(tt.b), tt.b6only); got != tt.want {
			t.Errorf("overlap(%s v6only=%v, %s v6only=%v) = %v; want %v", tt.a, tt.a6only, tt.b, tt.b6only, got, tt.want)
		}
	}
}

func TestCheckTableSize(t *testing.T) {
	const gib = 1 << 30
	tests := []struct {
		n     int
		total uint64
		want  string // "" for no error
	}{
		{1000, 24 * gib, ""},
		{1_000_000, 24 * gib, ""},
		{1_000_000, 0, ""}, // memory unknown
		{0, 24 * gib, "sessions.max: 0 is not within 1..1073741824"},
		{1 << 30, 24 * gib, "sessions.max: 1073741824 needs 16384 MiB for the session table alone, more than half of this machine's 24576 MiB"},
		{1 << 20, 24 << 20, "sessions.max: 1048576 needs 16 MiB for the session table alone, more than half of this machine's 24 MiB"},
	}
	for _, tt := range tests {
		err := checkTableSize(tt.n, tt.total)
		if got := fmt.Sprint(err); (tt.want == "" && err != nil) || (tt.want != "" && got != tt.want) {
			t.Errorf("checkTableSize(%d, %d) = %v; want %q", tt.n, tt.total, err, tt.want)
		}
	}
}

func TestPortInUseFailsBeforeServing(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cfg := echoConfig(c.LocalAddr().String(), 1)
	cfg.Logger = quietLogger()
	if srv, err := New(cfg); err == nil {
		srv.Close()
		t.Fatal("New bound a port another socket holds without SO_REUSEPORT")
	}
}
