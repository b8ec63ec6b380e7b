//go:build linux

package bgp

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/netlab"
)

// fleet is a lab: an FRR router and speaker namespaces on one LAN, a bridge
// in a switch namespace, so that a speaker can be cut off at the switch
// without the router seeing its link go down.
type fleet struct {
	t      *testing.T
	lab    *netlab.Lab
	sw     *netlab.Namespace
	r      *netlab.FRR
	spk    []*netlab.Namespace // speaker i is spk[i-1]
	swPort []string            // speaker i's port on the switch is swPort[i-1]
}

// newFleet builds the lab for o.speakers speakers and starts the router.
func newFleet(t *testing.T, o routerOpts) *fleet {
	t.Helper()
	lab := netlab.New(t)
	netlab.RequireFRR(t)
	f := &fleet{t: t, lab: lab}
	f.sw = lab.NewNamespace("sw")
	f.sw.DisableIPv6()
	f.sw.AddBridge("br0")
	rns := lab.NewNamespace("router")
	rns.DisableIPv6()
	swIf, rIf := lab.Veth(f.sw, rns)
	f.sw.SetMaster(swIf, "br0")
	rns.AddAddr(rIf, routerAddr.String()+"/24")
	rns.Up(rIf)
	rns.EnableForwarding()
	rns.Sysctl("net/ipv4/fib_multipath_hash_policy", "1")
	for i := 1; i <= o.speakers; i++ {
		ns := lab.NewNamespace(fmt.Sprintf("spk%d", i))
		ns.DisableIPv6()
		swIf, sIf := lab.Veth(f.sw, ns)
		f.sw.SetMaster(swIf, "br0")
		ns.AddAddr(sIf, speakerAddr(i).String()+"/24")
		ns.Up(sIf)
		f.spk = append(f.spk, ns)
		f.swPort = append(f.swPort, swIf)
	}
	if file := os.Getenv("UDPMUX_BGP_TCPDUMP"); file != "" {
		// Debugging aid: the router's UDP (BFD) packets, in hex.
		out, err := os.Create(file)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { out.Close() })
		cmd := rns.Command("tcpdump", "-l", "-nni", "any", "-x", "udp")
		cmd.Stdout, cmd.Stderr = out, out
		lab.Start(cmd)
	}
	f.r = lab.StartFRR(rns, routerConfig(o))
	return f
}

// speakerSpec is speaker i's configuration: AS fleetAS peering with the
// router, announcing the VIP with community 65000:i.
func speakerSpec(i int, peer Peer, gr GracefulRestart) helperSpec {
	peer.Address, peer.AS = routerAddr, routerAS
	return helperSpec{
		Config: Config{
			LocalAS:         fleetAS,
			RouterID:        speakerAddr(i),
			Peers:           []Peer{peer},
			GracefulRestart: gr,
		},
		Routes: []Route{{Prefix: vip, Communities: []uint32{routerAS<<16 | uint32(i)}}},
	}
}

// start runs speaker i's helper process with spec.
func (f *fleet) start(i int, spec helperSpec) *speakerProc {
	f.t.Helper()
	return startSpeaker(f.t, f.lab, f.spk[i-1], fmt.Sprintf("spk%d", i), spec)
}

// waitKernel waits until the router's kernel route to the VIP has exactly
// the next hops of the speakers listed (none: no route), and returns how
// long that took.
func (f *fleet) waitKernel(timeout time.Duration, speakers ...int) time.Duration {
	f.t.Helper()
	want := make([]netip.Addr, 0, len(speakers))
	for _, i := range speakers {
		want = append(want, speakerAddr(i))
	}
	slices.SortFunc(want, netip.Addr.Compare)
	start := time.Now()
	var got []netip.Addr
	var err error
	deadline := start.Add(timeout)
	for {
		got, err = f.r.Namespace().RouteNextHops(vip)
		if err == nil && slices.Equal(got, want) {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("router's kernel route to %s: next hops %v (%v), want %v after %v", vip, got, err, want, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitBFDUp waits until the router's BFD sessions with the speakers listed
// are up.
func (f *fleet) waitBFDUp(timeout time.Duration, speakers ...int) {
	f.t.Helper()
	waitFor(f.t, timeout, "the router's BFD sessions to be up", func() bool {
		peers, err := f.r.BFDPeers()
		if err != nil {
			return false
		}
		up := 0
		for _, i := range speakers {
			for _, p := range peers {
				if p.Peer == speakerAddr(i).String() && p.Status == "up" {
					up++
				}
			}
		}
		return up == len(speakers)
	})
}

// TestAnnounceWithdraw: a speaker peers with FRR over eBGP (TCP MD5, BFD),
// announces a VIP with a community and a MED, the router installs it with
// the speaker as next hop, and a withdrawal removes it.
func TestAnnounceWithdraw(t *testing.T) {
	f := newFleet(t, routerOpts{speakers: 1, bfd: map[int]bool{1: true}, password: "udpmux-lab"})
	spec := speakerSpec(1, Peer{Password: "udpmux-lab", HoldTime: 9 * time.Second, BFD: &BFD{}}, GracefulRestart{})
	med := uint32(50)
	spec.Routes[0].MED = &med
	spec.Routes[0].Communities = []uint32{routerAS<<16 | 100}
	sp := f.start(1, spec)

	ps := sp.waitEstablished(20 * time.Second)
	if len(ps) != 1 || ps[0].Address != routerAddr || ps[0].AS != routerAS {
		t.Fatalf("Peers() = %+v, want one peer %s AS %d", ps, routerAddr, routerAS)
	}
	took := f.waitKernel(10*time.Second, 1)
	t.Logf("kernel route via the speaker %v after the session came up", took)
	paths, err := f.r.BGPPaths(vip)
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 1 || paths[0].NextHop != speakerAddr(1) || paths[0].Communities != "65000:100" ||
		paths[0].MED == nil || *paths[0].MED != 50 || !paths[0].Best {
		t.Fatalf("router's BGP paths for %s: %+v, want one best path via %s with community 65000:100 and MED 50", vip, paths, speakerAddr(1))
	}
	rib, err := f.r.RIBNextHops(vip)
	if err != nil || !slices.Equal(rib, []netip.Addr{speakerAddr(1)}) {
		t.Fatalf("router's RIB next hops for %s: %v %v, want %s", vip, rib, err, speakerAddr(1))
	}
	f.waitBFDUp(10*time.Second, 1)
	waitFor(t, 10*time.Second, "Peers() to show one prefix sent and BFD up", func() bool {
		ps = sp.peers()
		return len(ps) == 1 && ps[0].PrefixesSent == 1 && ps[0].BFD == BFDUp && ps[0].Uptime > 0
	})
	t.Logf("Peers() = %+v", ps)
	var announced []Route
	sp.call(&announced, "announced")
	if len(announced) != 1 || announced[0].Prefix != vip {
		t.Fatalf("Announced() = %+v, want %s", announced, vip)
	}

	sp.call(nil, "withdraw "+vip.String()+" drain")
	took = f.waitKernel(10 * time.Second)
	t.Logf("kernel route gone %v after Withdraw", took)
	waitFor(t, 5*time.Second, "the router's BGP table to drop the VIP", func() bool {
		p, err := f.r.BGPPaths(vip)
		return err == nil && len(p) == 0
	})
	var counts map[string]uint64
	sp.call(&counts, "withdrawals")
	if len(counts) != 1 || counts["drain"] != 1 {
		t.Fatalf("Withdrawals() = %v, want drain: 1", counts)
	}
	sp.call(&announced, "announced")
	if len(announced) != 0 {
		t.Fatalf("Announced() after Withdraw = %+v, want none", announced)
	}
	if ps = sp.peers(); ps[0].PrefixesSent != 0 || ps[0].State != StateEstablished {
		t.Fatalf("Peers() after Withdraw = %+v, want Established with no prefix sent", ps)
	}
	sp.stop(false)
}

// TestECMP: three speakers announce the same VIP and the router installs one
// route with all three as next hops (maximum-paths, kernel multipath with
// fib_multipath_hash_policy=1); a speaker that stops leaves the set.
func TestECMP(t *testing.T) {
	const n = 3
	f := newFleet(t, routerOpts{speakers: n})
	var sps []*speakerProc
	for i := 1; i <= n; i++ {
		sps = append(sps, f.start(i, speakerSpec(i, Peer{}, GracefulRestart{})))
	}
	took := f.waitKernel(20*time.Second, 1, 2, 3)
	t.Logf("ECMP route over 3 speakers %v after they started", took)
	rib, err := f.r.RIBNextHops(vip)
	if err != nil || len(rib) != n {
		t.Fatalf("router's RIB next hops for %s: %v %v, want %d", vip, rib, err, n)
	}
	paths, err := f.r.BGPPaths(vip)
	if err != nil {
		t.Fatal(err)
	}
	multi := 0
	for _, p := range paths {
		if p.Multipath || p.Best {
			multi++
		}
	}
	if len(paths) != n || multi != n {
		t.Fatalf("router's BGP paths: %+v, want %d, all multipath", paths, n)
	}
	out := f.r.Namespace().Run("ip", "route", "show", "exact", vip.String())
	t.Logf("router: ip route show %s:\n%s", vip, out)

	sps[1].stop(false)
	took = f.waitKernel(10*time.Second, 1, 3)
	t.Logf("speaker 2 left the ECMP set %v after Stop(false)", took)
	for _, i := range []int{0, 2} {
		sps[i].stop(false)
	}
	f.waitKernel(10 * time.Second)
}

// TestFailureDetection measures how fast the router drops a speaker that
// dies (SIGKILL: its kernel closes the TCP session), one cut off at the
// switch with BFD (nothing reaches the router any more: BFD's detection
// time), and one cut off without BFD (a 3 s hold time).
func TestFailureDetection(t *testing.T) {
	f := newFleet(t, routerOpts{speakers: 3, bfd: map[int]bool{1: true, 2: true}})
	bfd := &BFD{Multiplier: 3, TxInterval: 300 * time.Millisecond, RxInterval: 300 * time.Millisecond}
	sps := []*speakerProc{
		f.start(1, speakerSpec(1, Peer{HoldTime: 9 * time.Second, BFD: bfd}, GracefulRestart{})),
		f.start(2, speakerSpec(2, Peer{HoldTime: 9 * time.Second, BFD: bfd}, GracefulRestart{})),
		f.start(3, speakerSpec(3, Peer{HoldTime: 3 * time.Second, KeepaliveInterval: time.Second}, GracefulRestart{})),
	}
	f.waitKernel(20*time.Second, 1, 2, 3)
	f.waitBFDUp(10*time.Second, 1, 2)
	for _, i := range []int{0, 1} {
		waitFor(t, 10*time.Second, "the speakers' BFD sessions to be up", func() bool {
			ps := sps[i].peers()
			return len(ps) == 1 && ps[0].BFD == BFDUp
		})
	}

	sps[0].kill()
	killed := f.waitKernel(3*time.Second, 2, 3)
	t.Logf("SIGKILL: speaker 1 left the router's ECMP set after %v", killed)

	f.sw.IP("link", "del", f.swPort[1])
	cutBFD := f.waitKernel(3*time.Second, 3)
	t.Logf("cut off, BFD 3 x 300ms: speaker 2 left the router's ECMP set after %v", cutBFD)

	f.sw.IP("link", "del", f.swPort[2])
	cutHold := f.waitKernel(4500 * time.Millisecond)
	t.Logf("cut off, no BFD, hold time 3s: speaker 3 left (the route is gone) after %v", cutHold)
}

// TestGracefulRestart: with graceful restart on both sides, a speaker that
// stops with Stop(true) and a successor started right after keep the
// router's route (and the speaker's place in the ECMP set) at every moment,
// polled every 50 ms; the successor's announcement refreshes the stale
// route; Stop(false) then withdraws it.
func TestGracefulRestart(t *testing.T) {
	f := newFleet(t, routerOpts{speakers: 2, gr: true, bfd: map[int]bool{1: true, 2: true}})
	gr := GracefulRestart{Enabled: true, RestartTime: 30 * time.Second}
	peer := Peer{HoldTime: 9 * time.Second, BFD: &BFD{}}
	old := f.start(1, speakerSpec(1, peer, gr))
	other := f.start(2, speakerSpec(2, peer, gr))
	f.waitKernel(20*time.Second, 1, 2)
	f.waitBFDUp(10*time.Second, 1, 2)

	// Poll the router every 50 ms: speaker 1 must stay a next hop in the
	// kernel and in BGP's table throughout the switch.
	type miss struct {
		at     time.Duration
		kernel []netip.Addr
		paths  []netlab.BGPPath
		err    error
	}
	var (
		mu        sync.Mutex
		misses    []miss
		polls     int
		staleSeen bool
	)
	stopPoll := make(chan struct{})
	pollDone := make(chan struct{})
	begin := time.Now()
	go func() {
		defer close(pollDone)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopPoll:
				return
			case <-tick.C:
			}
			kernel, kerr := f.r.Namespace().RouteNextHops(vip)
			paths, perr := f.r.BGPPaths(vip)
			inBGP := false
			stale := false
			for _, p := range paths {
				if p.NextHop == speakerAddr(1) {
					inBGP = true
					stale = stale || p.Stale
				}
			}
			mu.Lock()
			polls++
			staleSeen = staleSeen || stale
			if kerr != nil || perr != nil || !slices.Contains(kernel, speakerAddr(1)) || !inBGP {
				misses = append(misses, miss{time.Since(begin), kernel, paths, fmt.Errorf("%v %v", kerr, perr)})
			}
			mu.Unlock()
		}
	}()

	switchStart := time.Now()
	old.stop(true)
	stopped := time.Since(switchStart)
	succSpec := speakerSpec(1, peer, GracefulRestart{Enabled: true, RestartTime: 30 * time.Second, Restarting: true})
	succSpec.Routes[0].Communities = []uint32{routerAS<<16 | 11}
	succ := f.start(1, succSpec)
	// The successor announces community 65000:11 instead of 65000:1: the
	// router's path showing it, not stale, is the refresh.
	waitFor(t, 20*time.Second, "the successor's route to replace the stale one", func() bool {
		paths, err := f.r.BGPPaths(vip)
		if err != nil {
			return false
		}
		for _, p := range paths {
			if p.NextHop == speakerAddr(1) && p.Communities == "65000:11" && !p.Stale {
				return true
			}
		}
		return false
	})
	refreshed := time.Since(switchStart)
	close(stopPoll)
	<-pollDone
	mu.Lock()
	t.Logf("graceful switch: predecessor stopped in %v, route refreshed by the successor %v after Stop(true); %d polls, stale seen: %v",
		stopped, refreshed, polls, staleSeen)
	if len(misses) > 0 {
		for _, m := range misses {
			t.Errorf("at %v the router lacked speaker 1's route: kernel %v, BGP %+v (%v)", m.at, m.kernel, m.paths, m.err)
		}
	}
	if !staleSeen {
		t.Errorf("the router never marked speaker 1's route stale: was graceful restart negotiated?")
	}
	mu.Unlock()
	succ.waitEstablished(10 * time.Second)
	f.waitKernel(5*time.Second, 1, 2)

	succ.stop(false)
	took := f.waitKernel(5*time.Second, 2)
	t.Logf("Stop(false): speaker 1 left the ECMP set after %v", took)
	other.stop(false)
	f.waitKernel(5 * time.Second)
}

// TestGracefulRestartFailures measures what graceful restart costs when a
// speaker fails rather than restarts: one cut off at the switch (BFD
// detects it while the session is up) and one killed with SIGKILL (its
// kernel closes the session without a NOTIFICATION, as Stop(true) does, so
// the router keeps its route, stale, for the restart time).
func TestGracefulRestartFailures(t *testing.T) {
	f := newFleet(t, routerOpts{speakers: 2, gr: true, bfd: map[int]bool{1: true, 2: true}})
	gr := GracefulRestart{Enabled: true, RestartTime: 4 * time.Second}
	peer := Peer{HoldTime: 9 * time.Second, BFD: &BFD{}}
	sp1 := f.start(1, speakerSpec(1, peer, gr))
	f.start(2, speakerSpec(2, peer, gr))
	f.waitKernel(20*time.Second, 1, 2)
	f.waitBFDUp(10*time.Second, 1, 2)

	f.sw.IP("link", "del", f.swPort[1])
	cut := f.waitKernel(3*time.Second, 1)
	t.Logf("graceful restart on, cut off, BFD 3 x 300ms: speaker 2 left the ECMP set after %v", cut)

	sp1.kill()
	killed := f.waitKernel(gr.RestartTime + 3*time.Second)
	t.Logf("graceful restart on (restart time %v), SIGKILL: speaker 1's route gone after %v", gr.RestartTime, killed)
	if killed < gr.RestartTime-time.Second {
		t.Errorf("the router dropped a crashed speaker's route after %v: graceful restart should have kept it for about %v", killed, gr.RestartTime)
	}
}
