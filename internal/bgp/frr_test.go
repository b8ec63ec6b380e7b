//go:build linux

package bgp

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Addresses of the lab: a router and speakers on one LAN (a bridge in a
// switch namespace), and the service address they announce.
var (
	routerAddr = netip.MustParseAddr("198.18.0.1")
	vip        = netip.MustParsePrefix("198.18.100.10/32")
)

const (
	routerAS = 65000
	fleetAS  = 65001
)

// speakerAddr is the address of the i-th speaker (from 1).
func speakerAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)}) }

// routerOpts configures the FRR router of a lab.
type routerOpts struct {
	speakers int          // neighbors 198.18.0.11, .12, ...
	bfd      map[int]bool // speakers whose neighbor runs BFD
	gr       bool         // bgp graceful-restart
	password string       // TCP MD5
}

// routerConfig is the router's configuration (frr.conf, which
// netlab.StartFRR runs) for opts. The speakers are in one peer group; the
// router is passive (the speakers dial it) and spreads over up to 8 equal
// paths.
func routerConfig(o routerOpts) string {
	var b strings.Builder
	// One file for the three daemons (netlab.StartFRR): bgpd's and
	// bfdd's debug lines, each read by its own daemon.
	fmt.Fprintf(&b, "frr defaults traditional\nhostname router\nlog stdout debugging\n")
	fmt.Fprintf(&b, "debug bgp bfd\ndebug bgp neighbor-events\ndebug bgp graceful-restart\ndebug bfd peer\ndebug bfd zebra\n!\n")
	fmt.Fprintf(&b, "router bgp %d\n bgp router-id %s\n no bgp ebgp-requires-policy\n bgp log-neighbor-changes\n", routerAS, routerAddr)
	if o.gr {
		b.WriteString(" bgp graceful-restart\n")
	}
	fmt.Fprintf(&b, " neighbor fleet peer-group\n neighbor fleet remote-as %d\n neighbor fleet passive\n", fleetAS)
	if o.password != "" {
		fmt.Fprintf(&b, " neighbor fleet password %s\n", o.password)
	}
	for i := 1; i <= o.speakers; i++ {
		fmt.Fprintf(&b, " neighbor %s peer-group fleet\n", speakerAddr(i))
		if o.bfd[i] {
			// Not "bfd check-control-plane-failure" with graceful restart:
			// FRR would then ignore BFD going down for every peer with
			// graceful restart (GoBGP's BFD has the C bit clear), not only
			// while it restarts, and keep a cut-off speaker's route.
			fmt.Fprintf(&b, " neighbor %s bfd\n", speakerAddr(i))
		}
	}
	b.WriteString(" address-family ipv4 unicast\n  maximum-paths 8\n exit-address-family\n!\n")
	return b.String()
}

// waitFor polls cond every 20 ms until it holds, failing the test with what
// after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
