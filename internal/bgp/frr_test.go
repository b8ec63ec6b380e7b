//go:build linux

package bgp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/netlab"
	"github.com/udpmux/udpmux/internal/prereq"
)

// The FRR daemons the lab tests run as the router, from Debian's frr package.
const frrDir = "/usr/lib/frr"

// requireFRR ends the test unless FRR's zebra, bgpd and bfdd and vtysh are
// installed (prereq.Missing: a skip, or a failure under CI).
func requireFRR(t *testing.T) {
	t.Helper()
	var missing []string
	for _, d := range []string{"zebra", "bgpd", "bfdd"} {
		if _, err := os.Stat(filepath.Join(frrDir, d)); err != nil {
			missing = append(missing, filepath.Join(frrDir, d))
		}
	}
	if _, err := netlab.LookPath("vtysh"); err != nil {
		missing = append(missing, "vtysh")
	}
	if len(missing) > 0 {
		prereq.Missingf(t, "needs FRR (apt-get install -y frr): missing %s", strings.Join(missing, ", "))
	}
}

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

// routerConfig is bgpd's configuration for opts. The speakers are in one
// peer group; the router is passive (the speakers dial it) and spreads over
// up to 8 equal paths.
func routerConfig(o routerOpts) string {
	var b strings.Builder
	fmt.Fprintf(&b, "frr defaults traditional\nhostname router\nlog stdout debugging\ndebug bgp bfd\ndebug bgp neighbor-events\ndebug bgp graceful-restart\n!\n")
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

// router is FRR (zebra, bfdd, bgpd) running in a namespace, with its
// configuration, sockets and logs in a directory of its own.
type router struct {
	t   *testing.T
	ns  *netlab.Namespace
	dir string
}

// startRouter starts zebra, bfdd and bgpd in ns with bgpd's configuration
// conf, and waits until bgpd answers.
func startRouter(t *testing.T, lab *netlab.Lab, ns *netlab.Namespace, conf string) *router {
	t.Helper()
	// FRR drops privileges to its own user, which must reach the directory
	// (t.TempDir is root's only).
	dir, err := os.MkdirTemp("", "umx-bgp-frr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	r := &router{t: t, ns: ns, dir: dir}
	files := map[string]string{
		"zebra.conf": "hostname router\nlog stdout informational\n",
		"bfdd.conf":  "hostname router\nlog stdout debugging\ndebug bfd peer\ndebug bfd zebra\n",
		"bgpd.conf":  conf,
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	zserv := filepath.Join(dir, "zserv.api")
	start := func(daemon string, extra ...string) {
		args := append([]string{
			"-f", filepath.Join(dir, daemon+".conf"),
			"-i", filepath.Join(dir, daemon+".pid"),
			"-z", zserv,
			"--vty_socket", dir,
		}, extra...)
		cmd := ns.Command(filepath.Join(frrDir, daemon), args...)
		logf, err := os.Create(filepath.Join(dir, daemon+".log"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { logf.Close() })
		cmd.Stdout, cmd.Stderr = logf, logf
		lab.Start(cmd)
	}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("UDPMUX_BGP_DUMP") != "" {
			r.dumpLogs()
		}
	})
	start("zebra")
	waitFor(t, 10*time.Second, "zebra's socket", func() bool {
		_, err := os.Stat(zserv)
		return err == nil
	})
	start("bfdd", "--bfdctl", filepath.Join(dir, "bfdd.sock"))
	start("bgpd")
	waitFor(t, 10*time.Second, "bgpd to answer", func() bool {
		_, err := r.vtysh("show bgp summary json")
		return err == nil
	})
	return r
}

// dumpLogs logs the daemons' logs' ends, for a failed test.
func (r *router) dumpLogs() {
	for _, d := range []string{"zebra", "bfdd", "bgpd"} {
		b, _ := os.ReadFile(filepath.Join(r.dir, d+".log"))
		if len(b) > 60000 {
			b = b[len(b)-60000:]
		}
		r.t.Logf("--- %s log (end):\n%s", d, b)
	}
	for _, c := range []string{"show bgp summary", "show bgp ipv4 unicast", "show ip route", "show bfd peers brief"} {
		out, err := r.vtysh(c)
		r.t.Logf("--- %s: %v\n%s", c, err, out)
	}
}

// vtysh runs one vtysh command against this router's daemons.
func (r *router) vtysh(command string) (string, error) {
	vtysh, err := netlab.LookPath("vtysh")
	if err != nil {
		return "", err
	}
	var out, errb bytes.Buffer
	cmd := exec.Command(vtysh, "--vty_socket", r.dir, "-c", command)
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("vtysh -c %q: %v: %s", command, err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// vtyshJSON runs a vtysh command that prints JSON and decodes it into v.
func (r *router) vtyshJSON(command string, v any) error {
	out, err := r.vtysh(command)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("vtysh -c %q: %v: %q", command, err, out)
	}
	return nil
}

// bgpPath is one path of a prefix in bgpd's table.
type bgpPath struct {
	NextHop     netip.Addr
	Communities string
	MED         *uint32
	Stale       bool
	Best        bool
	Multipath   bool
}

// bgpPaths returns the paths bgpd has for p (none when it has no route).
func (r *router) bgpPaths(p netip.Prefix) ([]bgpPath, error) {
	var v struct {
		Paths []struct {
			Nexthops []struct {
				IP string `json:"ip"`
			} `json:"nexthops"`
			Community *struct {
				String string `json:"string"`
			} `json:"community"`
			Metric    *uint32 `json:"metric"`
			Stale     bool    `json:"stale"`
			Multipath bool    `json:"multipath"`
			Bestpath  *struct {
				Overall bool `json:"overall"`
			} `json:"bestpath"`
		} `json:"paths"`
	}
	if err := r.vtyshJSON("show bgp ipv4 unicast "+p.String()+" json", &v); err != nil {
		return nil, err
	}
	var out []bgpPath
	for _, jp := range v.Paths {
		bp := bgpPath{MED: jp.Metric, Stale: jp.Stale, Multipath: jp.Multipath, Best: jp.Bestpath != nil && jp.Bestpath.Overall}
		if len(jp.Nexthops) > 0 {
			bp.NextHop, _ = netip.ParseAddr(jp.Nexthops[0].IP)
		}
		if jp.Community != nil {
			bp.Communities = jp.Community.String
		}
		out = append(out, bp)
	}
	return out, nil
}

// ribNextHops returns the next hops of zebra's selected route to p (none
// when it has none).
func (r *router) ribNextHops(p netip.Prefix) ([]netip.Addr, error) {
	var v map[string][]struct {
		Protocol string `json:"protocol"`
		Selected bool   `json:"selected"`
		Nexthops []struct {
			IP     string `json:"ip"`
			Active bool   `json:"active"`
		} `json:"nexthops"`
	}
	if err := r.vtyshJSON("show ip route "+p.String()+" json", &v); err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, rt := range v[p.String()] {
		if !rt.Selected {
			continue
		}
		for _, nh := range rt.Nexthops {
			if a, err := netip.ParseAddr(nh.IP); err == nil && nh.Active {
				out = append(out, a)
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// kernelNextHops returns the next hops of the kernel's route to p in the
// router's namespace (none when it has none), as `ip route` shows them.
func (r *router) kernelNextHops(p netip.Prefix) ([]netip.Addr, error) {
	return kernelNextHops(r.ns, p)
}

// kernelNextHops returns the gateways of the route to exactly p in ns.
func kernelNextHops(ns *netlab.Namespace, p netip.Prefix) ([]netip.Addr, error) {
	ip, err := netlab.LookPath("ip")
	if err != nil {
		return nil, err
	}
	out, err := exec.Command(ip, "-n", ns.Name(), "-j", "route", "show", "exact", p.String()).Output()
	if err != nil {
		return nil, fmt.Errorf("ip route show %s: %w", p, err)
	}
	var routes []struct {
		Gateway  string `json:"gateway"`
		Nexthops []struct {
			Gateway string `json:"gateway"`
		} `json:"nexthops"`
	}
	if err := json.Unmarshal(out, &routes); err != nil {
		return nil, fmt.Errorf("ip route show %s: %v: %q", p, err, out)
	}
	var hops []netip.Addr
	for _, rt := range routes {
		if a, err := netip.ParseAddr(rt.Gateway); err == nil {
			hops = append(hops, a)
		}
		for _, nh := range rt.Nexthops {
			if a, err := netip.ParseAddr(nh.Gateway); err == nil {
				hops = append(hops, a)
			}
		}
	}
	slices.SortFunc(hops, netip.Addr.Compare)
	return hops, nil
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
