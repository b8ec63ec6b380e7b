package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/mux"
)

// BenchmarkHandoffPause measures what a restart costs the running process:
// how long its loops stay paused (from Freeze, after the early copy, until
// the successor has confirmed and got Done — the "paused" figure the owner
// logs), and how much memory the transfer takes on each side and on the
// control socket.
//
// The owner runs in this process: a mux.Server whose table is filled with
// synthetic sessions through a mux.Inheritance, served with the real control
// struct. The successor is this test binary run again as a separate process
// (TestHelperHandoffBenchSuccessor), doing what serve does: takeOver, mux.New
// with the inheritance, openControl. Two processes, as in a real upgrade,
// keep each side's allocations (runtime.MemStats.TotalAlloc) apart and each
// side's descriptors within its own RLIMIT_NOFILE.
//
// Metrics per handoff (averages over b.N): ms/pause is the owner's logged
// pause, max-ms/pause the longest; succ-recv-ms, succ-new-ms and
// succ-confirm-ms split the successor's side (receiving the listeners,
// building the server, then restoring the early copy as it streams, the
// pause and the confirmation); with traffic, updated/pause is the sessions
// sent again while paused, updated-early/handoff and rounds/handoff what the
// rounds before the pause sent; owner-MB/transfer and
// succ-MB/transfer are TotalAlloc deltas: the owner's from before the
// successor starts until the owner has handed over (its check of the
// successor's config included), the successor's from before it dials until
// Done, split into succ-recv-MB (takeOver) and succ-new-MB (mux.New with its
// flow table; confirm allocates next to nothing); succ-maxrss-MB is the
// successor's peak RSS (VmHWM);
// wire-B/session and wire-MB/transfer are the bytes of every message on the
// control socket both ways, SCM_RIGHTS control data included. ns/op is the
// successor's whole run, process start included; the other figures are the
// ones to read.
//
// Set UDPMUX_HANDOFF_BENCH_CPUPROFILE=/path/prefix to have each successor
// write its CPU profile (takeover to Done) to prefix.<pid>; the owner's side
// is in go test -cpuprofile.
func BenchmarkHandoffPause(b *testing.B) {
	cases := []struct {
		name     string
		sessions int
		proxy    bool
		traffic  benchTraffic
	}{
		{"echo/sessions=10k", 10_000, false, benchTraffic{}},
		{"echo/sessions=100k", 100_000, false, benchTraffic{}},
		{"echo/sessions=1M", 1_000_000, false, benchTraffic{}},
		{"proxy/sessions=10k", 10_000, true, benchTraffic{}},
		// Sessions that handle datagrams while the owner copies the table
		// are sent again during the pause: real clients, each with a session
		// of its own, send throughout the handoff.
		{"echo/sessions=100k/active=10k", 100_000, false, benchTraffic{clients: 10_000, rate: 50_000}},
		{"echo/sessions=100k/active=2k", 100_000, false, benchTraffic{clients: 2_000, rate: 20_000}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			if tc.sessions >= 1_000_000 && testing.Short() {
				b.Skip("1M sessions skipped with -short")
			}
			// The proxy's owner holds every upstream socket, the successor
			// the copies SCM_RIGHTS made; the traffic's clients are sockets
			// of the owner's process too.
			fds := tc.traffic.clients
			if tc.proxy {
				fds += tc.sessions
			}
			var rl unix.Rlimit
			if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
				b.Fatal(err)
			}
			if need := uint64(fds + 1024); rl.Cur < need {
				b.Skipf("RLIMIT_NOFILE %d is below the %d descriptors this case needs", rl.Cur, need)
			}
			runHandoffBench(b, tc.sessions, tc.proxy, tc.traffic)
		})
	}
}

// benchTraffic is datagrams sent to the owner during a handoff: rate per
// second in all, round-robin over clients, each a socket of its own and so
// a session of its own besides the synthetic ones.
type benchTraffic struct {
	clients, rate int
}

// start opens the clients, makes sure each has its session (an echo came
// back), then sends until the returned function is called; that function
// returns how many datagrams went out.
func (bt benchTraffic) start(b *testing.B, to netip.AddrPort) func() int {
	if bt.clients == 0 {
		return func() int { return 0 }
	}
	conns := make([]*net.UDPConn, bt.clients)
	for i := range conns {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
		if err != nil {
			b.Fatal(err)
		}
		conns[i] = c
	}
	buf := make([]byte, 64)
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		c.Write(buf)
		if _, err := c.Read(buf); err != nil {
			b.Fatalf("client %d got no echo: %v", i, err)
		}
	}
	stop, done := make(chan struct{}), make(chan int)
	go func() {
		// Bursts each millisecond: a ticker per datagram would cost more
		// than the datagram.
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		sent, next := 0, 0
		start := time.Now()
		for {
			select {
			case <-stop:
				for _, c := range conns {
					c.Close()
				}
				done <- sent
				return
			case now := <-tick.C:
				for due := int(now.Sub(start).Seconds() * float64(bt.rate)); sent < due; sent++ {
					conns[next].Write(buf)
					next = (next + 1) % len(conns)
				}
			}
		}
	}()
	return func() int {
		close(stop)
		return <-done
	}
}

const (
	envBenchConfig  = "UDPMUX_HANDOFF_BENCH_CONFIG"
	envBenchResult  = "UDPMUX_HANDOFF_BENCH_RESULT"
	envBenchProfile = "UDPMUX_HANDOFF_BENCH_CPUPROFILE"
	benchWorkers    = 2
)

// successorReport is what the successor process measured.
type successorReport struct {
	Restored, Dropped             int
	RecvNs, NewNs, ConfirmNs      int64
	RecvAlloc, NewAlloc, AllAlloc uint64
	MaxRSS                        int64 // bytes
	WireBytes, ControlBytes       int64 // message bytes, SCM_RIGHTS control data
	Messages                      int
}

func runHandoffBench(b *testing.B, n int, proxy bool, traffic benchTraffic) {
	var (
		updated, sent    int
		early, rounds    int
		pauses           []time.Duration
		ownerAlloc       uint64
		succ             successorReport
		recv, nw, confir int64
		succAlloc        uint64
		recvAlloc        uint64
		newAlloc         uint64
		maxRSS           int64
	)
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		runtime.GC()
		o := startBenchOwner(b, n, proxy)
		stopTraffic := traffic.start(b, o.srv.Addr(0))
		b.StartTimer()
		r, ev := o.handOff(b)
		b.StopTimer()
		sent += stopTraffic()
		o.stop(b)
		if r.Restored != n+traffic.clients || r.Dropped != 0 {
			b.Fatalf("successor restored %d and dropped %d of %d sessions", r.Restored, r.Dropped, n+traffic.clients)
		}
		pause, alloc := ev.paused, ev.alloc
		updated += ev.updated
		early += ev.early
		rounds += ev.rounds
		pauses = append(pauses, pause)
		ownerAlloc += alloc
		recv += r.RecvNs
		nw += r.NewNs
		confir += r.ConfirmNs
		succAlloc += r.AllAlloc
		recvAlloc += r.RecvAlloc
		newAlloc += r.NewAlloc
		maxRSS = max(maxRSS, r.MaxRSS)
		succ = r
	}
	var sum, longest time.Duration
	for _, p := range pauses {
		sum += p
		longest = max(longest, p)
	}
	N := float64(b.N)
	ms := func(ns int64) float64 { return float64(ns) / 1e6 / N }
	b.ReportMetric(float64(sum.Nanoseconds())/1e6/N, "ms/pause")
	b.ReportMetric(float64(longest.Nanoseconds())/1e6, "max-ms/pause")
	b.ReportMetric(ms(recv), "succ-recv-ms")
	b.ReportMetric(ms(nw), "succ-new-ms")
	b.ReportMetric(ms(confir), "succ-confirm-ms")
	b.ReportMetric(float64(ownerAlloc)/1e6/N, "owner-MB/transfer")
	b.ReportMetric(float64(succAlloc)/1e6/N, "succ-MB/transfer")
	b.ReportMetric(float64(recvAlloc)/1e6/N, "succ-recv-MB")
	b.ReportMetric(float64(newAlloc)/1e6/N, "succ-new-MB")
	b.ReportMetric(float64(ownerAlloc+succAlloc)/N/float64(n), "alloc-B/session")
	b.ReportMetric(float64(maxRSS)/1e6, "succ-maxrss-MB")
	wire := float64(succ.WireBytes + succ.ControlBytes)
	b.ReportMetric(wire/1e6, "wire-MB/transfer")
	b.ReportMetric(wire/float64(n), "wire-B/session")
	if traffic.clients > 0 {
		b.ReportMetric(float64(updated)/N, "updated/pause")
		b.ReportMetric(float64(early)/N, "updated-early/handoff")
		b.ReportMetric(float64(rounds)/N, "rounds/handoff")
		b.ReportMetric(float64(sent)/N, "sent/handoff")
	}
}

// benchOwner is a running udpmux with n sessions and its control socket.
type benchOwner struct {
	dir     string
	cfgPath string
	srv     *mux.Server
	ln      *net.UnixListener
	cancel  context.CancelFunc
	served  chan struct{}
	events  chan ownerEvent
	backend *net.UDPConn
}

// ownerEvent is the owner's verdict on a handoff, taken from its log.
type ownerEvent struct {
	msg     string
	paused  time.Duration
	updated int    // sessions sent again while paused: they changed in the last round
	early   int    // updates sent in the rounds before the pause
	rounds  int    // rounds of changes before the pause
	alloc   uint64 // TotalAlloc during the handoff
	err     string
}

// eventLog catches the owner's handoff log records: their "paused" attribute
// is the interval its loops stood still.
type eventLog struct {
	events chan ownerEvent
	hello  chan uint64
}

func (h *eventLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *eventLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *eventLog) WithGroup(string) slog.Handler            { return h }
func (h *eventLog) Handle(_ context.Context, r slog.Record) error {
	switch r.Message {
	case "handed over to successor", "handoff failed; serving on", "handoff refused":
	default:
		return nil
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	ev := ownerEvent{msg: r.Message, alloc: m.TotalAlloc}
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "paused":
			ev.paused = a.Value.Duration()
		case "updated":
			ev.updated = int(a.Value.Int64())
		case "updated_early":
			ev.early = int(a.Value.Int64())
		case "rounds":
			ev.rounds = int(a.Value.Int64())
		case "err", "reason":
			ev.err = a.Value.String()
		}
		return true
	})
	select {
	case h.events <- ev:
	default:
	}
	return nil
}

func startBenchOwner(b *testing.B, n int, proxy bool) *benchOwner {
	b.Helper()
	dir, err := os.MkdirTemp("", "udpmux-hb")
	if err != nil {
		b.Fatal(err)
	}
	o := &benchOwner{dir: dir, served: make(chan struct{}), events: make(chan ownerEvent, 4)}
	fail := func(err error) {
		os.RemoveAll(dir)
		b.Fatal(err)
	}
	// One listener socket per loop in one reuseport group, as New opens them.
	var lfds []int
	local := netip.MustParseAddrPort("127.0.0.1:0")
	for range benchWorkers {
		s, err := udpsys.ListenUDP(local, udpsys.ListenConfig{IncomingCPU: -1})
		if err != nil {
			fail(err)
		}
		lfds = append(lfds, s.FD)
		local = s.Local
	}
	handler, backends := "echo", ""
	var backend netip.AddrPort
	var upstreams []int
	if proxy {
		if o.backend, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
			fail(err)
		}
		backend = o.backend.LocalAddr().(*net.UDPAddr).AddrPort()
		handler, backends = "proxy", fmt.Sprintf("\n    backends: [%q]", backend)
		upstreams = make([]int, 0, n)
		for range n {
			s, err := udpsys.DialUDP(backend, udpsys.ListenConfig{})
			if err != nil {
				closeFDs(upstreams)
				fail(fmt.Errorf("upstream socket %d: %w", len(upstreams), err))
			}
			upstreams = append(upstreams, s.FD)
		}
	}
	text := fmt.Sprintf(`workers: %d
control: {socket: %q, handoff_timeout: 120s}
listeners:
  - name: bench
    address: %q
    handler: %s%s
    idle_timeout: 60s
`, benchWorkers, filepath.Join(dir, "ctl.sock"), local, handler, backends)
	o.cfgPath = filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(o.cfgPath, []byte(text), 0o600); err != nil {
		fail(err)
	}
	cfg, err := parseConfig([]byte(text))
	if err != nil {
		fail(err)
	}
	cfg.mux.Logger = slog.New(slog.DiscardHandler)
	cfg.mux.Inherit = &mux.Inheritance{
		Listeners: []mux.InheritedListener{{Name: "bench", Address: local, FDs: lfds}},
		Sessions:  benchSessions(n, local, backend, proxy),
		Upstreams: upstreams,
	}
	if o.srv, err = mux.New(cfg.mux); err != nil {
		fail(err)
	}
	if r := o.srv.Restored(); r.Restored != n {
		fail(fmt.Errorf("owner restored %d of %d synthetic sessions (%d dropped)", r.Restored, n, r.Dropped))
	}
	cfg.mux.Inherit = nil
	if o.ln, err = listenControl(cfg.controlSocket); err != nil {
		fail(err)
	}
	ctl := &control{ln: o.ln, srv: o.srv, cfg: cfg, log: slog.New(&eventLog{events: o.events}),
		started: time.Now(), finished: make(chan struct{})}
	go ctl.serve()
	ctx, cancel := context.WithCancel(context.Background())
	o.cancel = cancel
	go func() {
		defer close(o.served)
		o.srv.Serve(ctx)
	}()
	return o
}

// benchSessions makes n records with distinct peers spread over 127.0.0.0/8,
// as ExportSessions would describe them.
func benchSessions(n int, local, backend netip.AddrPort, proxy bool) []handoff.Session {
	var state []byte
	if proxy {
		state, _ = backend.MarshalBinary()
	}
	now := time.Now().UnixNano()
	recs := make([]handoff.Session, n)
	for i := range recs {
		a := uint32(i) + 1
		peer := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, byte(a >> 16), byte(a >> 8), byte(a)}), uint16(1024+i%60000))
		up := int32(-1)
		if proxy {
			up = int32(i)
		}
		recs[i] = handoff.Session{
			Key: flowtable.TupleKey(0, local, peer), Loop: uint16(i % benchWorkers),
			Peer: peer, Local: local, Created: now,
			IdleLeft: int64(60 * time.Second), IdleTimeout: int64(60 * time.Second),
			RxPackets: 3, RxBytes: 300, TxPackets: 3, TxBytes: 300,
			Upstream: up, State: state,
		}
	}
	return recs
}

// handOff runs a successor process and returns its report and the owner's
// verdict: its logged pause and its allocations during the handoff.
func (o *benchOwner) handOff(b *testing.B) (successorReport, ownerEvent) {
	var r successorReport
	result := filepath.Join(o.dir, "result.json")
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHandoffBenchSuccessor$", "-test.count=1")
	cmd.Env = append(os.Environ(), envBenchConfig+"="+o.cfgPath, envBenchResult+"="+result)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	if err := cmd.Run(); err != nil {
		b.Fatalf("successor: %v\n%s", err, out.Bytes())
	}
	var ev ownerEvent
	select {
	case ev = <-o.events:
	case <-time.After(10 * time.Second):
		b.Fatal("the owner logged no handoff verdict")
	}
	if ev.msg != "handed over to successor" {
		b.Fatalf("owner: %s: %s", ev.msg, ev.err)
	}
	data, err := os.ReadFile(result)
	if err != nil {
		b.Fatalf("successor result: %v\n%s", err, out.Bytes())
	}
	if err := json.Unmarshal(data, &r); err != nil {
		b.Fatal(err)
	}
	ev.alloc -= m.TotalAlloc
	return r, ev
}

// stop waits for the owner's loops to end after Handover and releases the
// rest.
func (o *benchOwner) stop(b *testing.B) {
	select {
	case <-o.served:
	case <-time.After(60 * time.Second):
		b.Fatal("owner still serving after the handoff")
	}
	o.cancel()
	o.ln.Close()
	if o.backend != nil {
		o.backend.Close()
	}
	os.RemoveAll(o.dir)
}

// TestHelperHandoffBenchSuccessor is not a test: BenchmarkHandoffPause runs
// it as the successor process. It does what serve does up to the moment the
// new process would serve, and writes what it measured.
func TestHelperHandoffBenchSuccessor(t *testing.T) {
	path := os.Getenv(envBenchConfig)
	if path == "" {
		t.Skip("helper process for BenchmarkHandoffPause")
	}
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg.mux.Logger = slog.New(slog.DiscardHandler)
	if prefix := os.Getenv(envBenchProfile); prefix != "" {
		f, err := os.Create(prefix + "." + strconv.Itoa(os.Getpid()))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	var m0, m1, m2, m3 runtime.MemStats
	runtime.ReadMemStats(&m0)
	t0 := time.Now()
	inh, err := takeOver(cfg)
	if err != nil || inh == nil {
		t.Fatalf("takeover: %v (nil: %v)", err, inh == nil)
	}
	t1 := time.Now()
	runtime.ReadMemStats(&m1)
	cfg.mux.Inherit = inh.mux
	srv, err := mux.New(cfg.mux)
	if err != nil {
		unix.Close(inh.control)
		inh.abort(err)
		t.Fatal(err)
	}
	t2 := time.Now()
	runtime.ReadMemStats(&m2)
	ln, err := openControl(cfg, inh, srv)
	if err != nil {
		t.Fatal(err)
	}
	t3 := time.Now()
	runtime.ReadMemStats(&m3)
	pprof.StopCPUProfile()
	// VmHWM, not getrusage's ru_maxrss: the latter survives exec and would
	// report the parent's peak.
	hwm := peakRSS()
	r := successorReport{
		Restored: srv.Restored().Restored, Dropped: srv.Restored().Dropped,
		RecvNs: t1.Sub(t0).Nanoseconds(), NewNs: t2.Sub(t1).Nanoseconds(), ConfirmNs: t3.Sub(t2).Nanoseconds(),
		RecvAlloc: m1.TotalAlloc - m0.TotalAlloc, NewAlloc: m2.TotalAlloc - m1.TotalAlloc, AllAlloc: m3.TotalAlloc - m0.TotalAlloc,
		MaxRSS: hwm,
	}
	r.WireBytes = int64(inh.received.bytes)
	r.ControlBytes = int64(unix.CmsgSpace(4*handoff.MaxFDsPerMessage)) * int64((inh.received.fds+handoff.MaxFDsPerMessage-1)/handoff.MaxFDsPerMessage)
	r.Messages = inh.received.messages
	data, _ := json.Marshal(r)
	if err := os.WriteFile(os.Getenv(envBenchResult), data, 0o600); err != nil {
		t.Fatal(err)
	}
	ln.Close()
	srv.Close()
}

// peakRSS returns this process's VmHWM in bytes, 0 if unknown.
func peakRSS() int64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range bytes.Split(status, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("VmHWM:")); ok {
			kb, _ := strconv.ParseInt(string(bytes.TrimSuffix(bytes.TrimSpace(v), []byte(" kB"))), 10, 64)
			return kb << 10
		}
	}
	return 0
}
