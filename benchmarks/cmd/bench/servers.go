package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Lab addresses (see lab.sh).
const (
	nsClient   = "bc"
	nsServer   = "bs"
	nsBackend  = "bb"
	cpuClient  = "0"
	cpuServer  = "1"
	serverCPU  = 1 // cpuServer as an index
	serverPort = 9000
	serverAddr = "198.18.0.2:9000"
	clientSrcs = "198.18.0.1,198.18.0.11,198.18.0.12,198.18.0.13,198.18.0.14"
)

// sockBuf is the receive and send buffer size, in bytes, that every server
// under test asks for (udpmux's default), so that none wins by buffering more.
const sockBuf = 4 << 20

// backendAddrs are the bare echo servers behind the proxies.
var backendAddrs = []string{"198.19.0.2:7000", "198.19.0.2:7001"}

// server is a peer under test while it runs: a process in bs, or, for the
// kernel's own paths (NAT, routing), configuration of bs that undo removes.
type server struct {
	proc *process // nil for the kernel paths
	undo func()   // set for the kernel paths, and the fast path's forwarding
	dst  string   // where the generator sends: the server, or the backends
	// settled, if set, reports whether the server has made flows sessions
	// ready for measuring (udpmux's fast path: every session in the
	// kernel), after a warm-up run.
	settled func(flows int) (bool, error)
	// status, if set, reads the daemon's fast-path counters (kernel.go).
	status func() (daemonStatus, error)
}

// stop ends the server or removes its configuration.
func (s *server) stop() {
	if s.proc != nil {
		s.proc.stop()
	}
	if s.undo != nil {
		s.undo()
	}
}

// alive reports why the server is not serving any more, or nil.
func (s *server) alive() error {
	if s.proc != nil && s.proc.exited() {
		return fmt.Errorf("server died: %s", s.proc.tail())
	}
	return nil
}

// peerArgs are the peer program's arguments for each kind it serves, less
// -mode and -addr.
var peerArgs = map[string][]string{
	"bare":      {"-kind", "bare"},
	"bare-gso":  {"-kind", "bare", "-gso"},
	"bare-gro":  {"-kind", "bare", "-gso", "-gro"},
	"gonet":     {"-kind", "gonet"},
	"gnet":      {"-kind", "gnet"},
	"pion":      {"-kind", "pion"},
	"muxlisten": {"-kind", "muxlisten"},
	"connected": {"-kind", "connected"},
}

// startServer starts peer for scenario sc and waits until it serves.
func (h *harness) startServer(sc scenario, peer string) (*server, error) {
	switch peer {
	case "nat":
		return h.startNAT()
	case "route":
		return h.startRouting()
	}
	var args []string
	switch {
	case peerArgs[peer] != nil:
		args = append([]string{h.binary("peer")}, peerArgs[peer]...)
		args = append(args, "-mode", sc.kind, "-addr", serverAddr,
			"-rcvbuf", strconv.Itoa(sockBuf), "-sndbuf", strconv.Itoa(sockBuf))
		if peer == "connected" {
			args = append(args, "-max-sessions", strconv.Itoa(min(cmp.Or(sc.capacity, connectedMax), connectedLimit())))
		}
	case peer == "nginx":
		conf, err := h.nginxConf()
		if err != nil {
			return nil, err
		}
		args = []string{"nginx", "-p", filepath.Dir(conf), "-c", conf}
	case udpmuxPeers[peer]:
		bin := h.binary("udpmux")
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("udpmux %s: not available (the daemon was not built)", sc.kind)
		}
		dissector, fast := udpmuxMode(peer)
		conf, err := h.udpmuxConf(sc.kind, dissector, fast, sc.capacity)
		if err != nil {
			return nil, err
		}
		if fast {
			return h.startFastPath(sc, peer, append(append([]string{"env"}, h.opts.udpmuxEnv...), bin, "-c", conf))
		}
		args = append(append([]string{"env"}, h.opts.udpmuxEnv...), bin, "-c", conf)
	default:
		return nil, fmt.Errorf("unknown peer %q", peer)
	}
	p, err := spawn(h.opts.work, sc.series+"-"+sc.kind+"-"+peer, nsServer, cpuServer, args...)
	if err != nil {
		return nil, err
	}
	if err := waitUDP(p, nsServer, serverPort, 5*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("%s %s: not available (%v)", peer, sc.kind, err)
	}
	return &server{proc: p, dst: serverAddr}, nil
}

// connectedMax bounds the connected peer's sockets outside the flood
// series: the growth series' 100 000 sessions and room to spare, within
// the kernel's fs.nr_open.
const connectedMax = 200000

// connectedLimit is how many sessions the connected peer can hold here: a
// descriptor each, within the hard RLIMIT_NOFILE that it inherits from the
// harness (which a root without CAP_SYS_RESOURCE cannot raise), less a
// reserve for its other descriptors.
func connectedLimit() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Max > uint64(connectedMax)+64 {
		return connectedMax
	}
	return max(int(rl.Max)-64, 0)
}

// udpmuxPeers are the peers that are the udpmux daemon: with dissector
// flow, wireguard (-wg) or openvpn (-ovpn), in userspace or with the fast
// path (-fast: the kernel forwards established sessions' data, fast_path:
// nftables).
var udpmuxPeers = map[string]bool{"udpmux": true, "udpmux-wg": true, "udpmux-ovpn": true,
	"udpmux-fast": true, "udpmux-wg-fast": true, "udpmux-ovpn-fast": true}

// udpmuxMode returns the dissector of a udpmux peer, and whether it has the
// fast path.
func udpmuxMode(peer string) (dissector string, fast bool) {
	dissector = "flow"
	switch {
	case strings.HasPrefix(peer, "udpmux-wg"):
		dissector = "wireguard"
	case strings.HasPrefix(peer, "udpmux-ovpn"):
		dissector = "openvpn"
	}
	return dissector, strings.HasSuffix(peer, "-fast")
}

// startFastPath starts the daemon (args) with fast_path: nftables, which
// needs IPv4 forwarding in bs, as the NAT and routing peers do; its
// sessions are settled once every flow's is in the kernel.
func (h *harness) startFastPath(sc scenario, peer string, args []string) (*server, error) {
	if err := forwarding(true); err != nil {
		return nil, err
	}
	p, err := spawn(h.opts.work, sc.series+"-"+sc.kind+"-"+peer, nsServer, cpuServer, args...)
	if err != nil {
		forwarding(false)
		return nil, err
	}
	if err := waitUDP(p, nsServer, serverPort, 5*time.Second); err != nil {
		p.stop()
		forwarding(false)
		return nil, fmt.Errorf("%s %s: not available (%v)", peer, sc.kind, err)
	}
	sock := h.controlSocket()
	status := func() (daemonStatus, error) {
		var st daemonStatus
		out, err := exec.Command(h.binary("udpmux"), "status", "-s", sock, "-o", "json").Output()
		if err != nil {
			return st, fmt.Errorf("udpmux status: %v", err)
		}
		if err := json.Unmarshal(out, &st); err != nil {
			return st, fmt.Errorf("udpmux status: %v", err)
		}
		return st, nil
	}
	settled := func(flows int) (bool, error) {
		st, err := status()
		return err == nil && st.offloaded() >= int64(flows), err
	}
	return &server{proc: p, undo: func() { forwarding(false) }, dst: serverAddr, settled: settled, status: status}, nil
}

// controlSocket is the daemon's control socket, in the session's work
// directory rather than the default path other processes of the machine
// may use.
func (h *harness) controlSocket() string { return filepath.Join(h.opts.work, "udpmux.sock") }

// startBackends runs the bare echo peer on every backend address in bb.
func (h *harness) startBackends() (*process, error) {
	p, err := spawn(h.opts.work, "backends", nsBackend, cpuClient,
		h.binary("peer"), "-kind", "bare", "-mode", "echo", "-addr", strings.Join(backendAddrs, ","),
		"-rcvbuf", strconv.Itoa(sockBuf), "-sndbuf", strconv.Itoa(sockBuf))
	if err != nil {
		return nil, err
	}
	for _, a := range backendAddrs {
		port, _ := strconv.Atoi(a[strings.LastIndexByte(a, ':')+1:])
		if err := waitUDP(p, nsBackend, port, 5*time.Second); err != nil {
			p.stop()
			return nil, err
		}
	}
	return p, nil
}

// inNS runs a command inside namespace ns and returns its error with its
// output.
func inNS(ns string, args ...string) error {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// forwarding turns IPv4 forwarding in bs on or off.
func forwarding(on bool) error {
	v := "0"
	if on {
		v = "1"
	}
	return inNS(nsServer, "sysctl", "-qw", "net.ipv4.ip_forward="+v)
}

// natTable is the nftables table of the kernel NAT peer.
const natTable = "udpmux_bench_nat"

// natRules is the kernel NAT peer: what OpenVPN Access Server does with
// iptables in front of its per-core daemons, in nftables. The first
// datagram of each flow picks a backend in turn (numgen inc) and conntrack
// keeps the flow there, translating replies back; no process is involved.
func natRules() string {
	var m []string
	for i, a := range backendAddrs {
		host, port, _ := strings.Cut(a, ":")
		m = append(m, fmt.Sprintf("%d : %s . %s", i, host, port))
	}
	host, port, _ := strings.Cut(serverAddr, ":")
	return fmt.Sprintf(`table ip %s {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %s udp dport %s dnat ip to numgen inc mod %d map { %s }
	}
}
`, natTable, host, port, len(backendAddrs), strings.Join(m, ", "))
}

// startNAT installs the kernel NAT peer in bs.
func (h *harness) startNAT() (*server, error) {
	path := filepath.Join(h.opts.work, "nat.nft")
	if err := os.WriteFile(path, []byte(natRules()), 0o644); err != nil {
		return nil, err
	}
	if err := forwarding(true); err != nil {
		return nil, err
	}
	stopNAT := func() {
		inNS(nsServer, "nft", "delete", "table", "ip", natTable)
		inNS(nsServer, "conntrack", "-F")
		forwarding(false)
	}
	if err := inNS(nsServer, "nft", "-f", path); err != nil {
		stopNAT()
		return nil, fmt.Errorf("nat: not available (%v)", err)
	}
	return &server{undo: stopNAT, dst: serverAddr}, nil
}

// startRouting makes bs a plain router: the generator sends straight to the
// backends' addresses, through bs, with no NAT and no conntrack rule: the
// floor of the path itself.
func (h *harness) startRouting() (*server, error) {
	if err := forwarding(true); err != nil {
		return nil, err
	}
	return &server{undo: func() { forwarding(false) }, dst: strings.Join(backendAddrs, ",")}, nil
}

// groDevices are the server-side veths whose GRO a configuration may turn on.
var groDevices = []string{"vs", "vsb"}

// setGRO turns generic receive offload on for the server-side veth dev and
// off for the others ("" turns all off); see enableGRO for what "on" takes
// on this lab.
func (h *harness) setGRO(dev string) error {
	if h.groOn == dev {
		return nil
	}
	for _, d := range groDevices {
		if d != dev && (h.groOn == d || h.groOn == "") {
			if err := disableGRO(d); err != nil {
				return err
			}
		}
	}
	h.groOn = ""
	if dev != "" {
		if err := enableGRO(dev); err != nil {
			return err
		}
	}
	h.groOn = dev
	return nil
}

// enableGRO makes veth dev in bs coalesce UDP datagrams as a NIC with GRO
// would. On this kernel (6.18) that takes three settings, found by
// counting what a UDP_GRO socket receives (benchmarks/README.md, GRO):
//   - gro on gives the veth a NAPI poll loop;
//   - rx-udp-gro-forwarding on, because the sending veth has TSO and veth
//     hands such a sender's UDP packets to its NAPI loop only when the
//     receiver does UDP GRO forwarding (or fraglist GRO);
//   - threaded NAPI, with the thread on the server core at SCHED_FIFO:
//     in softirq the loop runs right after each packet's transmission, on
//     the sender's core, and never finds two packets to merge; as a thread
//     on the server core it runs like a NIC's interrupt on that core, and
//     packets that arrive while the core is busy wait in the veth ring and
//     are merged.
func enableGRO(dev string) error {
	before, err := napiThreads(dev)
	if err != nil {
		return err
	}
	if err := inNS(nsServer, "ethtool", "-K", dev, "gro", "on", "rx-udp-gro-forwarding", "on"); err != nil {
		return fmt.Errorf("GRO on %s: %w", dev, err)
	}
	if err := inNS(nsServer, "sh", "-c", "echo 1 > /sys/class/net/"+dev+"/threaded"); err != nil {
		return fmt.Errorf("threaded NAPI on %s: %w", dev, err)
	}
	after, err := napiThreads(dev)
	if err != nil {
		return err
	}
	for pid := range after {
		if before[pid] {
			continue // not ours: another namespace's device of the same name
		}
		if out, err := exec.Command("taskset", "-pc", cpuServer, strconv.Itoa(pid)).CombinedOutput(); err != nil {
			return fmt.Errorf("taskset NAPI thread %d: %v: %s", pid, err, out)
		}
		if out, err := exec.Command("chrt", "-f", "-p", "50", strconv.Itoa(pid)).CombinedOutput(); err != nil {
			return fmt.Errorf("chrt NAPI thread %d: %v: %s", pid, err, out)
		}
	}
	return nil
}

// disableGRO returns veth dev to the lab's default: no NAPI loop, no GRO.
func disableGRO(dev string) error {
	// Without a NAPI loop (GRO never turned on) the file refuses any write.
	threaded := "/sys/class/net/" + dev + "/threaded"
	if err := inNS(nsServer, "sh", "-c", "grep -qx 0 "+threaded+" || echo 0 > "+threaded); err != nil {
		return fmt.Errorf("threaded NAPI off on %s: %w", dev, err)
	}
	if err := inNS(nsServer, "ethtool", "-K", dev, "gro", "off", "rx-udp-gro-forwarding", "off"); err != nil {
		return fmt.Errorf("GRO off on %s: %w", dev, err)
	}
	return nil
}

// napiThreads returns the pids of the kernel's NAPI threads for devices
// named dev (in any namespace: "napi/<dev>-<napi id>").
func napiThreads(dev string) (map[int]bool, error) {
	out := map[int]bool{}
	err := eachProcess("comm", func(pid int, comm []byte) {
		name := strings.TrimSpace(string(comm))
		if id, found := strings.CutPrefix(name, "napi/"+dev+"-"); found {
			if _, err := strconv.Atoi(id); err == nil {
				out[pid] = true
			}
		}
	})
	return out, err
}

// udpmuxConf writes the daemon's configuration for a scenario kind with the
// given dissector.
func (h *harness) udpmuxConf(kind, dissector string, fast bool, capacity int) (string, error) {
	handler := map[string]string{kindSink: "discard", kindEcho: "echo", kindProxy: "proxy"}[kind]
	var b strings.Builder
	fmt.Fprintf(&b, "workers: 1\nbatch: 64\nsocket:\n  recv_buffer: %d\n  send_buffer: %d\n", sockBuf, sockBuf)
	fmt.Fprintf(&b, "listeners:\n  - name: %s\n", benchListener)
	fmt.Fprintf(&b, "    address: %q\n    handler: %s\n    dissector: %s\n    idle_timeout: 60s\n", serverAddr, handler, dissector)
	if kind == kindProxy {
		fmt.Fprintf(&b, "    backends: [%q, %q]\n    balance: maglev\n", backendAddrs[0], backendAddrs[1])
	}
	name := "udpmux-" + kind + "-" + dissector
	if fast {
		fmt.Fprintf(&b, "    fast_path: nftables\n")
		name += "-fast"
	}
	fmt.Fprintf(&b, "sessions:\n  max: %d\ncontrol:\n  socket: %q\n", cmp.Or(capacity, 1000000), h.controlSocket())
	if capacity > 0 {
		name += "-" + strconv.Itoa(capacity)
	}
	path := filepath.Join(h.opts.work, name+".yaml")
	return path, os.WriteFile(path, []byte(b.String()), 0o644)
}

// nginxConf writes an nginx configuration for the stream UDP proxy: one
// worker, in the foreground, sessions that last while the client sends (no
// proxy_responses limit, so one upstream socket per client flow, as a tunnel
// needs).
func (h *harness) nginxConf() (string, error) {
	dir := filepath.Join(h.opts.work, "nginx")
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return "", err
	}
	var ups strings.Builder
	for _, a := range backendAddrs {
		fmt.Fprintf(&ups, "        server %s;\n", a)
	}
	conf := fmt.Sprintf(`load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
worker_rlimit_nofile 300000;
daemon off;
error_log %[1]s/logs/error.log warn;
pid %[1]s/nginx.pid;
events {
    worker_connections 250000;
}
stream {
    upstream backends {
%[2]s    }
    server {
        listen %[3]s udp reuseport rcvbuf=%[4]d sndbuf=%[4]d;
        proxy_pass backends;
        # No proxy_responses limit: a session lives while its client sends
        # (proxy_timeout), with one upstream socket per client flow.
        proxy_timeout 60s;
    }
}
`, dir, ups.String(), serverAddr, sockBuf)
	path := filepath.Join(dir, "nginx.conf")
	return path, os.WriteFile(path, []byte(conf), 0o644)
}

// groSupport says whether the server-side veth takes GRO on this kernel
// with the settings enableGRO uses, as ethtool reports them: the lab must
// be up.
func groSupport() string {
	if err := enableGRO("vs"); err != nil {
		return "not available: " + err.Error()
	}
	defer disableGRO("vs")
	out, err := exec.Command("ip", "netns", "exec", nsServer, "ethtool", "-k", "vs").Output()
	if err != nil {
		return "ethtool -k vs failed: " + err.Error()
	}
	var got []string
	for _, line := range strings.Split(string(out), "\n") {
		l := strings.TrimSpace(line)
		if strings.HasPrefix(l, "generic-receive-offload:") || strings.HasPrefix(l, "rx-udp-gro-forwarding:") {
			got = append(got, l)
		}
	}
	return "with GRO on: " + strings.Join(got, ", ") + ", threaded NAPI on CPU 1 (SCHED_FIFO)"
}
