//go:build linux

package netlab

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

	"github.com/udpmux/udpmux/internal/prereq"
)

// FRRDir is where Debian's frr package installs the daemons a lab runs.
const FRRDir = "/usr/lib/frr"

// frrDaemons are the FRR daemons a router runs, in the order they start:
// zebra first, whose socket the others connect to.
var frrDaemons = []string{"zebra", "bfdd", "bgpd"}

// RequireFRR ends the test unless FRR's zebra, bgpd and bfdd and vtysh are
// installed (prereq.Missing: a skip, or a failure under CI).
func RequireFRR(t testing.TB) {
	t.Helper()
	var missing []string
	for _, d := range frrDaemons {
		if _, err := os.Stat(filepath.Join(FRRDir, d)); err != nil {
			missing = append(missing, filepath.Join(FRRDir, d))
		}
	}
	if _, err := LookPath("vtysh"); err != nil {
		missing = append(missing, "vtysh")
	}
	if len(missing) > 0 {
		prereq.Missingf(t, "needs FRR (apt-get install -y frr): missing %s", strings.Join(missing, ", "))
	}
}

// FRR is a router: FRR's zebra, bfdd and bgpd running in a namespace of a
// lab, with their configuration, sockets and logs in a directory of their
// own. Its methods are safe for concurrent use; they return errors rather
// than fail the test, so that a test may poll it from any goroutine.
type FRR struct {
	t   testing.TB
	ns  *Namespace
	dir string
}

// frrStartTimeout bounds each daemon's start (zebra's socket, bgpd's vty).
const frrStartTimeout = 10 * time.Second

// StartFRR starts zebra, bfdd and bgpd in ns, waits until bgpd answers and
// configures them with conf, an integrated configuration (frr.conf), as
// FRR's own start does: vtysh reads it and gives each daemon its commands.
// The daemons are the lab's processes, stopped at teardown. Their logs
// (each daemon's standard output: write "log stdout" in conf) and what the
// router shows are logged when the test fails, or always with
// UDPMUX_FRR_DUMP set.
func (l *Lab) StartFRR(ns *Namespace, conf string) *FRR {
	t := l.t
	t.Helper()
	// FRR drops privileges to its own user, which must reach the
	// directory (t.TempDir is root's only).
	dir, err := os.MkdirTemp("", "umx-frr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	r := &FRR{t: t, ns: ns, dir: dir}
	// Each daemon starts with nothing but FRR's defaults: a daemon that
	// reads the whole file itself takes another daemon's "exit" for its
	// own and loses the rest.
	boot, file := filepath.Join(dir, "boot.conf"), filepath.Join(dir, "frr.conf")
	for name, text := range map[string]string{boot: "frr defaults traditional\n", file: conf} {
		if err := os.WriteFile(name, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("UDPMUX_FRR_DUMP") != "" {
			r.DumpLogs()
		}
	})
	zserv := filepath.Join(dir, "zserv.api")
	for _, d := range frrDaemons {
		args := []string{"-f", boot, "-i", filepath.Join(dir, d+".pid"), "-z", zserv, "--vty_socket", dir}
		if d == "bfdd" {
			args = append(args, "--bfdctl", filepath.Join(dir, "bfdd.sock"))
		}
		cmd := ns.Command(filepath.Join(FRRDir, d), args...)
		logf, err := os.Create(filepath.Join(dir, d+".log"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { logf.Close() })
		cmd.Stdout, cmd.Stderr = logf, logf
		p := l.Start(cmd)
		ready := func() bool { return true }
		switch d {
		case "zebra":
			ready = func() bool { _, err := os.Stat(zserv); return err == nil }
		case "bgpd":
			ready = func() bool { _, err := r.Vtysh("show bgp summary json"); return err == nil }
		}
		deadline := time.Now().Add(frrStartTimeout)
		for !ready() {
			if p.Exited() || time.Now().After(deadline) {
				out, _ := os.ReadFile(filepath.Join(dir, d+".log"))
				t.Fatalf("netlab: FRR's %s did not start within %v (exited: %v):\n%s", d, frrStartTimeout, p.Exited(), out)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if out, err := r.vtyshArgs("-f", file); err != nil {
		t.Fatalf("netlab: FRR's configuration: %v\n%s", err, out)
	}
	return r
}

// Namespace returns the router's namespace.
func (r *FRR) Namespace() *Namespace { return r.ns }

// DumpLogs logs the end of each daemon's log and what the router shows, for
// a failed test.
func (r *FRR) DumpLogs() {
	for _, d := range frrDaemons {
		b, _ := os.ReadFile(filepath.Join(r.dir, d+".log"))
		if len(b) > 60000 {
			b = b[len(b)-60000:]
		}
		r.t.Logf("--- FRR %s log (end):\n%s", d, b)
	}
	for _, c := range []string{"show bgp summary", "show bgp ipv4 unicast", "show ip route", "show bfd peers brief"} {
		out, err := r.Vtysh(c)
		r.t.Logf("--- FRR %s: %v\n%s", c, err, out)
	}
}

// Vtysh runs one vtysh command against the router's daemons and returns
// what it printed.
func (r *FRR) Vtysh(command string) (string, error) { return r.vtyshArgs("-c", command) }

// vtyshArgs runs vtysh with args against the router's daemons.
func (r *FRR) vtyshArgs(args ...string) (string, error) {
	vtysh, err := LookPath("vtysh")
	if err != nil {
		return "", err
	}
	var out, errb bytes.Buffer
	cmd := exec.Command(vtysh, append([]string{"--vty_socket", r.dir}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("vtysh %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Configure runs commands in vtysh's configuration mode, as lines of
// frr.conf would be.
func (r *FRR) Configure(commands ...string) (string, error) {
	args := []string{"-c", "configure terminal"}
	for _, c := range commands {
		args = append(args, "-c", c)
	}
	return r.vtyshArgs(args...)
}

// VtyshJSON runs a vtysh command that prints JSON and decodes it into v.
func (r *FRR) VtyshJSON(command string, v any) error {
	out, err := r.Vtysh(command)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("vtysh -c %q: %v: %q", command, err, out)
	}
	return nil
}

// BGPPath is one path of a prefix in bgpd's table.
type BGPPath struct {
	NextHop     netip.Addr
	Communities string // as FRR prints them: "65000:1 65000:2"
	MED         *uint32
	Stale       bool // kept for a peer that restarts (graceful restart)
	Best        bool
	Multipath   bool
}

// BGPPaths returns the paths bgpd has for p (none when it has no route).
func (r *FRR) BGPPaths(p netip.Prefix) ([]BGPPath, error) {
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
	if err := r.VtyshJSON("show bgp ipv4 unicast "+p.String()+" json", &v); err != nil {
		return nil, err
	}
	var out []BGPPath
	for _, jp := range v.Paths {
		bp := BGPPath{MED: jp.Metric, Stale: jp.Stale, Multipath: jp.Multipath, Best: jp.Bestpath != nil && jp.Bestpath.Overall}
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

// RIBNextHops returns the active next hops of zebra's selected route to p,
// sorted (none when it has none).
func (r *FRR) RIBNextHops(p netip.Prefix) ([]netip.Addr, error) {
	var v map[string][]struct {
		Selected bool `json:"selected"`
		Nexthops []struct {
			IP     string `json:"ip"`
			Active bool   `json:"active"`
		} `json:"nexthops"`
	}
	if err := r.VtyshJSON("show ip route "+p.String()+" json", &v); err != nil {
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

// BFDPeer is one of bfdd's sessions.
type BFDPeer struct {
	Peer   string `json:"peer"`
	Status string `json:"status"` // "up", "down", "init"
}

// BFDPeers returns bfdd's sessions.
func (r *FRR) BFDPeers() ([]BFDPeer, error) {
	var peers []BFDPeer
	err := r.VtyshJSON("show bfd peers json", &peers)
	return peers, err
}

// RouteNextHops returns the gateways of the kernel's route to exactly p in
// the namespace, sorted (none when it has none), as `ip -j route` shows
// them: what the namespace forwards by, whoever installed it.
func (n *Namespace) RouteNextHops(p netip.Prefix) ([]netip.Addr, error) {
	out, err := runIP("-n", n.name, "-j", "route", "show", "exact", p.String())
	if err != nil {
		return nil, err
	}
	var routes []struct {
		Gateway  string `json:"gateway"`
		Nexthops []struct {
			Gateway string `json:"gateway"`
		} `json:"nexthops"`
	}
	if err := json.Unmarshal([]byte(out), &routes); err != nil {
		return nil, fmt.Errorf("ip route show %s in %s: %v: %q", p, n.name, err, out)
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
