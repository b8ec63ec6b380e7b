//go:build linux

package netlab

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNamespaceNameRoundTrip(t *testing.T) {
	name := namespaceName(12345, "a1b2c3", "client7")
	if !strings.HasPrefix(name, Prefix) {
		t.Fatalf("name %q lacks prefix %q", name, Prefix)
	}
	pid, ok := ownerPID(name)
	if !ok || pid != 12345 {
		t.Fatalf("ownerPID(%q) = %d, %v; want 12345, true", name, pid, ok)
	}
}

func TestOwnerPIDRejectsForeignNames(t *testing.T) {
	for _, name := range []string{"", "umx", "umx-", "umx-abc-x", "umx--x", "umx-0-x", "umx-12", "foo-12-x", "cni-1234"} {
		if pid, ok := ownerPID(name); ok {
			t.Errorf("ownerPID(%q) = %d, true; want false", name, pid)
		}
	}
}

func TestValidLabel(t *testing.T) {
	for _, l := range []string{"a", "client_1", "UDPMUX", strings.Repeat("x", 32)} {
		if !validLabel(l) {
			t.Errorf("validLabel(%q) = false; want true", l)
		}
	}
	for _, l := range []string{"", "a-b", "a b", "a/b", "é", strings.Repeat("x", 33)} {
		if validLabel(l) {
			t.Errorf("validLabel(%q) = true; want false", l)
		}
	}
}

func TestParsePIDs(t *testing.T) {
	got := parsePIDs("123\n456\n\nbogus\n-1\n0\n789\n")
	if want := []int{123, 456, 789}; !slices.Equal(got, want) {
		t.Fatalf("parsePIDs = %v; want %v", got, want)
	}
	if got := parsePIDs(""); len(got) != 0 {
		t.Fatalf("parsePIDs(\"\") = %v; want none", got)
	}
}

func TestRandomHexUnique(t *testing.T) {
	a, b := randomHex(3), randomHex(3)
	if len(a) != 6 || a == b {
		t.Fatalf("randomHex: %q, %q", a, b)
	}
}

func TestProcessAlive(t *testing.T) {
	if !processAlive(os.Getpid()) {
		t.Fatal("processAlive(self) = false")
	}
	// PIDs above the kernel's pid_max limit (at most 2^22) never exist.
	if processAlive(1 << 30) {
		t.Fatal("processAlive(1<<30) = true")
	}
}

func TestZombieStat(t *testing.T) {
	for stat, want := range map[string]bool{
		"1234 (e2e.test) Z 1 1234 1234 0 -1":     true,
		"1234 (a) b) (c) X 1 1234":               true,
		"1234 (openvpn) S 1 1234 1234 0 -1 4194": false,
		"1234 (Z) R 1":                           false,
		"garbage":                                false,
	} {
		if got := zombieStat(stat); got != want {
			t.Errorf("zombieStat(%q) = %v; want %v", stat, got, want)
		}
	}
}

// TestLab builds two namespaces joined through a bridge in a third and
// routed to a fourth, checks connectivity with ping, runs a long process and
// checks that teardown removes everything.
func TestLab(t *testing.T) {
	RequireRoot(t)
	RequireTools(t, ToolPing)
	var names []string
	var proc *Process
	t.Run("build", func(t *testing.T) {
		lab := New(t)
		a := lab.NewNamespace("a")
		b := lab.NewNamespace("b")
		sw := lab.NewNamespace("sw")
		far := lab.NewNamespace("far")
		for _, n := range []*Namespace{a, b, sw, far} {
			names = append(names, n.Name())
			if !strings.HasPrefix(n.Name(), Prefix) {
				t.Fatalf("namespace name %q lacks prefix", n.Name())
			}
		}
		br := sw.AddBridge("br0")
		sw.AddAddr(br, "198.18.0.1/24")
		_, swA := lab.Connect(a, "198.18.0.10/24", sw, "")
		sw.SetMaster(swA, br)
		_, swB := lab.Connect(b, "198.18.0.11/24", sw, "")
		sw.SetMaster(swB, br)
		lab.Connect(sw, "198.19.0.1/24", far, "198.19.0.2/24")
		sw.EnableForwarding()
		a.AddRoute("198.19.0.0/24", "198.18.0.1")
		far.AddRoute("198.18.0.0/24", "198.19.0.1")

		a.Run("ping", "-c", "1", "-W", "2", "198.18.0.11") // across the bridge
		a.Run("ping", "-c", "1", "-W", "2", "198.19.0.2")  // routed
		if out := b.Command("ping", "-c", "1", "-W", "1", "198.19.0.2").Run(); out == nil {
			t.Fatal("b reached 198.19.0.2 without a route")
		}
		if !strings.Contains(far.IP("-4", "addr", "show"), "198.19.0.2/24") {
			t.Fatal("far lacks its address")
		}

		// A process that ignores nothing: teardown must stop it.
		proc = lab.Start(far.Command("sleep", "300"))
		if proc.Exited() {
			t.Fatal("sleep exited at once")
		}
		// A short process waited for through Process.
		p := lab.Start(a.Command("true"))
		if err := p.Wait(); err != nil {
			t.Fatalf("true: %v", err)
		}
	})
	if proc == nil {
		t.Fatal("build did not get far enough")
	}
	select {
	case <-proc.Done():
	case <-time.After(time.Second):
		t.Fatal("teardown left the long process running")
	}
	left := Namespaces()
	for _, n := range names {
		if slices.Contains(left, n) {
			t.Errorf("namespace %s still exists after teardown", n)
		}
	}
}

// TestStopKillsStubbornProcess checks that Stop falls back to SIGKILL.
func TestStopKillsStubbornProcess(t *testing.T) {
	lab := New(t)
	n := lab.NewNamespace("stub")
	p := lab.Start(n.Command("sh", "-c", "trap '' TERM; echo ready; sleep 300 & wait"))
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	_ = p.Stop(300 * time.Millisecond)
	if !p.Exited() {
		t.Fatal("process still running after Stop")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Stop took %v", d)
	}
}

// TestStopStopsOrphanedGroup checks that Stop reaches the rest of a
// process's group after the process itself has exited, as a daemon that
// re-executes itself for an upgrade leaves its successor behind.
func TestStopStopsOrphanedGroup(t *testing.T) {
	lab := New(t)
	n := lab.NewNamespace("orphan")
	p := lab.Start(n.Command("sh", "-c", "sleep 300 & echo $!"))
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("leader did not exit")
	}
	pgid := p.Cmd.Process.Pid
	if !groupAlive(pgid) {
		t.Fatal("groupAlive = false with the orphaned sleep still running")
	}
	start := time.Now()
	if err := p.Stop(2 * time.Second); err != nil {
		t.Fatalf("Stop = %v; want the leader's status 0", err)
	}
	if groupAlive(pgid) {
		t.Fatal("the orphaned sleep survived Stop")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Stop took %v; SIGTERM should have ended the sleep at once", d)
	}
}

func TestStatPgrp(t *testing.T) {
	for stat, want := range map[string]int{
		"1234 (udpmux) S 1 1200 1200 0 -1": 1200,
		"1234 (a) b) R 77 88 99":           88,
	} {
		if g, ok := statPgrp(stat); !ok || g != want {
			t.Errorf("statPgrp(%q) = %d, %v; want %d", stat, g, ok, want)
		}
	}
	if _, ok := statPgrp("1234 (x) S 1"); ok {
		t.Error("statPgrp accepted a short line")
	}
}

// TestSweepStale checks that a namespace named for a dead owner is removed
// and one named for a live owner is kept.
func TestSweepStale(t *testing.T) {
	RequireRoot(t)
	dead := namespaceName(1<<30, randomHex(3), "stale")
	live := namespaceName(os.Getpid(), randomHex(3), "live")
	for _, n := range []string{dead, live} {
		if _, err := runIP("netns", "add", n); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = removeNamespace(n) })
	}
	removed := SweepStale()
	if !slices.Contains(removed, dead) {
		t.Errorf("SweepStale did not remove %s (removed %v)", dead, removed)
	}
	if slices.Contains(removed, live) || !slices.Contains(Namespaces(), live) {
		t.Errorf("SweepStale removed the live namespace %s", live)
	}
}

// TestDo checks that sockets opened in Do live in the namespace: a listener
// opened there is reachable from a peer namespace, and the test's own thread
// does not see the namespace's address.
func TestDo(t *testing.T) {
	lab := New(t)
	a := lab.NewNamespace("a")
	b := lab.NewNamespace("b")
	lab.Connect(a, "198.18.0.1/24", b, "198.18.0.2/24")

	srv := listenIn(t, b, "198.18.0.2:4000")

	// Outside the namespaces the address does not exist.
	if c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(198, 18, 0, 2), Port: 4000}); err == nil {
		c.Close()
		t.Fatal("198.18.0.2 is bindable outside the namespace: Do leaked its namespace")
	}

	var cli *net.UDPConn
	if err := a.Do(func() error {
		var err error
		cli, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(198, 18, 0, 2), Port: 4000})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if got, from := readIn(t, srv); got != "hello" || from.Addr() != netip.MustParseAddr("198.18.0.1") {
		t.Fatalf("got %q from %v; want hello from 198.18.0.1", got, from)
	}

	if err := a.Do(func() error { return errors.New("boom") }); err == nil || err.Error() != "boom" {
		t.Fatalf("Do returned %v; want fn's error", err)
	}
}

// listenIn returns a UDP socket bound to addr in ns (see Do), closed when
// the test ends.
func listenIn(t *testing.T, ns *Namespace, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := ns.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readIn reads a datagram from c, waiting at most 2 s, and returns it and
// its source.
func readIn(t *testing.T, c *net.UDPConn) (string, netip.AddrPort) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("read at %v: %v", c.LocalAddr(), err)
	}
	return string(buf[:n]), from
}

func TestRandomMAC(t *testing.T) {
	for range 100 {
		m, err := net.ParseMAC(randomMAC())
		if err != nil {
			t.Fatal(err)
		}
		if m[0]&0x01 != 0 || m[0]&0x02 == 0 {
			t.Fatalf("%v is not a unicast, locally administered address", m)
		}
	}
}

// TestBridgeKeepsMAC checks that attaching ports does not change the
// bridge's MAC address (see AddBridge).
func TestBridgeKeepsMAC(t *testing.T) {
	lab := New(t)
	sw := lab.NewNamespace("sw")
	br := sw.AddBridge("br0")
	before := sw.IP("-o", "link", "show", br)
	for range 4 {
		n := lab.NewNamespace("port")
		_, swIf := lab.Connect(n, "", sw, "")
		sw.SetMaster(swIf, br)
	}
	after := sw.IP("-o", "link", "show", br)
	mac := func(s string) string {
		_, rest, _ := strings.Cut(s, "link/ether ")
		f := strings.Fields(rest)
		if len(f) == 0 {
			t.Fatalf("no MAC in %q", s)
		}
		return f[0]
	}
	if mac(before) != mac(after) {
		t.Fatalf("bridge MAC changed from %s to %s when ports were attached", mac(before), mac(after))
	}
}

// TestSysctl checks that Sysctl changes the namespace's setting and not the
// host's.
func TestSysctl(t *testing.T) {
	lab := New(t)
	n := lab.NewNamespace("sys")
	host, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	n.EnableForwarding()
	if got := strings.TrimSpace(n.Run("cat", "/proc/sys/net/ipv4/ip_forward")); got != "1" {
		t.Fatalf("ip_forward in the namespace = %q; want 1", got)
	}
	after, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if string(after) != string(host) {
		t.Fatalf("host ip_forward changed from %q to %q", host, after)
	}
	n.DisableIPv6()
	if got := strings.TrimSpace(n.Run("cat", "/proc/sys/net/ipv6/conf/default/disable_ipv6")); got != "1" {
		t.Fatalf("disable_ipv6 in the namespace = %q; want 1", got)
	}
}

func TestGratuitousARP(t *testing.T) {
	mac := net.HardwareAddr{2, 1, 2, 3, 4, 5}
	ip := netip.MustParseAddr("198.18.0.1")
	req := gratuitousARP(arpRequest, mac, ip)
	want := []byte{0, 1, 8, 0, 6, 4, 0, 1, 2, 1, 2, 3, 4, 5, 198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 198, 18, 0, 1}
	if !slices.Equal(req, want) {
		t.Errorf("request = % x\nwant      % x", req, want)
	}
	rep := gratuitousARP(arpReply, mac, ip)
	copy(want[6:8], []byte{0, 2})
	copy(want[18:24], broadcastMAC)
	if !slices.Equal(rep, want) {
		t.Errorf("reply = % x\nwant    % x", rep, want)
	}
	if htons(0x0806) != 0x0608 {
		t.Errorf("htons(0x0806) = %#x", htons(0x0806))
	}
}

// TestAnnounce moves an address from one namespace on a bridge to another,
// which announces it: a neighbour that had resolved the address to the
// first namespace's MAC address takes the second's at once.
func TestAnnounce(t *testing.T) {
	lab := New(t)
	sw := lab.NewNamespace("sw")
	br := sw.AddBridge("br0")
	port := func(label, addr string) (*Namespace, string) {
		n := lab.NewNamespace(label)
		link, swIf := lab.Connect(n, addr, sw, "")
		sw.SetMaster(swIf, br)
		return n, link
	}
	old, oldIf := port("old", "198.18.0.1/24")
	next, nextIf := port("next", "")
	peer, _ := port("peer", "198.18.0.2/24")
	peer.Run("ping", "-c", "1", "-W", "2", "198.18.0.1")
	lladdr := func() string {
		f := strings.Fields(peer.IP("neigh", "show", "198.18.0.1"))
		if i := slices.Index(f, "lladdr"); i >= 0 && i+1 < len(f) {
			return f[i+1]
		}
		return ""
	}
	ifMAC := func(n *Namespace, dev string) string {
		_, rest, _ := strings.Cut(n.IP("-o", "link", "show", dev), "link/ether ")
		return strings.Fields(rest)[0]
	}
	if got, want := lladdr(), ifMAC(old, oldIf); got != want {
		t.Fatalf("peer resolved 198.18.0.1 to %q; want the old holder's %s", got, want)
	}
	old.IP("addr", "del", "198.18.0.1/24", "dev", oldIf)
	next.AddAddr(nextIf, "198.18.0.1/24")
	next.Announce(nextIf, netip.MustParseAddr("198.18.0.1"))
	want := ifMAC(next, nextIf)
	deadline := time.Now().Add(2 * time.Second)
	for lladdr() != want {
		if time.Now().After(deadline) {
			t.Fatalf("peer resolves 198.18.0.1 to %q 2s after the announcement; want the new holder's %s", lladdr(), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	peer.Run("ping", "-c", "1", "-W", "2", "198.18.0.1")
}
