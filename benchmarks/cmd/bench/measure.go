package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// loadgenReport mirrors the JSON that loadgen prints.
type loadgenReport struct {
	Sent       uint64  `json:"sent"`
	Received   uint64  `json:"received"`
	Lost       int64   `json:"lost"`
	Misrouted  uint64  `json:"misrouted"`
	Malformed  uint64  `json:"malformed"`
	SendErrors uint64  `json:"send_errors"`
	DurationS  float64 `json:"duration_s"`
	OfferedPPS float64 `json:"offered_pps"`
	RTTP50us   float64 `json:"rtt_p50_us"`
	RTTP99us   float64 `json:"rtt_p99_us"`
	RTTP999us  float64 `json:"rtt_p999_us"`
}

// run is one measured run.
type run struct {
	Target       float64       `json:"target_pps,omitempty"` // the rate asked of the generator (0: its maximum)
	Gen          loadgenReport `json:"loadgen"`
	Delivered    uint64        `json:"delivered"`     // datagrams served (see README)
	DeliveredPPS float64       `json:"delivered_pps"` // Delivered / sending time
	LossPct      float64       `json:"loss_pct"`      // (sent - delivered) / sent
	ServerCPUs   float64       `json:"server_cpu_s"`  // server process tree, user+system (tick-sampled)
	CPUPerDgram  float64       `json:"cpu_us_per_dgram"`
	CoreCPUs     float64       `json:"core_cpu_s"`            // CPU 1 busy: elapsed − idle − iowait − steal
	CoreSampled  float64       `json:"core_sampled_s"`        // CPU 1's tick-sampled busy fields
	CoreSteal    float64       `json:"core_steal_s"`          // CPU 1 steal
	SpinnerCPUs  float64       `json:"spinner_cpu_s"`         // capacity the spinner lost (cross-check runs)
	CorePerDgram float64       `json:"core_us_per_dgram"`     // CoreCPUs per delivered datagram (or SpinnerCPUs in cross-checks)
	RcvbufErrors uint64        `json:"rcvbuf_errors"`         // delta in the server namespace
	BacklogDrops []uint64      `json:"backlog_drops"`         // per CPU, /proc/net/softnet_stat delta
	Noisy        bool          `json:"noisy"`                 // other load was on the CPUs before the run
	CrossCheck   bool          `json:"cross_check,omitempty"` // measured with the spinner
}

// result is every run of one configuration against one peer.
type result struct {
	Config     config      `json:"config"`
	Peer       string      `json:"peer"`
	Runs       []run       `json:"runs"`
	Err        string      `json:"error,omitempty"`
	Search     *searchRec  `json:"search,omitempty"`      // at the maximum: the throughput search
	CrossCheck *run        `json:"cross_check,omitempty"` // at a fixed rate: the spinner's run
	Profile    *profileRec `json:"profile,omitempty"`     // at a fixed rate: where CPU 1's time went
	Kernel     *kernelRec  `json:"kernel,omitempty"`      // udpmux's fast path: what the kernel forwarded
}

// searchRec is the RFC 2544 throughput search of one peer and shape.
type searchRec struct {
	MaxPps     float64 `json:"max_pps"` // the generator's maximum: median offered rate of the runs at it
	Lo         float64 `json:"lo_pps"`  // the interval searched: a rate that held (or 0) …
	Hi         float64 `json:"hi_pps"`  // … and the maximum, which did not
	Steps      int     `json:"steps"`
	Resolution float64 `json:"resolution_pps"` // (Hi − Lo) / 2^Steps
	// Throughput is the highest rate that held, and AtMax says the
	// generator's maximum itself held (no search was needed).
	Throughput float64 `json:"throughput_pps"`
	AtMax      bool    `json:"at_max"`
	Trials     []trial `json:"trials"`
}

// trial is one rate of a search and the runs made at it.
type trial struct {
	Rate  float64 `json:"rate"`
	Holds bool    `json:"holds"`
	Runs  []run   `json:"runs"`
}

// harness holds the state of a whole benchmark session.
type harness struct {
	opts    options
	started time.Time
	rec     record
	groOn   string // the server-side veth with GRO on, "" for none
	// gens, sent and received count the generator's runs of the session,
	// and the datagrams they sent and got back (kernel.go).
	gens, sent, received uint64
}

// record is everything a session measured, saved as results.json so that
// RESULTS.md can be written again from it (bench -report-only).
type record struct {
	Machine     [][2]string     `json:"machine"`
	Runs        int             `json:"runs"`
	Duration    time.Duration   `json:"duration_ns"`
	Rate        float64         `json:"rate"`            // the first fixed rate (older sessions: the only one)
	Rates       []float64       `json:"rates,omitempty"` // every fixed rate
	SearchSteps int             `json:"search_steps,omitempty"`
	CoreCPU     string          `json:"core_cpu,omitempty"` // how CPU 1's busy time was measured (coreCPUMethod)
	Quick       bool            `json:"quick"`
	Only        string          `json:"only,omitempty"` // the parts measured, when not all
	FTCount     int             `json:"flowtable_count"`
	Noisy       int             `json:"noisy_runs"` // runs that started while other load was on the CPUs
	Results     []*result       `json:"results"`
	Flowtable   flowtableResult `json:"flowtable"`
	GRO         string          `json:"gro,omitempty"` // what the lab's veths said about GRO
	Elapsed     time.Duration   `json:"elapsed_ns,omitempty"`
}

// coreCPUMethod names the way this harness measures CPU 1 (cpu.go); older
// sessions summed the tick-sampled fields and left the field empty.
const coreCPUMethod = "elapsed-idle-iowait-steal"

// runScenarios measures every scenario of the session that -only selects.
func (h *harness) runScenarios() {
	for _, sc := range h.scenarios() {
		if !h.opts.includes(sc.part) {
			continue
		}
		var backends *process
		if sc.kind == kindProxy {
			var err error
			if backends, err = h.startBackends(); err != nil {
				h.logf("%s backends: %v", sc.series, err)
				h.failAll(sc, "backends did not start: "+err.Error())
				continue
			}
		}
		for _, peer := range sc.peers {
			h.runPeer(sc, peer)
		}
		if err := h.setGRO(""); err != nil {
			h.logf("%v", err)
		}
		if backends != nil {
			backends.stop()
		}
	}
}

// failAll records err for every peer and configuration of sc.
func (h *harness) failAll(sc scenario, err string) {
	for _, peer := range sc.peers {
		for _, c := range sc.configs {
			h.rec.Results = append(h.rec.Results, &result{Config: c, Peer: peer, Err: err})
		}
	}
}

// runPeer starts one server and runs every configuration of sc against it.
func (h *harness) runPeer(sc scenario, peer string) {
	srv, err := h.startServer(sc, peer)
	if err != nil {
		h.logf("%s %s: %v", sc.kind, peer, err)
		for _, c := range sc.configs {
			h.rec.Results = append(h.rec.Results, &result{Config: c, Peer: peer, Err: err.Error()})
		}
		return
	}
	defer srv.stop()
	warm := map[int]bool{}
	crossChecked := false
	var mark *kernelMark        // the fast path's counters, last read
	held := map[shape]float64{} // per shape, the highest fixed rate that held
	for _, c := range sc.configs {
		res := &result{Config: c, Peer: peer}
		h.rec.Results = append(h.rec.Results, res)
		start := time.Now()
		if err := h.setGRO(c.GRO); err != nil {
			res.Err = err.Error()
			h.logResult(res, 0)
			continue
		}
		if peer == "connected" && c.Flows > connectedLimit() {
			res.Err = fmt.Sprintf("not measured: %d sessions need a descriptor each, and RLIMIT_NOFILE's hard limit here leaves room for %d", c.Flows, connectedLimit())
			h.logResult(res, 0)
			continue
		}
		if !warm[c.Flows] {
			// Let the server see every flow once before measuring, so that
			// runs measure established sessions, not their creation: only
			// the warm-ups send the tunnel protocols' hellos (each flow's
			// first message, which makes its session), and every later
			// run's flows, from the same source addresses and ports, find
			// the sessions they made.
			warm[c.Flows] = true
			if _, err := h.loadgen(srv, c, c.Rate, warmup(c), true); err != nil {
				res.Err = "warm-up: " + err.Error()
				h.logResult(res, time.Since(start))
				continue
			}
			if err := h.settle(srv, c); err != nil {
				res.Err = "warm-up: " + err.Error()
				h.logResult(res, time.Since(start))
				continue
			}
		}
		var from *kernelMark
		if srv.status != nil {
			var err error
			if from, err = h.kernelMark(srv, mark); err != nil {
				res.Kernel = &kernelRec{Err: err.Error()}
			}
			mark = from
		}
		res.Runs, res.Err = h.runsAt(srv, c, c.Rate)
		sh := shape{c.Flows, c.Size}
		switch {
		case res.Err != "":
		case c.Rate > 0:
			if decided, holds := verdict(losses(res.Runs), len(res.Runs)); decided && holds {
				held[sh] = max(held[sh], c.Rate)
			}
			if !crossChecked {
				crossChecked = true
				if sc.crossCk {
					res.CrossCheck = h.crossCheck(srv, c)
				}
				if sc.profiled[peer] {
					res.Profile = h.profile(srv, c, peer)
				}
			}
		case sc.searched[peer]:
			res.Search = h.search(srv, c, res.Runs, held[sh])
		}
		if from != nil {
			res.Kernel = h.kernelSince(srv, from, &mark)
		}
		h.logResult(res, time.Since(start))
	}
}

// runsAt makes -runs runs of c at rate (0: the maximum) and returns them,
// or why they could not be made.
func (h *harness) runsAt(srv *server, c config, rate float64) ([]run, string) {
	var runs []run
	for range h.opts.runs {
		r, err := h.measure(srv, c, rate, nil)
		if err != nil {
			return runs, err.Error()
		}
		runs = append(runs, r)
	}
	return runs, ""
}

// losses returns each run's loss.
func losses(runs []run) []float64 {
	out := make([]float64, len(runs))
	for i, r := range runs {
		out[i] = r.LossPct
	}
	return out
}

// search finds the throughput of a server at c's shape (RFC 2544, see
// search.go), given the runs at the generator's maximum and a fixed rate
// known to hold (0 if none did).
func (h *harness) search(srv *server, c config, atMax []run, lo float64) *searchRec {
	s := &searchRec{MaxPps: median(atMax, func(r run) float64 { return r.Gen.OfferedPPS })}
	if decided, holds := verdict(losses(atMax), len(atMax)); decided && holds {
		s.Throughput, s.AtMax = s.MaxPps, true
		return s
	}
	s.Lo, s.Hi, s.Steps = min(lo, s.MaxPps), s.MaxPps, h.opts.steps
	s.Resolution = (s.Hi - s.Lo) / float64(int(1)<<s.Steps)
	s.Throughput, _ = bisect(s.Lo, s.Hi, s.Steps, func(rate float64) bool {
		t := trial{Rate: rate}
		for len(t.Runs) < h.opts.runs {
			r, err := h.measure(srv, c, rate, nil)
			if err != nil {
				h.logf("search %s at %.0f/s: %v", c, rate, err)
				break
			}
			t.Runs = append(t.Runs, r)
			if decided, holds := verdict(losses(t.Runs), h.opts.runs); decided {
				t.Holds = holds
				break
			}
		}
		s.Trials = append(s.Trials, t)
		return t.Holds
	})
	return s
}

// crossCheck makes one run of c with the SCHED_IDLE spinner on the server
// core, calibrated just before on the idle core, and returns it (nil if the
// spinner could not run).
func (h *harness) crossCheck(srv *server, c config) *run {
	sp, err := h.startSpinner()
	if err != nil {
		h.logf("cross-check: %v", err)
		return nil
	}
	defer sp.stop()
	time.Sleep(100 * time.Millisecond)
	idleRate := sp.rateOver(spinnerCalibration)
	r, err := h.measure(srv, c, c.Rate, &crossChecker{sp: sp, idleRate: idleRate})
	if err != nil {
		h.logf("cross-check %s: %v", c, err)
		return nil
	}
	return &r
}

// logResult prints a configuration's figures as progress.
func (h *harness) logResult(res *result, took time.Duration) {
	if res.Err != "" {
		h.logf("%-9s %-40s %v", res.Peer, res.Config, res.Err)
		return
	}
	msg := fmt.Sprintf("delivered %8.0f/s loss %6.3f%% cpu1 %5.2fµs/dgram", median(res.Runs, mDelivered.get),
		median(res.Runs, mLoss.get), median(res.Runs, mCore.get))
	if res.CrossCheck != nil {
		msg += fmt.Sprintf(" (spinner %5.2f)", res.CrossCheck.CorePerDgram)
	}
	if s := res.Search; s != nil {
		msg += fmt.Sprintf(" throughput %8.0f/s (%d trials)", s.Throughput, len(s.Trials))
	}
	if k := res.Kernel; k != nil && k.Err == "" {
		msg += fmt.Sprintf(" kernel: %d sessions, %.1f%% of sent", k.Offloaded, k.rxShare())
	} else if k != nil {
		msg += " kernel: " + k.Err
	}
	h.logf("%-9s %-40s %s [%v]", res.Peer, res.Config, msg, took.Round(100*time.Millisecond))
}

// settle warms the server up again until it says its sessions are ready
// (server.settled: udpmux's fast path offloads a session after the
// backend's fourth datagram, at most 2000 a second), at most 20 times.
func (h *harness) settle(srv *server, c config) error {
	if srv.settled == nil {
		return nil
	}
	for range 20 {
		ok, err := srv.settled(c.Flows)
		if err != nil || ok {
			return err
		}
		if _, err := h.loadgen(srv, c, c.Rate, warmup(c), true); err != nil {
			return err
		}
	}
	return fmt.Errorf("%d flows not all settled after 20 warm-ups", c.Flows)
}

// warmup returns how long to send before measuring c: long enough for every
// flow to send at least once, at least a second, at most three. Every run
// of the generator starts again at the first flow, and at a fixed rate a
// flow's turn sends up to a burst: a warm-up shorter than flows × burst ÷
// rate leaves the last flows out of every warm-up, and a fast path that
// needs a session's backend to answer a few times never offloads them.
func warmup(c config) time.Duration {
	d := time.Duration(c.Flows) * 20 * time.Microsecond // the generator's maximum is about 100-300k/s
	if c.Rate > 0 {
		d = time.Duration(float64(c.Flows*max(c.Burst, 1)) / c.Rate * float64(time.Second))
	}
	return min(max(d, time.Second), 3*time.Second)
}

// crossChecker is a spinner on the server core and its rate on the idle
// core, for a cross-check run.
type crossChecker struct {
	sp       *spinner
	idleRate float64
}

// snapshot is every counter measure reads before and after a run.
type snapshot struct {
	tree    float64 // server process tree CPU, seconds
	cpu     cpuSample
	in      uint64 // InDatagrams in bs
	drops   uint64 // RcvbufErrors in bs
	backlog []uint64
	spun    uint64 // spinner iterations
}

// take reads the counters; sp may be nil.
func (h *harness) take(srv *server, sp *spinner) (snapshot, error) {
	var s snapshot
	var err error
	if srv.proc != nil {
		if s.tree, err = treeCPU(srv.proc.pid()); err != nil {
			return s, fmt.Errorf("server died during the run: %s", srv.proc.tail())
		}
	}
	if s.in, s.drops, err = udpCounters(nsServer); err != nil {
		return s, err
	}
	if s.backlog, err = backlogDrops(); err != nil {
		return s, err
	}
	if sp != nil {
		s.spun = sp.count()
	}
	// Last, so that the CPU window is the generator's run and little else.
	s.cpu, err = readCPU()
	return s, err
}

// measure runs the generator once at rate (0: its maximum) and reads the
// server's counters around it. With a cross-checker, CPU 1's cost per
// datagram is the spinner's measure instead of the idle time's. The
// generator sends no hellos: the warm-up's made the sessions.
func (h *harness) measure(srv *server, c config, rate float64, xc *crossChecker) (run, error) {
	r := run{Target: rate, CrossCheck: xc != nil}
	var spin *spinner
	if xc != nil {
		spin = xc.sp
	} else { // the spinner keeps CPU 1 busy on purpose
		r.Noisy = !h.waitQuiet()
	}
	stopFlood, err := h.flood(srv, c)
	if err != nil {
		return r, err
	}
	before, err := h.take(srv, spin)
	if err != nil {
		stopFlood()
		return r, err
	}
	gen, err := h.loadgen(srv, c, rate, h.opts.duration, false)
	stopFlood()
	if err != nil {
		return r, err
	}
	if err := srv.alive(); err != nil {
		return r, err
	}
	after, err := h.take(srv, spin)
	if err != nil {
		return r, err
	}
	for i := range after.backlog {
		r.BacklogDrops = append(r.BacklogDrops, after.backlog[i]-before.backlog[i])
	}
	r.Gen = gen
	r.RcvbufErrors = after.drops - before.drops
	if c.Kind == kindSink {
		r.Delivered = after.in - before.in // queued to the server's sockets: the sink reads them all
	} else {
		r.Delivered = gen.Received
	}
	r.DeliveredPPS = float64(r.Delivered) / gen.DurationS
	if gen.Sent > 0 {
		r.LossPct = 100 * (float64(gen.Sent) - float64(r.Delivered)) / float64(gen.Sent)
	}
	core := between(before.cpu, after.cpu, serverCPU)
	r.ServerCPUs = after.tree - before.tree
	r.CoreCPUs, r.CoreSampled, r.CoreSteal = core.Busy, core.Sampled, core.Steal
	perDgram := r.CoreCPUs
	if xc != nil {
		r.SpinnerCPUs = spinnerBusy(after.spun-before.spun, core.Elapsed, xc.idleRate)
		perDgram = r.SpinnerCPUs
	}
	if r.Delivered > 0 {
		r.CPUPerDgram = r.ServerCPUs * 1e6 / float64(r.Delivered)
		r.CorePerDgram = perDgram * 1e6 / float64(r.Delivered)
	}
	if r.Noisy {
		h.rec.Noisy++
	}
	return r, nil
}

// floodLead is how long the flood runs before the measured generator
// starts (its 20 000 sockets take a moment to open) and after it ends.
const floodLead = 500 * time.Millisecond

// flood starts c's flood of new sources (config.Flood): a second generator
// in sink mode on the same core, floodRate datagrams a second from
// c.Flood new flows (after the measured ones' source ports), from floodLead before the measured run to floodLead
// after. The returned stop waits for it. Without a flood it does nothing.
func (h *harness) flood(srv *server, c config) (stop func(), err error) {
	if c.Flood == 0 {
		return func() {}, nil
	}
	cmd := exec.Command("ip", "netns", "exec", nsClient, "taskset", "-c", cpuClient, h.binary("loadgen"),
		"-dst", srv.dst, "-src", clientSrcs, "-mode", kindSink, "-flows", strconv.Itoa(c.Flood), "-flow-base", strconv.Itoa(c.Flows), "-size", strconv.Itoa(c.Size),
		"-rate", strconv.Itoa(floodRate), "-burst", "1", "-duration", (h.opts.duration + 2*floodLead).String())
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("flood: %w", err)
	}
	time.Sleep(floodLead)
	return func() { cmd.Wait() }, nil
}

// loadgen runs the generator in bc on CPU 0 at rate for d and decodes its
// report. With hello, each flow of a tunnel protocol first sends the
// message that makes its session (a warm-up); without, only data, to the
// sessions an earlier warm-up made (a measured run).
func (h *harness) loadgen(srv *server, c config, rate float64, d time.Duration, hello bool) (loadgenReport, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("ip", h.loadgenArgs(srv.dst, c, rate, d, hello)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	var rep loadgenReport
	h.gens++ // even if it fails: it may have sent
	if err := cmd.Run(); err != nil {
		return rep, fmt.Errorf("loadgen: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		return rep, fmt.Errorf("loadgen output: %w", err)
	}
	if rep.DurationS <= 0 {
		return rep, errors.New("loadgen reported no sending time")
	}
	h.sent += rep.Sent
	h.received += rep.Received
	return rep, nil
}

// loadgenArgs returns the arguments of ip(8) that run the generator (see
// loadgen). Every run gives each flow the same source address and port
// (loadgen binds flow i to the i-th of -src's addresses × ports from its
// -port-base) and the same server, so a session a warm-up made is the one
// later runs' flows reach.
func (h *harness) loadgenArgs(dst string, c config, rate float64, d time.Duration, hello bool) []string {
	mode := kindEcho
	if c.Kind == kindSink {
		mode = kindSink
	}
	args := []string{"netns", "exec", nsClient, "taskset", "-c", cpuClient, h.binary("loadgen"),
		"-dst", dst, "-src", clientSrcs, "-mode", mode,
		"-flows", strconv.Itoa(c.Flows), "-size", strconv.Itoa(c.Size),
		"-rate", strconv.FormatFloat(rate, 'f', 0, 64), "-burst", strconv.Itoa(c.Burst), "-duration", d.String()}
	if c.Proto != "" {
		args = append(args, "-proto", c.Proto)
		if !hello {
			args = append(args, "-hello=false")
		}
	}
	return args
}

// waitQuiet waits (up to 10 s) until both CPUs are nearly idle, so that runs
// do not start while other work on the machine is busy; it reports whether
// they became quiet.
func (h *harness) waitQuiet() bool {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		busy, err := cpuBusy(200 * time.Millisecond)
		if err == nil && !slices.ContainsFunc(busy, func(b float64) bool { return b > 0.15 }) {
			return true
		}
	}
	return false
}

// median returns the median of f over runs (the mean of the middle two for
// an even count), or 0 for none.
func median(runs []run, f func(run) float64) float64 {
	if len(runs) == 0 {
		return 0
	}
	v := make([]float64, len(runs))
	for i, r := range runs {
		v[i] = f(r)
	}
	slices.Sort(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}

// span returns the minimum and maximum of f over runs.
func span(runs []run, f func(run) float64) (lo, hi float64) {
	for i, r := range runs {
		v := f(r)
		if i == 0 || v < lo {
			lo = v
		}
		if i == 0 || v > hi {
			hi = v
		}
	}
	return lo, hi
}
