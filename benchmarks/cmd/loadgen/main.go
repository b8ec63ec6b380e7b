// Command loadgen drives a UDP server with many flows and reports, as one JSON
// object on standard output, how many datagrams it sent and got back, how many
// came back on the wrong flow, and round-trip percentiles.
//
// Every flow is its own UDP socket with its own source address:port (ports
// from -port-base upwards on the first -src address, then on the next, so
// 100 000 flows fit on a few addresses), connected to -dst. One thread does
// everything: it sends a burst of -burst datagrams on one flow with
// sendmmsg(2), moves to the next flow, and between rounds collects replies
// from all sockets with epoll and recvmmsg(2). Each datagram starts with the
// header of package wire (flow id, sequence number, send time).
//
// With -proto wireguard every datagram is a well-formed WireGuard transport
// message (type 4): bytes 0-3 are 04 00 00 00, 4-7 the receiver index (the
// flow id), 8-15 the counter (the sequence number), then the wire header and
// padding; its -size must be 32 plus a multiple of 16. Before sending any,
// each flow sends one handshake initiation (type 1, 148 bytes), which lets a
// WireGuard-aware proxy make its session, and waits up to a second for the
// echoes of all of them; those are counted apart (handshakes).
//
// With -proto openvpn every datagram is an OpenVPN P_DATA_V2 packet as an
// AEAD cipher sends it: byte 0 is 0x48 (opcode 9, key ID 0), 1-3 the peer-id
// (the flow id, big-endian), 4-7 the packet-id (big-endian, the sequence
// number plus one: 1, 2, 3, ... per flow), then the wire header and padding;
// its -size must be at least 32. Before sending any, each flow sends one
// P_CONTROL_HARD_RESET_CLIENT_V2 (opcode 7, 14 bytes, a session ID of its
// own), which lets an OpenVPN-aware proxy make its session (a data packet
// only looks one up), and waits for the echoes as with wireguard.
//
// With -hello=false the flows send no such first message and start with
// data: for runs that follow one with hellos (a warm-up) and find the
// sessions it made still there. That needs the same flows from run to run,
// which they are: flow i always binds the same source address and port
// (see -src, -port-base, -ports-per-addr) and sends to the same -dst.
//
// -dst may list several servers: flow i then sends to the (i mod n)-th.
//
// With -rate 0 it sends as fast as it can (the generator's maximum); with
// -rate N it paces to N datagrams per second, sleeping with nanosecond
// timeouts (epoll_pwait2) between sends. In -mode sink it only sends. It runs
// for -duration, then waits -drain for replies still in flight, and exits.
//
// A process may not hold more descriptors than its hard RLIMIT_NOFILE (which
// an unprivileged or capability-less root cannot raise), so when -flows
// exceeds it, loadgen runs several copies of itself, each with its own range
// of flows and its share of -rate, and merges their reports.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/benchmarks/internal/hist"
	"github.com/udpmux/udpmux/benchmarks/internal/mmsg"
	"github.com/udpmux/udpmux/benchmarks/internal/wire"
)

// config holds the command-line settings.
type config struct {
	dsts         []netip.AddrPort
	srcs         []netip.Addr
	portBase     int
	portsPerAddr int
	flows        int
	flowBase     int // id of the first flow: its source address and port
	child        bool
	size         int
	duration     time.Duration
	drain        time.Duration
	rate         float64
	echo         bool
	burst        int
	rcvbuf       int
	proto        string // -proto: protoWireGuard, protoOpenVPN or "" (plain)
	hello        bool   // -hello: with a proto, each flow's first message before its data
}

// report is the JSON printed at the end of a run.
type report struct {
	Mode        string  `json:"mode"`
	Flows       int     `json:"flows"`
	Size        int     `json:"size"`
	Rate        float64 `json:"rate"` // target datagrams/s, 0 = maximum
	DurationS   float64 `json:"duration_s"`
	Sent        uint64  `json:"sent"`
	Received    uint64  `json:"received"` // replies on their own flow's socket
	Lost        int64   `json:"lost"`     // sent - received (echo mode only)
	LossPct     float64 `json:"loss_pct"`
	Misrouted   uint64  `json:"misrouted"` // replies carrying another flow's id
	Malformed   uint64  `json:"malformed"` // replies without our header
	SendErrors  uint64  `json:"send_errors"`
	SendBlocked uint64  `json:"send_blocked"` // sendmmsg calls refused with EAGAIN
	RecvErrors  uint64  `json:"recv_errors"`
	OfferedPPS  float64 `json:"offered_pps"`
	ReplyPPS    float64 `json:"reply_pps"`
	RTTP50us    float64 `json:"rtt_p50_us"`
	RTTP99us    float64 `json:"rtt_p99_us"`
	RTTP999us   float64 `json:"rtt_p999_us"`
	RTTMaxus    float64 `json:"rtt_max_us"`
	Procs       int     `json:"procs"`                // generator processes
	Handshakes  uint64  `json:"handshakes,omitempty"` // echoed first messages (-proto wireguard, openvpn; none with -hello=false)

	// Set by child processes only, for the parent to merge.
	RTTHist  []hist.Bucket `json:"rtt_hist,omitempty"`
	RTTMaxNs int64         `json:"rtt_max_ns,omitempty"`
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	perProc, err := flowsPerProcess()
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	var r *report
	if cfg.flows > perProc && !cfg.child {
		r, err = runSplit(cfg, perProc)
	} else {
		r, err = run(cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(r); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

// parseFlags reads the command line's arguments (without the command's
// name).
func parseFlags(args []string) (config, error) {
	fs := flag.NewFlagSet("loadgen", flag.ExitOnError)
	var (
		cfg  config
		dst  = fs.String("dst", "198.18.0.2:9000", "server address:port; a comma-separated list spreads the flows over them")
		prot = fs.String("proto", "", `"" (the wire header at offset 0), wireguard (WireGuard transport messages) or openvpn (OpenVPN P_DATA_V2 packets)`)
		srcs = fs.String("src", "198.18.0.1", "comma-separated source addresses; flows fill -ports-per-addr ports on each in turn")
		mode = fs.String("mode", "echo", "echo (expect a reply per datagram) or sink (send only)")
	)
	fs.IntVar(&cfg.portBase, "port-base", 10000, "first source port of every source address")
	fs.IntVar(&cfg.portsPerAddr, "ports-per-addr", 50000, "source ports used per source address")
	fs.IntVar(&cfg.flows, "flows", 256, "number of flows (sockets, distinct source address:port)")
	fs.IntVar(&cfg.flowBase, "flow-base", 0, "id of the first flow (set for child processes)")
	fs.BoolVar(&cfg.child, "child", false, "run as one of several generator processes (internal)")
	fs.IntVar(&cfg.size, "size", 64, fmt.Sprintf("UDP payload bytes (>= %d)", wire.HeaderLen))
	fs.DurationVar(&cfg.duration, "duration", 3*time.Second, "how long to send")
	fs.DurationVar(&cfg.drain, "drain", 300*time.Millisecond, "how long to wait for replies after sending stops")
	fs.Float64Var(&cfg.rate, "rate", 0, "datagrams per second over all flows; 0 = as fast as possible")
	fs.IntVar(&cfg.burst, "burst", 4, "datagrams sent per flow per sendmmsg call (1-64)")
	fs.IntVar(&cfg.rcvbuf, "rcvbuf", 1<<18, "receive buffer bytes per flow socket (SO_RCVBUFFORCE)")
	fs.BoolVar(&cfg.hello, "hello", true, "with -proto, each flow first sends the message that makes its session (false: data only, for sessions an earlier run made)")
	fs.Parse(args) // exits on an error

	for s := range strings.SplitSeq(*dst, ",") {
		ap, err := netip.ParseAddrPort(strings.TrimSpace(s))
		if err != nil || !ap.Addr().Is4() {
			return cfg, fmt.Errorf("-dst %q: want IPv4 address:port", s)
		}
		cfg.dsts = append(cfg.dsts, ap)
	}
	cfg.proto = *prot
	switch *prot {
	case "":
	case protoWireGuard:
		if cfg.size < wgHeaderLen+wire.HeaderLen || (cfg.size-wgMinTransport)%16 != 0 {
			return cfg, fmt.Errorf("-proto wireguard: -size must be 32 plus a multiple of 16, at least %d", wgHeaderLen+wire.HeaderLen)
		}
	case protoOpenVPN:
		if cfg.size < ovpnDataHeaderLen+wire.HeaderLen {
			return cfg, fmt.Errorf("-proto openvpn: -size must be at least %d", ovpnDataHeaderLen+wire.HeaderLen)
		}
		if cfg.flowBase+cfg.flows > ovpnMaxPeerID+1 {
			return cfg, fmt.Errorf("-proto openvpn: a flow's peer-id is its id, so at most %d flows", ovpnMaxPeerID+1)
		}
	default:
		return cfg, fmt.Errorf("-proto %q: want wireguard, openvpn or nothing", *prot)
	}
	for s := range strings.SplitSeq(*srcs, ",") {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil || !a.Is4() {
			return cfg, fmt.Errorf("-src %q: want IPv4 addresses", s)
		}
		cfg.srcs = append(cfg.srcs, a)
	}
	switch *mode {
	case "echo":
		cfg.echo = true
	case "sink":
	default:
		return cfg, fmt.Errorf("-mode %q: want echo or sink", *mode)
	}
	switch {
	case cfg.flows < 1:
		return cfg, errors.New("-flows must be >= 1")
	case cfg.size < wire.HeaderLen || cfg.size > 65507:
		return cfg, fmt.Errorf("-size must be in [%d, 65507]", wire.HeaderLen)
	case cfg.burst < 1 || cfg.burst > 64:
		return cfg, errors.New("-burst must be in [1, 64]")
	case cfg.portsPerAddr < 1 || cfg.portBase < 1 || cfg.portBase+cfg.portsPerAddr > 65536:
		return cfg, errors.New("-port-base and -ports-per-addr must describe ports within 1-65535")
	case cfg.flowBase < 0 || cfg.flowBase+cfg.flows > len(cfg.srcs)*cfg.portsPerAddr:
		return cfg, fmt.Errorf("%d flows need more than %d source addresses x %d ports", cfg.flowBase+cfg.flows, len(cfg.srcs), cfg.portsPerAddr)
	case cfg.duration <= 0 || cfg.rate < 0:
		return cfg, errors.New("-duration must be > 0 and -rate >= 0")
	}
	return cfg, nil
}

// generator is the state of one run.
type generator struct {
	cfg   config
	epfd  int
	fds   []int    // socket of each flow
	seqs  []uint64 // next sequence number of each flow
	epoch time.Time

	out    *mmsg.Batch
	in     *mmsg.Batch
	events []unix.EpollEvent
	rtt    hist.Histogram
	r      report
}

func run(cfg config) (*report, error) {
	g := &generator{
		cfg:    cfg,
		fds:    make([]int, 0, cfg.flows),
		seqs:   make([]uint64, cfg.flows),
		out:    mmsg.NewBatch(cfg.burst, cfg.size, false),
		in:     mmsg.NewBatch(64, max(cfg.size, 2048), false),
		events: make([]unix.EpollEvent, 256),
	}
	defer g.close()
	if err := g.open(); err != nil {
		return nil, err
	}
	g.epoch = time.Now()
	if g.sendsHello() {
		g.handshake()
		g.epoch = time.Now()
	}
	g.loop()
	g.finish()
	return &g.r, nil
}

// spareFDs is the number of descriptors kept free for things other than flows.
const spareFDs = 64

// flowsPerProcess raises the soft descriptor limit to the hard one and
// returns how many flows one process can hold.
func flowsPerProcess() (int, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return 0, fmt.Errorf("raising the open-file limit to %d: %w", lim.Max, err)
		}
	}
	if lim.Cur <= spareFDs {
		return 0, fmt.Errorf("open-file limit %d is too small", lim.Cur)
	}
	return int(min(lim.Cur, 1<<30)) - spareFDs, nil
}

// runSplit runs the flows in several child processes of at most perProc
// flows each, every one with its share of the rate, and merges their reports.
func runSplit(cfg config, perProc int) (*report, error) {
	type child struct {
		cmd *exec.Cmd
		out bytes.Buffer
	}
	var children []*child
	for base := 0; base < cfg.flows; base += perProc {
		n := min(perProc, cfg.flows-base)
		// Later flags override earlier ones.
		args := append(append([]string(nil), os.Args[1:]...), "-child", "-flow-base", strconv.Itoa(cfg.flowBase+base),
			"-flows", strconv.Itoa(n), "-rate", strconv.FormatFloat(cfg.rate*float64(n)/float64(cfg.flows), 'f', -1, 64))
		c := &child{cmd: exec.Command("/proc/self/exe", args...)}
		c.cmd.Stdout, c.cmd.Stderr = &c.out, os.Stderr
		if err := c.cmd.Start(); err != nil {
			return nil, fmt.Errorf("starting a generator process: %w", err)
		}
		children = append(children, c)
	}
	var errs []error
	var rtt hist.Histogram
	merged := &report{Procs: len(children)}
	for _, c := range children {
		if err := c.cmd.Wait(); err != nil {
			errs = append(errs, fmt.Errorf("generator process: %w", err))
			continue
		}
		var r report
		if err := json.Unmarshal(c.out.Bytes(), &r); err != nil {
			errs = append(errs, fmt.Errorf("generator process output: %w", err))
			continue
		}
		merged.Sent += r.Sent
		merged.Received += r.Received
		merged.Misrouted += r.Misrouted
		merged.Malformed += r.Malformed
		merged.SendErrors += r.SendErrors
		merged.SendBlocked += r.SendBlocked
		merged.RecvErrors += r.RecvErrors
		merged.Handshakes += r.Handshakes
		merged.DurationS = max(merged.DurationS, r.DurationS)
		rtt.Add(r.RTTHist, r.RTTMaxNs)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	fillReport(merged, cfg, &rtt)
	return merged, nil
}

// open creates, binds and connects one socket per flow, registering each
// with epoll (its index in this process as the event data).
func (g *generator) open() error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	g.epfd = epfd
	for i := range g.cfg.flows {
		id := g.cfg.flowBase + i
		src := netip.AddrPortFrom(g.cfg.srcs[id/g.cfg.portsPerAddr], uint16(g.cfg.portBase+id%g.cfg.portsPerAddr))
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("flow %d: socket: %w", i, err)
		}
		g.fds = append(g.fds, fd)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, g.cfg.rcvbuf); err != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, g.cfg.rcvbuf); err != nil {
				return fmt.Errorf("flow %d: SO_RCVBUF: %w", i, err)
			}
		}
		if err := unix.Bind(fd, mmsg.Sockaddr(src)); err != nil {
			return fmt.Errorf("flow %d: bind %v: %w", i, src, err)
		}
		dst := g.cfg.dsts[id%len(g.cfg.dsts)]
		if err := unix.Connect(fd, mmsg.Sockaddr(dst)); err != nil {
			return fmt.Errorf("flow %d: connect %v: %w", i, dst, err)
		}
		if g.cfg.echo {
			ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(i)}
			if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
				return fmt.Errorf("flow %d: epoll_ctl: %w", i, err)
			}
		}
	}
	return nil
}

func (g *generator) close() {
	for _, fd := range g.fds {
		unix.Close(fd)
	}
	if g.epfd > 0 {
		unix.Close(g.epfd)
	}
}

// now returns nanoseconds since the start of the run (monotonic clock).
func (g *generator) now() int64 { return int64(time.Since(g.epoch)) }

// loop sends for the configured duration, collecting replies between sends,
// then only collects replies until the drain time is over.
func (g *generator) loop() {
	const roundMax = 256 // datagrams sent between two looks at the replies
	end := int64(g.cfg.duration)
	flow := 0
	var sent uint64
	for {
		now := g.now()
		if now >= end {
			break
		}
		budget := uint64(roundMax)
		if g.cfg.rate > 0 {
			due := uint64(g.cfg.rate * float64(now) / 1e9)
			if due <= sent {
				// Ahead of schedule: wait (for replies or time) until the next datagram is due.
				next := int64(float64(sent+1) * 1e9 / g.cfg.rate)
				g.poll(min(next, end) - now)
				continue
			}
			budget = min(budget, due-sent)
		}
		for budget > 0 {
			n := min(uint64(g.cfg.burst), budget)
			budget -= n
			sent += g.sendBurst(flow, int(n))
			if flow++; flow == len(g.fds) {
				flow = 0
			}
		}
		g.poll(0)
	}
	g.r.DurationS = float64(g.now()) / 1e9
	drainEnd := g.now() + int64(g.cfg.drain)
	for now := g.now(); now < drainEnd; now = g.now() {
		g.poll(drainEnd - now)
	}
}

// sendBurst sends n datagrams on one flow and returns how many the kernel took.
func (g *generator) sendBurst(flow, n int) uint64 {
	ts := g.now()
	seq := g.seqs[flow]
	id := uint32(g.cfg.flowBase + flow)
	off := g.payloadOffset()
	for k := range n {
		g.putProto(g.out.Bufs[k], id, seq+uint64(k))
		wire.Put(g.out.Bufs[k][off:], wire.Header{Flow: id, Seq: seq + uint64(k), Sent: ts})
	}
	sent, err := g.out.Send(g.fds[flow], n, 0)
	switch {
	case err == unix.EAGAIN:
		g.r.SendBlocked++
	case err != nil:
		g.r.SendErrors++ // e.g. ECONNREFUSED after an ICMP port unreachable
	}
	g.seqs[flow] += uint64(sent)
	g.r.Sent += uint64(sent)
	return uint64(sent)
}

// poll waits up to timeout nanoseconds (0: not at all) for readable sockets
// and reads every reply they hold.
func (g *generator) poll(timeout int64) {
	ts := unix.NsecToTimespec(max(timeout, 0))
	r, _, e := unix.Syscall6(unix.SYS_EPOLL_PWAIT2, uintptr(g.epfd), uintptr(unsafe.Pointer(&g.events[0])),
		uintptr(len(g.events)), uintptr(unsafe.Pointer(&ts)), 0, 0)
	if e != 0 {
		return // EINTR: the caller loops
	}
	for _, ev := range g.events[:r] {
		g.readFlow(int(ev.Fd))
	}
}

// readFlow drains one flow's socket.
func (g *generator) readFlow(flow int) {
	for {
		n, err := g.in.Recv(g.fds[flow], unix.MSG_DONTWAIT)
		if err != nil {
			if err != unix.EAGAIN {
				g.r.RecvErrors++
			}
			return
		}
		now := g.now()
		off := g.payloadOffset()
		for i := range n {
			b := g.in.Bufs[i][:g.in.Len(i)]
			if g.isHello(b) {
				g.r.Handshakes++
				continue
			}
			h, err := wire.Parse(b[min(off, len(b)):])
			switch {
			case err != nil:
				g.r.Malformed++
			case int(h.Flow) != g.cfg.flowBase+flow:
				g.r.Misrouted++
			default:
				g.r.Received++
				g.rtt.Record(now - h.Sent)
			}
		}
		if n < len(g.in.Hdrs) {
			return
		}
	}
}

// finish fills in the derived figures of the report.
func (g *generator) finish() {
	g.r.Procs = 1
	fillReport(&g.r, g.cfg, &g.rtt)
	if g.cfg.child {
		g.r.RTTHist, g.r.RTTMaxNs = g.rtt.Buckets(), g.rtt.Max()
	}
}

// fillReport derives the totals, rates and percentiles of r from its counts.
func fillReport(r *report, cfg config, rtt *hist.Histogram) {
	r.Flows, r.Size, r.Rate = cfg.flows, cfg.size, cfg.rate
	r.Mode = "sink"
	if cfg.echo {
		r.Mode = "echo"
		r.Lost = int64(r.Sent) - int64(r.Received)
		if r.Sent > 0 {
			r.LossPct = 100 * float64(r.Lost) / float64(r.Sent)
		}
		r.ReplyPPS = float64(r.Received) / r.DurationS
	}
	r.OfferedPPS = float64(r.Sent) / r.DurationS
	us := func(ns int64) float64 { return float64(ns) / 1e3 }
	r.RTTP50us = us(rtt.Quantile(0.50))
	r.RTTP99us = us(rtt.Quantile(0.99))
	r.RTTP999us = us(rtt.Quantile(0.999))
	r.RTTMaxus = us(rtt.Max())
}
