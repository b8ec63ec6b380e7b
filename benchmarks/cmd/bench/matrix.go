package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Lab addresses (see lab.sh).
const (
	nsClient   = "bc"
	nsServer   = "bs"
	nsBackend  = "bb"
	cpuClient  = "0"
	cpuServer  = "1"
	serverPort = 9000
	serverAddr = "198.18.0.2:9000"
	clientSrcs = "198.18.0.1,198.18.0.11,198.18.0.12,198.18.0.13,198.18.0.14"
)

// sockBuf is the receive and send buffer size, in bytes, that every server
// under test asks for (udpmux's default), so that none wins by buffering more.
const sockBuf = 4 << 20

// backendAddrs are the bare echo servers behind the proxies.
var backendAddrs = []string{"198.19.0.2:7000", "198.19.0.2:7001"}

// Scenario kinds.
const (
	kindSink  = "sink"  // the server reads and drops
	kindEcho  = "echo"  // the server returns every datagram
	kindProxy = "proxy" // the server relays to echo backends and back
)

// peersOf lists, per scenario kind, the servers measured; the first is the
// reference that ratios are taken against.
var peersOf = map[string][]string{
	kindSink:  {"bare", "gonet", "gnet", "udpmux"},
	kindEcho:  {"bare", "gonet", "gnet", "udpmux"},
	kindProxy: {"nginx", "udpmux"},
}

// config is one point of the matrix.
type config struct {
	Kind   string  `json:"kind"`
	Flows  int     `json:"flows"`
	Size   int     `json:"size"`
	Rate   float64 `json:"rate"`   // 0 = the generator's maximum
	Burst  int     `json:"burst"`  // datagrams per flow per sendmmsg
	Series string  `json:"series"` // "matrix" or "growth"
}

func (c config) String() string {
	rate := "max"
	if c.Rate > 0 {
		rate = fmt.Sprintf("%gk/s", c.Rate/1000)
	}
	return fmt.Sprintf("%s %s %d flows %dB %s", c.Series, c.Kind, c.Flows, c.Size, rate)
}

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
	Gen          loadgenReport `json:"loadgen"`
	Delivered    uint64        `json:"delivered"`     // datagrams served (see README)
	DeliveredPPS float64       `json:"delivered_pps"` // Delivered / sending time
	LossPct      float64       `json:"loss_pct"`      // (sent - delivered) / sent
	ServerCPUs   float64       `json:"server_cpu_s"`  // server process tree, user+system
	CPUPerDgram  float64       `json:"cpu_us_per_dgram"`
	CoreCPUs     float64       `json:"core_cpu_s"` // everything on CPU 1, softirq included
	CorePerDgram float64       `json:"core_us_per_dgram"`
	RcvbufErrors uint64        `json:"rcvbuf_errors"` // delta in the server namespace
	BacklogDrops []uint64      `json:"backlog_drops"` // per CPU, /proc/net/softnet_stat delta
	Noisy        bool          `json:"noisy"`         // other load was on the CPUs before the run
}

// result is every run of one configuration against one peer.
type result struct {
	Config config `json:"config"`
	Peer   string `json:"peer"`
	Runs   []run  `json:"runs"`
	Err    string `json:"error,omitempty"`
}

// harness holds the state of a whole benchmark session.
type harness struct {
	opts    options
	started time.Time
	rec     record
}

// record is everything a session measured, saved as results.json so that
// RESULTS.md can be written again from it (bench -report-only).
type record struct {
	Machine   [][2]string     `json:"machine"`
	Runs      int             `json:"runs"`
	Duration  time.Duration   `json:"duration_ns"`
	Rate      float64         `json:"rate"`
	Quick     bool            `json:"quick"`
	Only      string          `json:"only,omitempty"` // the parts measured, when not all
	FTCount   int             `json:"flowtable_count"`
	Noisy     int             `json:"noisy_runs"` // runs that started while other load was on the CPUs
	Results   []*result       `json:"results"`
	Flowtable flowtableResult `json:"flowtable"`
}

// matrix returns the configurations of one scenario kind.
func (h *harness) matrix(kind string) []config {
	flows, sizes, rates := []int{256, 10000}, []int{64, 1400}, []float64{0, h.opts.rate}
	if h.opts.quick {
		sizes = []int{64}
	}
	var out []config
	for _, f := range flows {
		for _, s := range sizes {
			for _, r := range rates {
				out = append(out, config{Kind: kind, Flows: f, Size: s, Rate: r, Burst: 4, Series: "matrix"})
			}
		}
	}
	if kind == kindEcho && !h.opts.quick {
		// How cost grows with concurrent flows: at the fixed rate, one
		// datagram per flow per send, so that at 100k flows every flow
		// still sends once in each run.
		for _, f := range growthFlows {
			out = append(out, config{Kind: kind, Flows: f, Size: 64, Rate: h.opts.rate, Burst: 1, Series: "growth"})
		}
	}
	return out
}

// growthFlows are the flow counts of the "how cost grows" series.
var growthFlows = []int{256, 10000, 100000}

// runMatrix measures every scenario kind against every peer.
func (h *harness) runMatrix() {
	for _, kind := range []string{kindSink, kindEcho, kindProxy} {
		if !h.opts.includes(kind) {
			continue
		}
		var backends *process
		if kind == kindProxy {
			var err error
			if backends, err = h.startBackends(); err != nil {
				h.logf("proxy backends: %v", err)
				for _, peer := range peersOf[kind] {
					for _, c := range h.matrix(kind) {
						h.rec.Results = append(h.rec.Results, &result{Config: c, Peer: peer, Err: "backends did not start: " + err.Error()})
					}
				}
				continue
			}
		}
		for _, peer := range peersOf[kind] {
			h.runPeer(kind, peer)
		}
		if backends != nil {
			backends.stop()
		}
	}
}

// runPeer starts one server and runs every configuration of kind against it.
func (h *harness) runPeer(kind, peer string) {
	cfgs := h.matrix(kind)
	srv, err := h.startServer(kind, peer)
	if err != nil {
		h.logf("%s %s: %v", kind, peer, err)
		for _, c := range cfgs {
			h.rec.Results = append(h.rec.Results, &result{Config: c, Peer: peer, Err: err.Error()})
		}
		return
	}
	defer srv.stop()
	warm := map[int]bool{}
	for _, c := range cfgs {
		res := &result{Config: c, Peer: peer}
		h.rec.Results = append(h.rec.Results, res)
		if !warm[c.Flows] {
			// Let the server see every flow once before measuring, so that
			// runs measure established sessions, not their creation.
			warm[c.Flows] = true
			if _, err := h.loadgen(c, warmup(c)); err != nil {
				res.Err = "warm-up: " + err.Error()
				continue
			}
		}
		for i := 0; i < h.opts.runs && res.Err == ""; i++ {
			r, err := h.measure(srv, c)
			if err != nil {
				res.Err = err.Error()
				break
			}
			res.Runs = append(res.Runs, r)
		}
		if res.Err != "" {
			h.logf("%-8s %-34s %v", peer, c, res.Err)
			continue
		}
		m := median(res.Runs, func(r run) float64 { return r.DeliveredPPS })
		h.logf("%-8s %-34s delivered %8.0f/s loss %5.2f%% cpu %5.2fµs/dgram", peer, c, m,
			median(res.Runs, func(r run) float64 { return r.LossPct }),
			median(res.Runs, func(r run) float64 { return r.CPUPerDgram }))
	}
}

// warmup returns how long to send before measuring c: long enough for every
// flow to send at least once, at least a second, at most three.
func warmup(c config) time.Duration {
	d := time.Duration(c.Flows) * 20 * time.Microsecond // the generator's maximum is about 100-300k/s
	if c.Rate > 0 {
		d = time.Duration(float64(c.Flows) / c.Rate * float64(time.Second))
	}
	return min(max(d, time.Second), 3*time.Second)
}

// startServer launches the server of peer for a scenario kind in bs on
// CPU 1 and waits until it listens.
func (h *harness) startServer(kind, peer string) (*process, error) {
	var args []string
	switch peer {
	case "bare", "gonet", "gnet":
		args = []string{h.binary("peer"), "-kind", peer, "-mode", kind, "-addr", serverAddr,
			"-rcvbuf", strconv.Itoa(sockBuf), "-sndbuf", strconv.Itoa(sockBuf)}
	case "nginx":
		conf, err := h.nginxConf()
		if err != nil {
			return nil, err
		}
		args = []string{"nginx", "-p", filepath.Dir(conf), "-c", conf}
	case "udpmux":
		bin := h.binary("udpmux")
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("udpmux %s: not available (the daemon was not built)", kind)
		}
		conf, err := h.udpmuxConf(kind)
		if err != nil {
			return nil, err
		}
		args = []string{bin, "-c", conf}
	default:
		return nil, fmt.Errorf("unknown peer %q", peer)
	}
	p, err := spawn(h.opts.work, kind+"-"+peer, nsServer, cpuServer, args...)
	if err != nil {
		return nil, err
	}
	if err := waitUDP(p, nsServer, serverPort, 5*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("%s %s: not available (%v)", peer, kind, err)
	}
	return p, nil
}

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

// udpmuxConf writes the daemon's configuration for a scenario kind.
func (h *harness) udpmuxConf(kind string) (string, error) {
	handler := map[string]string{kindSink: "discard", kindEcho: "echo", kindProxy: "proxy"}[kind]
	var b strings.Builder
	fmt.Fprintf(&b, "workers: 1\nbatch: 64\nsocket:\n  recv_buffer: %d\n  send_buffer: %d\n", sockBuf, sockBuf)
	fmt.Fprintf(&b, "listeners:\n  - name: bench\n")
	fmt.Fprintf(&b, "    address: %q\n    handler: %s\n    dissector: flow\n    idle_timeout: 60s\n", serverAddr, handler)
	if kind == kindProxy {
		fmt.Fprintf(&b, "    backends: [%q, %q]\n    balance: maglev\n", backendAddrs[0], backendAddrs[1])
	}
	fmt.Fprintf(&b, "sessions:\n  max: 1000000\n")
	path := filepath.Join(h.opts.work, "udpmux-"+kind+".yaml")
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

// measure runs the generator once and reads the server's counters around it.
func (h *harness) measure(srv *process, c config) (run, error) {
	var r run
	r.Noisy = !h.waitQuiet()
	cpu0, err := treeCPU(srv.pid())
	if err != nil {
		return r, err
	}
	core0, _, err := cpuTimes()
	if err != nil {
		return r, err
	}
	in0, drops0, err := udpCounters(nsServer)
	if err != nil {
		return r, err
	}
	backlog0, err := backlogDrops()
	if err != nil {
		return r, err
	}
	gen, err := h.loadgen(c, h.opts.duration)
	if err != nil {
		return r, err
	}
	cpu1, err := treeCPU(srv.pid())
	if err != nil {
		return r, fmt.Errorf("server died during the run: %s", srv.tail())
	}
	core1, _, err := cpuTimes()
	if err != nil {
		return r, err
	}
	in1, drops1, err := udpCounters(nsServer)
	if err != nil {
		return r, err
	}
	backlog1, err := backlogDrops()
	if err != nil {
		return r, err
	}
	for i := range backlog1 {
		r.BacklogDrops = append(r.BacklogDrops, backlog1[i]-backlog0[i])
	}
	r.Gen = gen
	r.RcvbufErrors = drops1 - drops0
	if c.Kind == kindSink {
		r.Delivered = in1 - in0 // queued to the server's sockets: the sink reads them all
	} else {
		r.Delivered = gen.Received
	}
	r.DeliveredPPS = float64(r.Delivered) / gen.DurationS
	if gen.Sent > 0 {
		r.LossPct = 100 * (float64(gen.Sent) - float64(r.Delivered)) / float64(gen.Sent)
	}
	r.ServerCPUs = cpu1 - cpu0
	r.CoreCPUs = float64(core1[1]-core0[1]) / clockTicks
	if r.Delivered > 0 {
		r.CPUPerDgram = r.ServerCPUs * 1e6 / float64(r.Delivered)
		r.CorePerDgram = r.CoreCPUs * 1e6 / float64(r.Delivered)
	}
	if r.Noisy {
		h.rec.Noisy++
	}
	return r, nil
}

// loadgen runs the generator in bc on CPU 0 for d and decodes its report.
func (h *harness) loadgen(c config, d time.Duration) (loadgenReport, error) {
	mode := kindEcho
	if c.Kind == kindSink {
		mode = kindSink
	}
	args := []string{"netns", "exec", nsClient, "taskset", "-c", cpuClient, h.binary("loadgen"),
		"-dst", serverAddr, "-src", clientSrcs, "-mode", mode,
		"-flows", strconv.Itoa(c.Flows), "-size", strconv.Itoa(c.Size),
		"-rate", strconv.FormatFloat(c.Rate, 'f', -1, 64), "-burst", strconv.Itoa(c.Burst), "-duration", d.String()}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	var rep loadgenReport
	if err := cmd.Run(); err != nil {
		return rep, fmt.Errorf("loadgen: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		return rep, fmt.Errorf("loadgen output: %w", err)
	}
	if rep.DurationS <= 0 {
		return rep, errors.New("loadgen reported no sending time")
	}
	return rep, nil
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
