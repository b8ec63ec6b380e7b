//go:build linux

package fastpath

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/netlab"
)

func TestFlowValid(t *testing.T) {
	ap := netip.MustParseAddrPort
	ok := Flow{Client: ap("198.18.0.1:4000"), Local: ap("198.18.0.2:9000"), Source: ap("198.18.1.1:5000"), Backend: ap("198.18.1.2:7000")}
	with := func(f func(*Flow)) Flow { g := ok; f(&g); return g }
	for _, tc := range []struct {
		name  string
		flow  Flow
		local bool // ErrLocalBackend
		bad   bool
	}{
		{"remote backend", ok, false, false},
		{"mapped addresses", with(func(f *Flow) { f.Client = ap("[::ffff:198.18.0.1]:4000") }), false, false},
		{"loopback backend", with(func(f *Flow) { f.Backend = ap("127.0.0.1:7000") }), true, false},
		{"backend on this host", with(func(f *Flow) { f.Backend = ap("198.18.1.1:7000") }), true, false},
		{"IPv6", with(func(f *Flow) { f.Client = ap("[2001:db8::1]:4000") }), false, true},
		{"port 0", with(func(f *Flow) { f.Source = ap("198.18.1.1:0") }), false, true},
		{"wildcard local", with(func(f *Flow) { f.Local = ap("0.0.0.0:9000") }), false, true},
		{"unknown kind", with(func(f *Flow) { f.Kind = numKinds }), false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.flow.valid()
			switch {
			case tc.local && !errors.Is(err, ErrLocalBackend):
				t.Fatalf("valid() = %v, want ErrLocalBackend", err)
			case tc.bad && (err == nil || errors.Is(err, ErrLocalBackend)):
				t.Fatalf("valid() = %v, want an error", err)
			case !tc.local && !tc.bad && err != nil:
				t.Fatalf("valid() = %v", err)
			}
		})
	}
}

func TestKindOf(t *testing.T) {
	const no = numKinds // not data: KindOf's kind is not looked at
	for _, tc := range []struct {
		family Kind
		p      []byte
		want   Kind
	}{
		{Any, nil, Any},
		{Any, []byte{1}, Any},
		{WireGuard, []byte{4, 0, 0, 0, 1}, WireGuard},
		{WireGuard, []byte{1, 0, 0, 0}, no}, // initiation
		{WireGuard, []byte{2, 0, 0, 0}, no}, // response
		{WireGuard, []byte{3, 0, 0, 0}, no}, // cookie reply
		{WireGuard, []byte{4, 0, 0, 1}, no}, // reserved bytes set
		{WireGuard, []byte{4, 0, 0}, no},
		{OpenVPN, []byte{9<<3 | 0}, OpenVPN}, // P_DATA_V2, key 0
		{OpenVPN, []byte{9<<3 | 3}, OpenVPNKey(3)},
		{OpenVPN, []byte{9<<3 | 7}, OpenVPNKey(7)},
		{OpenVPN, []byte{6 << 3}, no}, // P_DATA_V1
		{OpenVPN, []byte{4 << 3}, no}, // P_CONTROL_V1
		{OpenVPN, []byte{7 << 3}, no}, // P_CONTROL_HARD_RESET_CLIENT_V2
		{OpenVPN, nil, no},
		{QUIC, []byte{0x40}, QUIC},
		{QUIC, []byte{0x7f}, QUIC},
		{QUIC, []byte{0xc0}, no},   // long header
		{QUIC, []byte{0x00}, QUIC}, // fixed bit greased (RFC 9287)
		{QUIC, []byte{0x80}, no},   // long header, fixed bit greased
		{numKinds, []byte{4, 0, 0, 0}, no},
	} {
		k, ok := KindOf(tc.family, tc.p)
		if ok != (tc.want != no) || ok && k != tc.want {
			t.Errorf("KindOf(%s, % x) = %s, %v; want %s", tc.family, tc.p, k, ok, tc.want)
		}
		if b, isByte := tc.want.TypeByte(); ok && isByte && b != tc.p[0] {
			t.Errorf("%s.TypeByte() = %#x; want %#x, the first byte of its data", tc.want, b, tc.p[0])
		}
	}
	for k := range numKinds {
		if k.Family() != OpenVPN && k >= OpenVPN || k.Family() == OpenVPN && k < OpenVPN {
			t.Errorf("%s.Family() = %s", k, k.Family())
		}
		if _, ok := k.TypeByte(); ok != (k.Family() == OpenVPN) {
			t.Errorf("%s.TypeByte() ok = %v; want it for OpenVPN's keys only", k, ok)
		}
	}
}

func TestKeyRoundTrip(t *testing.T) {
	for _, tc := range []struct{ a, b string }{
		{"198.18.0.1:4000", "198.18.0.2:9000"},
		{"0.0.0.1:1", "255.255.255.255:65535"},
	} {
		a, b := netip.MustParseAddrPort(tc.a), netip.MustParseAddrPort(tc.b)
		k := tupleKey(a, b)
		if k[6] != 0 || k[7] != 0 || k[14] != 0 || k[15] != 0 {
			t.Errorf("%s→%s: the ports' padding is not zero: % x", a, b, k)
		}
		if ga, gb := k.addrs(); ga != a || gb != b {
			t.Errorf("addrs() = %s, %s, want %s, %s", ga, gb, a, b)
		}
	}
}

// lab is a client, udpmux's host and a backend, each in a namespace:
//
//	client 198.18.0.1 ── 198.18.0.2 host 198.18.1.1 ── 198.18.1.2 backend
//
// The host forwards; the client and the backend route the other's subnet
// through it, so that datagrams forged straight at the other side cross
// the host as a router.
type lab struct {
	client, host, backend *netlab.Namespace
	// In the host: the listener (the VIP) and a session's upstream
	// socket, connected to the backend's socket.
	listener, upstream *net.UDPConn
	back               *net.UDPConn // the backend, on 198.18.1.2:7000
	vip                netip.AddrPort
}

func newLab(t *testing.T) *lab {
	t.Helper()
	netlab.RequireRoot(t)
	nl := netlab.New(t)
	l := &lab{client: nl.NewNamespace("cli"), host: nl.NewNamespace("host"), backend: nl.NewNamespace("back")}
	nl.Connect(l.client, "198.18.0.1/24", l.host, "198.18.0.2/24")
	nl.Connect(l.host, "198.18.1.1/24", l.backend, "198.18.1.2/24")
	l.client.AddRoute("198.18.1.0/24", "198.18.0.2")
	l.backend.AddRoute("198.18.0.0/24", "198.18.1.1")
	l.host.EnableForwarding()
	l.vip = netip.MustParseAddrPort("198.18.0.2:9000")
	l.listener = l.udp(t, l.host, l.vip.String(), "")
	l.back = l.udp(t, l.backend, "198.18.1.2:7000", "")
	l.upstream = l.udp(t, l.host, "", "198.18.1.2:7000")
	return l
}

// udp opens a UDP socket in ns, bound to laddr or connected to raddr.
func (l *lab) udp(t *testing.T, ns *netlab.Namespace, laddr, raddr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := ns.Do(func() (err error) {
		if raddr != "" {
			c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(raddr)))
		} else {
			c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(laddr)))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// open opens the table in the host.
func (l *lab) open(t *testing.T, cfg Config) *Table {
	t.Helper()
	var tb *Table
	if err := l.host.Do(func() (err error) { tb, err = Open(cfg, nil); return err }); err != nil {
		t.Fatal(err)
	}
	return tb
}

// flow returns the flow of a session of client's on the lab's listener.
func (l *lab) flow(k Kind, client *net.UDPConn) Flow {
	return Flow{Kind: k, Client: client.LocalAddr().(*net.UDPAddr).AddrPort(), Local: l.vip,
		Source: l.upstream.LocalAddr().(*net.UDPAddr).AddrPort(), Backend: netip.MustParseAddrPort("198.18.1.2:7000")}
}

// recv reads one datagram from c within a second, or fails.
func recv(t *testing.T, c *net.UDPConn, what string) ([]byte, netip.AddrPort) {
	t.Helper()
	buf := make([]byte, 2048)
	c.SetReadDeadline(time.Now().Add(time.Second))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
}

// quiet checks that nothing waits on c: what the kernel forwarded must
// not have reached this socket too. It is checked after the datagram
// arrived where it was forwarded, so nothing is still on its way.
func quiet(t *testing.T, c *net.UDPConn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now())
	if n, from, err := c.ReadFromUDPAddrPort(make([]byte, 2048)); err == nil {
		t.Fatalf("%s got %d bytes from %s", what, n, from)
	}
}

// waitState waits, up to 5 s, for e to reach want.
func waitState(t *testing.T, e *Entry, want State) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for e.State() != want {
		if time.Now().After(deadline) {
			t.Fatalf("entry is %s after 5 s, want %s", e.State(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// offloadInstalled offloads f and waits until the kernel has it.
func offloadInstalled(t *testing.T, tb *Table, f Flow) *Entry {
	t.Helper()
	e, err := tb.Offload(f)
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, e, Installed)
	return e
}

// offloadMany offloads n flows like base, each with a client address:port
// and an upstream port of its own, without waiting for them.
func offloadMany(t *testing.T, tb *Table, base Flow, n int) []*Entry {
	t.Helper()
	entries := make([]*Entry, n)
	for i := range entries {
		f := base
		f.Client = netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 2, byte(i % 200)}), uint16(1024+i))
		f.Source = netip.AddrPortFrom(f.Source.Addr(), uint16(20000+i))
		var err error
		if entries[i], err = tb.Offload(f); err != nil {
			t.Fatal(err)
		}
	}
	return entries
}

// waitPoll waits, up to 5 s, for the table's next poll of the counters.
func waitPoll(t *testing.T, tb *Table) {
	t.Helper()
	g := tb.Generation()
	deadline := time.Now().Add(5 * time.Second)
	for tb.Generation() == g {
		if time.Now().After(deadline) {
			t.Fatal("no poll in 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestKernelForwardsData offloads a session of each kind and checks where
// its datagrams go: data through the kernel both ways, with the userspace
// path's addresses (the backend sees the upstream socket's address, the
// client the listener's), the sockets of udpmux's host seeing none of it;
// control messages to those sockets, as without the fast path.
func TestKernelForwardsData(t *testing.T) {
	l := newLab(t)
	tb := l.open(t, Config{Kinds: []Kind{Any, WireGuard, OpenVPN, QUIC}, Poll: 50 * time.Millisecond})
	defer tb.Close(false)
	for _, tc := range []struct {
		kind          Kind
		data, control []byte
	}{
		{Any, []byte("anything"), nil},
		{WireGuard, []byte{4, 0, 0, 0, 1, 2, 3, 4}, []byte{1, 0, 0, 0, 9, 9, 9, 9}},
		{OpenVPNKey(2), []byte{9<<3 | 2, 0, 0, 1, 0xaa}, []byte{4 << 3, 1, 2, 3}},
		// Data on another key than the session's goes to udpmux, which
		// learns the new key's packet-ids from it.
		{OpenVPNKey(5), []byte{9<<3 | 5, 0, 0, 1, 0xaa}, []byte{9<<3 | 2, 0, 0, 1, 0xbb}},
		{QUIC, []byte{0x41, 1, 2, 3}, []byte{0xc0, 0, 0, 0, 1}},
		{QUIC, []byte{0x01, 1, 2, 3}, []byte{0x80, 0, 0, 0, 1}}, // the fixed bit greased (RFC 9287)
	} {
		t.Run(tc.kind.String(), func(t *testing.T) {
			cli := l.udp(t, l.client, "", l.vip.String())
			f := l.flow(tc.kind, cli)
			e := offloadInstalled(t, tb, f)

			cli.Write(tc.data)
			t.Cleanup(func() {
				if t.Failed() {
					t.Log(l.host.Run("nft", "-a", "list", "ruleset"))
				}
			})
			p, from := recv(t, l.back, "backend")
			if string(p) != string(tc.data) || from != f.Source {
				t.Fatalf("backend got %x from %s, want %x from %s", p, from, tc.data, f.Source)
			}
			l.back.WriteToUDPAddrPort(tc.data, f.Source)
			if p, from = recv(t, cli, "client"); string(p) != string(tc.data) || from != l.vip {
				t.Fatalf("client got %x from %s, want %x from %s", p, from, tc.data, l.vip)
			}
			quiet(t, l.listener, "listener")
			quiet(t, l.upstream, "upstream socket")

			if tc.control != nil {
				cli.Write(tc.control)
				if p, from = recv(t, l.listener, "listener"); string(p) != string(tc.control) || from != f.Client {
					t.Fatalf("listener got %x from %s, want the control message from %s", p, from, f.Client)
				}
				l.back.WriteToUDPAddrPort(tc.control, f.Source)
				if p, _ = recv(t, l.upstream, "upstream socket"); string(p) != string(tc.control) {
					t.Fatalf("upstream socket got %x, want the control message", p)
				}
				quiet(t, l.back, "backend")
				quiet(t, cli, "client")
			}

			waitPoll(t, tb)
			want := Counts{1, uint64(len(tc.data)), 1, uint64(len(tc.data))} // payload bytes, as userspace counts
			if got := e.Counts(); got != want {
				t.Fatalf("counts %+v, want %+v", got, want)
			}
			tb.Remove(e)
			waitState(t, e, Removed)
			cli.Write(tc.data)
			if _, from = recv(t, l.listener, "listener after Remove"); from != f.Client {
				t.Fatalf("listener got a datagram from %s, want %s", from, f.Client)
			}
		})
	}
}

// TestForgedDatagramsAreNotRewritten forges what the kernel's rewrite
// produces, from the wire: a datagram from the client's address straight
// to the backend, and one from the backend's straight to the client. The
// host routes them as it would without the fast path; neither takes the
// session's addresses (udpmux's upstream address, or the listener's),
// since only a datagram that matched a session's full 4-tuple on its way
// in carries the mark the source rewrite needs.
func TestForgedDatagramsAreNotRewritten(t *testing.T) {
	l := newLab(t)
	tb := l.open(t, Config{Kinds: []Kind{Any}})
	defer tb.Close(false)
	cli := l.udp(t, l.client, "", l.vip.String())
	f := l.flow(Any, cli)
	offloadInstalled(t, tb, f)

	// The client's own address and port, straight to the backend: the
	// 4-tuple the prerouting rewrite makes of the session's datagrams. A
	// socket of the client's address takes the connected one's place.
	cli.Close()
	forge := l.udp(t, l.client, f.Client.String(), "")
	forge.WriteToUDPAddrPort([]byte("to backend"), f.Backend)
	if p, from := recv(t, l.back, "backend"); string(p) != "to backend" || from != f.Client {
		t.Fatalf("backend got %q from %s, want it from the forged %s, untouched", p, from, f.Client)
	}
	l.back.WriteToUDPAddrPort([]byte("to client"), f.Client)
	if p, from := recv(t, forge, "client"); string(p) != "to client" || from != f.Backend {
		t.Fatalf("client got %q from %s, want it from %s, untouched", p, from, f.Backend)
	}
	quiet(t, l.upstream, "upstream socket")
}

// TestMove moves a session's elements to its client's new address: the
// old address's datagrams reach the listener again, the new one's are
// forwarded, and the backend's go to the new address.
func TestMove(t *testing.T) {
	l := newLab(t)
	tb := l.open(t, Config{Kinds: []Kind{Any}})
	defer tb.Close(false)
	old := l.udp(t, l.client, "", l.vip.String())
	moved := l.udp(t, l.client, "", l.vip.String())
	f := l.flow(Any, old)
	e := offloadInstalled(t, tb, f)
	movesBefore := tb.Stats().Moves
	to := moved.LocalAddr().(*net.UDPAddr).AddrPort()
	tb.Move(e, to)
	deadline := time.Now().Add(5 * time.Second)
	for tb.Stats().Moves == movesBefore {
		if time.Now().After(deadline) {
			t.Fatal("not moved in 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	moved.Write([]byte("new"))
	if p, from := recv(t, l.back, "backend"); string(p) != "new" || from != f.Source {
		t.Fatalf("backend got %q from %s", p, from)
	}
	l.back.WriteToUDPAddrPort([]byte("back"), f.Source)
	if p, from := recv(t, moved, "moved client"); string(p) != "back" || from != l.vip {
		t.Fatalf("moved client got %q from %s", p, from)
	}
	old.Write([]byte("old"))
	if p, from := recv(t, l.listener, "listener"); string(p) != "old" || from != f.Client {
		t.Fatalf("listener got %q from %s, want the old address's datagram", p, from)
	}
}

// TestSetKind moves an OpenVPN session's elements to another key: data on
// the old key reaches udpmux again, the new key's is forwarded both ways.
func TestSetKind(t *testing.T) {
	l := newLab(t)
	tb := l.open(t, Config{Kinds: []Kind{OpenVPN}})
	defer tb.Close(false)
	cli := l.udp(t, l.client, "", l.vip.String())
	f := l.flow(OpenVPNKey(0), cli)
	e := offloadInstalled(t, tb, f)
	movesBefore := tb.Stats().Moves
	tb.SetKind(e, OpenVPNKey(1))
	tb.SetKind(e, WireGuard) // another family: ignored
	deadline := time.Now().Add(5 * time.Second)
	for tb.Stats().Moves == movesBefore {
		if time.Now().After(deadline) {
			t.Fatal("no new kind in 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	key0, key1 := []byte{9 << 3, 0, 0, 1, 0xaa}, []byte{9<<3 | 1, 0, 0, 1, 0xbb}
	cli.Write(key1)
	if p, from := recv(t, l.back, "backend"); string(p) != string(key1) || from != f.Source {
		t.Fatalf("backend got %x from %s, want key 1's data from %s", p, from, f.Source)
	}
	l.back.WriteToUDPAddrPort(key1, f.Source)
	if p, from := recv(t, cli, "client"); string(p) != string(key1) || from != l.vip {
		t.Fatalf("client got %x from %s, want key 1's data from %s", p, from, l.vip)
	}
	cli.Write(key0)
	if p, _ := recv(t, l.listener, "listener"); string(p) != string(key0) {
		t.Fatalf("listener got %x, want key 0's data", p)
	}
	l.back.WriteToUDPAddrPort(key0, f.Source)
	if p, _ := recv(t, l.upstream, "upstream socket"); string(p) != string(key0) {
		t.Fatalf("upstream socket got %x, want key 0's data", p)
	}
}

// TestAdoptAndRemove hands the table over as an upgrade or a crash does:
// the kernel forwards with no process, a new Table adopts the session
// (Claim), and a Table that stops for good takes the table away.
func TestAdoptAndRemove(t *testing.T) {
	l := newLab(t)
	tb := l.open(t, Config{Kinds: []Kind{WireGuard}})
	cli := l.udp(t, l.client, "", l.vip.String())
	f := l.flow(WireGuard, cli)
	offloadInstalled(t, tb, f)
	if err := tb.Close(true); err != nil {
		t.Fatal(err)
	}
	data := []byte{4, 0, 0, 0, 7}
	cli.Write(data)
	if _, from := recv(t, l.back, "backend, no process"); from != f.Source {
		t.Fatalf("backend got it from %s, want %s", from, f.Source)
	}

	next := l.open(t, Config{Kinds: []Kind{WireGuard}, Poll: 50 * time.Millisecond})
	waitPoll(t, next)
	if st := next.Stats(); st.Adopted != 1 || st.Offloaded != 1 {
		t.Fatalf("adopted %d, offloaded %d; want 1, 1", st.Adopted, st.Offloaded)
	}
	other := f
	other.Source = netip.AddrPortFrom(f.Source.Addr(), f.Source.Port()+1)
	if next.Claim(other) != nil {
		t.Fatal("claimed a session by another upstream address")
	}
	// The predecessor's client moved after the successor read the kernel's
	// elements: the session is found by its upstream socket, and its
	// elements move to the client's new address.
	moved := l.udp(t, l.client, "", l.vip.String())
	f.Client = moved.LocalAddr().(*net.UDPAddr).AddrPort()
	movesBefore := next.Stats().Moves
	got := next.Claim(f)
	if got == nil || got.State() != Installed {
		t.Fatal("the successor did not find the session by its upstream socket")
	}
	for deadline := time.Now().Add(5 * time.Second); next.Stats().Moves == movesBefore; {
		if time.Now().After(deadline) {
			t.Fatal("the claimed session's elements did not move to the client's new address in 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cli = moved
	waitPoll(t, next)
	if c := got.Counts(); c.RxPackets != 1 {
		t.Fatalf("adopted counts %+v, want the datagram forwarded without a process", c)
	}
	cli.Write(data)
	recv(t, l.back, "backend, adopted")

	if err := next.Close(false); err != nil {
		t.Fatal(err)
	}
	cli.Write(data)
	if _, from := recv(t, l.listener, "listener, table removed"); from != f.Client {
		t.Fatalf("listener got it from %s", from)
	}
	if err := l.host.Do(func() error {
		tb, err := Open(Config{}, nil)
		if err != nil {
			return err
		}
		defer tb.Close(false)
		if st := tb.Stats(); st.Offloaded != 0 {
			t.Errorf("a new table holds %d sessions after the last one was removed", st.Offloaded)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestLimits: sessions.max bounds the entries, and a session whose backend
// is on this host is refused.
func TestLimits(t *testing.T) {
	l := newLab(t)
	tb := l.open(t, Config{Max: 1, Kinds: []Kind{Any}})
	defer tb.Close(false)
	a := l.udp(t, l.client, "", l.vip.String())
	f := l.flow(Any, a)
	local := f
	local.Backend = netip.MustParseAddrPort("127.0.0.1:7000")
	if _, err := tb.Offload(local); !errors.Is(err, ErrLocalBackend) {
		t.Fatalf("local backend: %v", err)
	}
	e, err := tb.Offload(f)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Offload(f); !errors.Is(err, ErrFull) {
		t.Fatalf("second offload with Max 1: %v, want ErrFull", err)
	}
	waitState(t, e, Installed)
	st := tb.Stats()
	if st.RefusedFull != 1 || st.RefusedLocal != 1 || st.Offloaded != 0 && st.Installs != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestManyChangesAtOnce installs and then removes thousands of sessions
// with no rate to spread them: each queue goes to the kernel in
// transactions netlink takes (one of thousands of changes fails with
// "message too long" or ENOBUFS), so that none fails.
func TestManyChangesAtOnce(t *testing.T) {
	l := newLab(t)
	const n = 3000
	tb := l.open(t, Config{Rate: 1 << 30, Max: n, Kinds: []Kind{Any}})
	defer tb.Close(false)
	base := l.flow(Any, l.udp(t, l.client, "", l.vip.String()))
	entries := offloadMany(t, tb, base, n)
	waitState(t, entries[n-1], Installed)
	for _, e := range entries {
		waitState(t, e, Installed)
		tb.Remove(e)
	}
	for _, e := range entries {
		waitState(t, e, Removed)
	}
	if st := tb.Stats(); st.Errors != 0 || st.Installs != n || st.Removals != n {
		t.Fatalf("stats %+v, want %d installs and removals and no failed transaction", st, n)
	}
}

func TestPollWait(t *testing.T) {
	for _, tc := range []struct {
		poll, maxPoll, took, want time.Duration
	}{
		{time.Second, 0, 10 * time.Millisecond, time.Second},
		{time.Second, 0, 100 * time.Millisecond, 2 * time.Second},
		{time.Second, 15 * time.Second, time.Second, 15 * time.Second},
		{time.Second, 15 * time.Second, 0, time.Second},
	} {
		tb := &Table{cfg: Config{Poll: tc.poll, MaxPoll: tc.maxPoll}}
		if got := tb.pollWait(tc.took); got != tc.want {
			t.Errorf("Poll %v, MaxPoll %v, a reading of %v: wait %v, want %v", tc.poll, tc.maxPoll, tc.took, got, tc.want)
		}
	}
}

// TestDeferredInstallsWait offloads more sessions at once than the rate
// allows: the rest wait for the table's next tick, each counted once as
// deferred, rather than spinning the table's goroutine through the queue.
func TestDeferredInstallsWait(t *testing.T) {
	l := newLab(t)
	const n, rate = 100, 200 // bursts of 20
	tb := l.open(t, Config{Rate: rate, Max: n, Kinds: []Kind{Any}})
	defer tb.Close(false)
	base := l.flow(Any, l.udp(t, l.client, "", l.vip.String()))
	entries := offloadMany(t, tb, base, n)
	waitState(t, entries[n-1], Installed)
	if st := tb.Stats(); st.Installs != n || st.Deferred == 0 || st.Deferred > n {
		t.Fatalf("stats %+v: want %d installs, some deferred, each at most once", st, n)
	}
}

// TestTableDeletedUnderIt deletes the table as a firewall reload with
// "flush ruleset" does: the Table makes it again and installs its session
// again, and the kernel forwards its data again.
func TestTableDeletedUnderIt(t *testing.T) {
	l := newLab(t)
	tb := l.open(t, Config{Kinds: []Kind{Any}, Poll: 50 * time.Millisecond})
	defer tb.Close(false)
	cli := l.udp(t, l.client, "", l.vip.String())
	f := l.flow(Any, cli)
	offloadInstalled(t, tb, f)
	l.host.Run("nft", "flush", "ruleset")
	cli.Write([]byte("while the table is gone"))
	if _, from := recv(t, l.listener, "listener, no table"); from != f.Client {
		t.Fatalf("listener got a datagram from %s, want %s", from, f.Client)
	}
	deadline := time.Now().Add(5 * time.Second)
	for tb.Stats().Remade == 0 || tb.Stats().Offloaded != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v 5 s after the table was deleted; want it made again with the session", tb.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cli.Write([]byte("again"))
	if p, from := recv(t, l.back, "backend, table made again"); string(p) != "again" || from != f.Source {
		t.Fatalf("backend got %q from %s, want \"again\" from %s", p, from, f.Source)
	}
}
