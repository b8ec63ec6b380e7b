//go:build linux

// Package netlab builds small, disposable network labs for tests: Linux
// network namespaces joined by veth pairs (and optionally bridges), with
// addresses, routes and processes inside them.
//
// Everything is done with the iproute2 `ip` command; StartFRR runs FRR
// (zebra, bfdd, bgpd) as a router in a namespace, for tests of what
// announces routes to it. A Lab registers its own
// teardown with t.Cleanup: processes it started are stopped, any other
// process still living in one of its namespaces is killed, and the
// namespaces (with every interface inside them) are deleted, whether the test
// passed or failed (t.Fatal and panics included). Only a test binary killed
// outright (go test's -timeout) skips its cleanups; see SweepStale.
//
// Namespace names are unique per lab and carry the creating process's id
// ("umx-<pid>-<random>-<n>-<label>"), so parallel test binaries never clash and a
// later lab can remove namespaces left behind by a test binary that died
// before its cleanup ran (see SweepStale).
//
// Only use addresses from 198.18.0.0/15 (RFC 2544 benchmarking range) and
// private tunnel-internal ranges inside namespaces a lab created.
package netlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/prereq"
)

// Prefix starts the name of every namespace created by this package.
const Prefix = "umx-"

// netnsDir is where iproute2 keeps named network namespaces.
const netnsDir = "/run/netns"

// The ip command's path, looked up once by lookupIP.
var (
	ipOnce sync.Once
	ipPath string
	ipErr  error
)

// lookupIP finds the ip command (see LookPath).
func lookupIP() (string, error) {
	ipOnce.Do(func() { ipPath, ipErr = LookPath("ip") })
	return ipPath, ipErr
}

// RequireRoot skips the test unless it can build network namespaces: the
// process must run as root and the iproute2 `ip` command must be installed.
// Under CI=true it fails the test instead (prereq.Missing).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		prereq.Missing(t, "needs root: creates network namespaces")
	}
	RequireTools(t, ToolIP)
}

// Lab is a set of network namespaces and processes owned by one test.
// Create it with New; it is torn down automatically when the test ends.
// Its methods fail the test (t.Fatalf) on error, so they must be called from
// the test's goroutine, except Namespace.Command and CommandContext, which
// are safe anywhere.
type Lab struct {
	t  testing.TB
	id string // random part shared by all namespaces of this lab

	mu    sync.Mutex
	nss   []*Namespace
	procs []*Process
	seq   int
}

// New creates an empty lab and registers its teardown with t.Cleanup. It
// calls RequireRoot first, so tests on machines without root or `ip` are
// skipped. It also removes namespaces left by earlier test binaries that died
// without cleaning up (SweepStale).
func New(t testing.TB) *Lab {
	t.Helper()
	RequireRoot(t)
	SweepStale()
	l := &Lab{t: t, id: randomHex(3)}
	t.Cleanup(l.close)
	return l
}

// Namespace is one network namespace of a Lab.
type Namespace struct {
	lab   *Lab
	name  string
	label string
	ifseq int
}

// Name returns the namespace's full name, as used by `ip netns`.
func (n *Namespace) Name() string { return n.name }

// Label returns the short label the namespace was created with.
func (n *Namespace) Label() string { return n.label }

// String returns the namespace's name.
func (n *Namespace) String() string { return n.name }

// namespaceName builds the full name of a namespace from its parts.
func namespaceName(pid int, id, label string) string {
	return fmt.Sprintf("%s%d-%s-%s", Prefix, pid, id, label)
}

// ownerPID extracts the creating process's id from a namespace name made by
// namespaceName; ok is false for names this package did not make.
func ownerPID(name string) (pid int, ok bool) {
	rest, found := strings.CutPrefix(name, Prefix)
	if !found {
		return 0, false
	}
	digits, _, found := strings.Cut(rest, "-")
	if !found {
		return 0, false
	}
	pid, err := strconv.Atoi(digits)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

// validLabel reports whether label may be used in a namespace name.
func validLabel(label string) bool {
	if label == "" || len(label) > 32 {
		return false
	}
	for _, c := range label {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_':
		default:
			return false
		}
	}
	return true
}

// NewNamespace creates a network namespace with the loopback interface up.
// label (letters, digits, underscore; at most 32) makes the name readable in
// logs; it need not be unique.
func (l *Lab) NewNamespace(label string) *Namespace {
	l.t.Helper()
	if !validLabel(label) {
		l.t.Fatalf("netlab: invalid namespace label %q (use 1-32 letters, digits or _)", label)
	}
	l.mu.Lock()
	l.seq++
	name := namespaceName(os.Getpid(), l.id, fmt.Sprintf("%d-%s", l.seq, label))
	l.mu.Unlock()
	if _, err := runIP("netns", "add", name); err != nil {
		l.t.Fatalf("netlab: %v", err)
	}
	n := &Namespace{lab: l, name: name, label: label}
	l.mu.Lock()
	l.nss = append(l.nss, n)
	l.mu.Unlock()
	n.IP("link", "set", "lo", "up")
	return n
}

// IP runs `ip -n NS ARGS...` and returns its standard output; it fails the
// test on error.
func (n *Namespace) IP(args ...string) string {
	n.lab.t.Helper()
	out, err := runIP(append([]string{"-n", n.name}, args...)...)
	if err != nil {
		n.lab.t.Fatalf("netlab: %v", err)
	}
	return out
}

// nextIfName returns a fresh interface name inside n ("veth0", "veth1", ...).
func (n *Namespace) nextIfName() string {
	n.lab.mu.Lock()
	defer n.lab.mu.Unlock()
	name := fmt.Sprintf("veth%d", n.ifseq)
	n.ifseq++
	return name
}

// Veth creates a veth pair with one end in a and the other in b, both down
// and without addresses, and returns the interface names in a and in b.
// The devices are created directly inside the namespaces, so their names
// never clash with interfaces of the host or of other labs.
func (l *Lab) Veth(a, b *Namespace) (aIf, bIf string) {
	l.t.Helper()
	aIf, bIf = a.nextIfName(), b.nextIfName()
	if _, err := runIP("link", "add", aIf, "netns", a.name, "type", "veth", "peer", "name", bIf, "netns", b.name); err != nil {
		l.t.Fatalf("netlab: %v", err)
	}
	return aIf, bIf
}

// Connect joins a and b with a veth pair, assigns aAddr to a's end and bAddr
// to b's end (CIDR notation such as "198.18.0.1/24"; empty means no address)
// and brings both ends up. It returns the interface names in a and in b.
func (l *Lab) Connect(a *Namespace, aAddr string, b *Namespace, bAddr string) (aIf, bIf string) {
	l.t.Helper()
	aIf, bIf = l.Veth(a, b)
	if aAddr != "" {
		a.AddAddr(aIf, aAddr)
	}
	if bAddr != "" {
		b.AddAddr(bIf, bAddr)
	}
	a.Up(aIf)
	b.Up(bIf)
	return aIf, bIf
}

// AddAddr assigns addr (CIDR notation) to the interface dev.
func (n *Namespace) AddAddr(dev, addr string) {
	n.lab.t.Helper()
	n.IP("addr", "add", addr, "dev", dev)
}

// Up brings the interface dev up.
func (n *Namespace) Up(dev string) {
	n.lab.t.Helper()
	n.IP("link", "set", dev, "up")
}

// AddBridge creates a bridge device named name, brings it up, and returns
// its name. Attach interfaces to it with SetMaster.
//
// The bridge gets a fixed random MAC address: a bridge without one takes the
// lowest MAC of its ports and changes it whenever a port with a lower one is
// attached, which silently breaks peers that resolved the bridge's address
// earlier until their ARP entries expire (many seconds).
func (n *Namespace) AddBridge(name string) string {
	n.lab.t.Helper()
	n.IP("link", "add", name, "address", randomMAC(), "type", "bridge")
	n.Up(name)
	return name
}

// randomMAC returns a random unicast, locally administered MAC address.
func randomMAC() string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	b[0] = b[0]&^0x01 | 0x02
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5])
}

// SetMaster attaches the interface dev to the bridge and brings dev up.
func (n *Namespace) SetMaster(dev, bridge string) {
	n.lab.t.Helper()
	n.IP("link", "set", dev, "master", bridge)
	n.Up(dev)
}

// AddRoute adds a route to dst (CIDR or "default") via the gateway address.
func (n *Namespace) AddRoute(dst, via string) {
	n.lab.t.Helper()
	n.IP("route", "add", dst, "via", via)
}

// EnableForwarding turns on IPv4 forwarding inside the namespace (each
// namespace has its own setting, off by default).
func (n *Namespace) EnableForwarding() {
	n.lab.t.Helper()
	n.Sysctl("net/ipv4/ip_forward", "1")
}

// Sysctl sets a network sysctl of the namespace: key is its path under
// /proc/sys, such as "net/ipv4/ip_forward". It needs no sysctl command:
// /proc/sys/net shows the namespace of the thread that opens it.
func (n *Namespace) Sysctl(key, value string) {
	n.lab.t.Helper()
	path := filepath.Join("/proc/sys", filepath.Clean("/"+key))
	if err := n.Do(func() error { return os.WriteFile(path, []byte(value+"\n"), 0o644) }); err != nil {
		n.lab.t.Fatalf("netlab: sysctl %s=%s in %s: %v", key, value, n.name, err)
	}
}

// DisableIPv6 turns IPv6 off for every interface of the namespace, present
// and future (net.ipv6.conf.{all,default}.disable_ipv6=1), so that devices
// created later, such as tun devices, send no router solicitations or
// multicast listener reports into the test's traffic.
func (n *Namespace) DisableIPv6() {
	n.lab.t.Helper()
	n.Sysctl("net/ipv6/conf/all/disable_ipv6", "1")
	n.Sysctl("net/ipv6/conf/default/disable_ipv6", "1")
}

// Command returns a command that runs name with args inside the namespace
// (`ip netns exec NS name args...`); a name without a slash is looked up
// with LookPath, so that programs in the sbin directories are found even
// when PATH lacks them. The caller starts and waits for it as with any
// *exec.Cmd; use Lab.Start for long-running processes so that they are
// stopped at teardown.
func (n *Namespace) Command(name string, args ...string) *exec.Cmd {
	return n.CommandContext(context.Background(), name, args...)
}

// CommandContext is like Command but the process is killed when ctx is done.
func (n *Namespace) CommandContext(ctx context.Context, name string, args ...string) *exec.Cmd {
	ip, err := lookupIP()
	if err != nil {
		ip = "ip"
	}
	if !strings.Contains(name, "/") {
		// `ip netns exec` searches PATH, which often lacks the sbin
		// directories of programs such as nft or conntrack.
		if p, err := LookPath(name); err == nil {
			name = p
		}
	}
	cmd := exec.CommandContext(ctx, ip, append([]string{"netns", "exec", n.name, name}, args...)...)
	// `ip netns exec` execs the program in place, so the process started
	// here is the program itself; its own group lets teardown signal any
	// children it forks too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// Run runs name with args inside the namespace and returns its combined
// output; it fails the test if the command fails.
func (n *Namespace) Run(name string, args ...string) string {
	n.lab.t.Helper()
	out, err := n.Command(name, args...).CombinedOutput()
	if err != nil {
		n.lab.t.Fatalf("netlab: in %s: %s %s: %v\n%s", n.name, name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Process is a command started by Lab.Start. The lab waits for it in the
// background; use Wait, Done or Stop rather than cmd.Wait.
type Process struct {
	// Cmd is the started command. Do not call its Wait method.
	Cmd *exec.Cmd

	done chan struct{}
	err  error // Cmd.Wait's result, valid once done is closed
}

// Done returns a channel closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits for the process to exit and returns the result of Cmd.Wait.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// Stop sends SIGTERM to the process's group, waits up to grace for it to
// exit, then sends SIGKILL, and returns the result of Cmd.Wait.
//
// When the process runs in a group of its own (Namespace.Command sets that
// up), Stop also waits, within the same grace, for the rest of the group:
// a daemon that re-executes itself for an upgrade leaves its successors in
// its group after it exits, and they are stopped here too, SIGKILL
// included. Stopping an exited process whose group is empty only returns
// the result of Cmd.Wait.
func (p *Process) Stop(grace time.Duration) error {
	pid := p.Cmd.Process.Pid
	grouped := p.ownGroup()
	if p.Exited() && (!grouped || !groupAlive(pid)) {
		return p.err
	}
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-p.done
	}
	if grouped {
		killed := false
		for groupAlive(pid) {
			if time.Now().After(deadline) {
				if killed {
					break // unkillable (e.g. in uninterruptible sleep): give up
				}
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				killed = true
				deadline = time.Now().Add(grace)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return p.err
}

// ownGroup reports whether the process was started as the leader of a new
// process group, whose id is then its pid.
func (p *Process) ownGroup() bool {
	a := p.Cmd.SysProcAttr
	return a != nil && a.Setpgid && a.Pgid == 0
}

// groupAlive reports whether any process of group pgid is alive (zombies
// do not count: they wait only to be reaped, perhaps by a parent that never
// will). The kernel keeps a group's id from being reused while the group
// has members, so this sees only the group the lab started.
func groupAlive(pgid int) bool {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		if g, ok := statPgrp(string(stat)); ok && g == pgid && !zombieStat(string(stat)) {
			return true
		}
	}
	return false
}

// statPgrp returns the process group of a /proc/PID/stat line: the third
// field after the parenthesised command name (state, ppid, pgrp).
func statPgrp(stat string) (int, bool) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 3 {
		return 0, false
	}
	g, err := strconv.Atoi(f[2])
	return g, err == nil
}

// Start starts cmd (usually from Namespace.Command) and registers it to be
// stopped at teardown (see Process.Stop, with StopGrace). It fails the test
// if the command cannot be started.
func (l *Lab) Start(cmd *exec.Cmd) *Process {
	l.t.Helper()
	if cmd.WaitDelay == 0 {
		// Bound Wait even if a child keeps the output pipes open.
		cmd.WaitDelay = StopGrace
	}
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("netlab: start %s: %v", strings.Join(cmd.Args, " "), err)
	}
	p := &Process{Cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p
}

// StopGrace is how long teardown waits after SIGTERM before SIGKILL.
const StopGrace = 3 * time.Second

// close tears the lab down: processes, then namespaces. Errors are logged,
// not fatal, so that one failure does not leave the rest behind.
func (l *Lab) close() {
	l.mu.Lock()
	procs, nss := l.procs, l.nss
	l.procs, l.nss = nil, nil
	l.mu.Unlock()

	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Stop covers the process's whole group, including any
			// successors it started before exiting; children that left
			// the group die with their namespace below.
			_ = p.Stop(StopGrace)
		}()
	}
	wg.Wait()
	for i := len(nss) - 1; i >= 0; i-- {
		if err := removeNamespace(nss[i].name); err != nil {
			l.t.Errorf("netlab: teardown: %v", err)
		}
	}
}

// removeNamespace kills every process still inside the namespace and
// deletes it. A namespace that no longer exists is not an error.
func removeNamespace(name string) error {
	if _, err := os.Stat(filepath.Join(netnsDir, name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if out, err := runIP("netns", "pids", name); err == nil {
		for _, pid := range parsePIDs(out) {
			if pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	var err error
	for i := 0; i < 20; i++ {
		if _, err = runIP("netns", "del", name); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}

// parsePIDs parses the output of `ip netns pids`: one decimal id per line.
func parsePIDs(out string) []int {
	var pids []int
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// SweepStale deletes namespaces created by this package in test processes
// that no longer exist (a test binary killed by a timeout never runs its
// cleanups), killing whatever still runs inside them. Namespaces of live
// processes, including parallel test binaries, are left alone. It returns
// the names it removed.
func SweepStale() []string {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return nil
	}
	var removed []string
	for _, e := range entries {
		pid, ok := ownerPID(e.Name())
		if !ok || processAlive(pid) {
			continue
		}
		if removeNamespace(e.Name()) == nil {
			removed = append(removed, e.Name())
		}
	}
	return removed
}

// processAlive reports whether a process with this id exists and is not a
// zombie (a killed test binary stays a zombie until its parent reaps it).
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	return !zombieStat(string(stat))
}

// zombieStat reports whether a /proc/PID/stat line shows a zombie or dead
// process: the state is the first field after the command name, which is
// parenthesised and may itself contain spaces and parentheses.
func zombieStat(stat string) bool {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return false
	}
	f := strings.Fields(stat[i+1:])
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}

// Namespaces lists the names of existing namespaces created by this package
// (by any process). Tests use it to check that teardown left nothing behind.
func Namespaces() []string {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range entries {
		if _, ok := ownerPID(e.Name()); ok {
			names = append(names, e.Name())
		}
	}
	return names
}

// runIP runs the ip command with args and returns its standard output, or an
// error carrying the command line and its standard error.
func runIP(args ...string) (string, error) {
	ip, err := lookupIP()
	if err != nil {
		return "", fmt.Errorf("ip command not found: %w", err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(ip, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// randomHex returns 2n random hex digits.
func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
