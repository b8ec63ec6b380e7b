package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// goal thresholds from the project's mission.
const (
	goalCPURatio   = 1.25 // udpmux CPU per datagram / the bare loop's
	goalLossPct    = 1.0  // at the generator's maximum
	goalProxyRatio = 1.5  // udpmux proxy delivered rate / nginx's
	goalLookupNs   = 50.0 // flow-table lookup at 1M sessions
)

// metric is a figure of a run, with how to print it.
type metric struct {
	title string
	get   func(run) float64
	fmt   string
}

var (
	mDelivered = metric{"delivered /s", func(r run) float64 { return r.DeliveredPPS }, "%.0f"}
	mLoss      = metric{"loss %", func(r run) float64 { return r.LossPct }, "%.2f"}
	mCPU       = metric{"server CPU µs/dgram", func(r run) float64 { return r.CPUPerDgram }, "%.2f"}
	mCore      = metric{"CPU 1 µs/dgram", func(r run) float64 { return r.CorePerDgram }, "%.2f"}
	mP99       = metric{"p99 RTT µs", func(r run) float64 { return r.Gen.RTTP99us }, "%.0f"}
	mDrops     = metric{"kernel drops", func(r run) float64 { return float64(r.RcvbufErrors) }, "%.0f"}
	mBacklog   = metric{"CPU 1 backlog drops", func(r run) float64 {
		if len(r.BacklogDrops) < 2 {
			return 0
		}
		return float64(r.BacklogDrops[1])
	}, "%.0f"}
	mOffered = metric{"offered /s", func(r run) float64 { return r.Gen.OfferedPPS }, "%.0f"}
)

// cell prints a metric as "median (min–max)", or the median alone for one run.
func cell(res *result, m metric) string {
	med := median(res.Runs, m.get)
	if len(res.Runs) == 1 {
		return fmt.Sprintf(m.fmt, med)
	}
	lo, hi := span(res.Runs, m.get)
	return fmt.Sprintf(m.fmt+" ("+m.fmt+"–"+m.fmt+")", med, lo, hi)
}

// find returns the result of a peer at a configuration, or nil.
func (h *harness) find(c config, peer string) *result {
	for _, r := range h.rec.Results {
		if r.Config == c && r.Peer == peer {
			return r
		}
	}
	return nil
}

// ok reports whether a result has figures.
func ok(r *result) bool { return r != nil && r.Err == "" && len(r.Runs) > 0 }

// ratio prints median(a)/median(b) of a metric, or "–".
func ratio(a, b *result, m metric) string {
	if !ok(a) || !ok(b) {
		return "–"
	}
	den := median(b.Runs, m.get)
	if den == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", median(a.Runs, m.get)/den)
}

// writeResults writes RESULTS.md.
func writeResults(h *harness) error {
	if h.opts.only == nil {
		h.opts.only, _ = parseOnly(h.rec.Only) // a report written again from results.json
	}
	var b strings.Builder
	o := h.opts
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# udpmux benchmark results\n\n")
	w("Written by `benchmarks/run.sh` (see README.md for what each scenario measures). ")
	w("Every figure is the median of %d run(s) of %v each, with min–max in parentheses; ", o.runs, o.duration)
	w("ratios are between medians measured in this same session. Absolute numbers drift between sessions and machines: compare ratios.\n\n")
	if o.quick {
		w("**QUICK=1 subset**: 64-byte datagrams only, no 100k-flow series, one flow-table benchmark count.\n\n")
	}
	if h.rec.Only != "" {
		w("**Partial session** (`ONLY=%s`): the other parts were not run.\n\n", h.rec.Only)
	}
	w("## Machine\n\n| | |\n|---|---|\n")
	for _, kv := range h.rec.Machine {
		w("| %s | %s |\n", kv[0], kv[1])
	}
	w("\nLab: namespaces bc (client, load generator on CPU 0), bs (server under test on CPU 1), bb (proxy backends on CPU 0), ")
	w("joined by veth pairs, receive processing steered with RPS (client and backend rx on CPU 0, server rx on CPU 1). ")
	w("Fixed-rate runs offer %.0f datagrams/s; \"max\" runs offer what one generator core can send.\n\n", o.rate)
	if h.rec.Noisy > 0 {
		w("**Warning:** %d run(s) started while other work kept a CPU more than 15 %% busy for 10 s; their figures are less reliable (see results.json, \"noisy\").\n\n", h.rec.Noisy)
	}

	h.writeGoals(w)

	sections := []struct{ kind, title, about string }{
		{kindSink, "Sink", "The server reads every datagram and drops it. Delivered = datagrams the kernel queued to the server's socket (InDatagrams in bs); server CPU per datagram is over those."},
		{kindEcho, "Echo", "The server returns every datagram to its sender. Delivered = replies back at the generator, on the right flow."},
		{kindProxy, "Proxy", "Client → proxy in bs → two bare echo backends in bb (CPU 0) → proxy → client. Delivered = replies back at the generator."},
	}
	for _, s := range sections {
		if !o.includes(s.kind) {
			continue
		}
		w("## %s\n\n%s\n\n", s.title, s.about)
		h.writeKind(w, s.kind)
	}

	if o.includes(kindEcho) {
		h.writeGrowth(w)
	}
	if o.includes(partFlowtable) {
		h.writeFlowtable(w)
	}
	return os.WriteFile(o.out, []byte(b.String()), 0o644)
}

// writeKind writes the table of one scenario kind.
func (h *harness) writeKind(w func(string, ...any), kind string) {
	ref := peersOf[kind][0]
	w("| flows | bytes | rate | peer | offered /s | %s | %s | %s | %s | %s | %s | %s | delivered ÷ %s | CPU ÷ %s |\n",
		mDelivered.title, mLoss.title, mCPU.title, mCore.title, mP99.title, mDrops.title, mBacklog.title, ref, ref)
	w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range h.matrix(kind) {
		if c.Series != "matrix" {
			continue
		}
		rate := "max"
		if c.Rate > 0 {
			rate = fmt.Sprintf("%.0f", c.Rate)
		}
		refRes := h.find(c, ref)
		for _, peer := range peersOf[kind] {
			r := h.find(c, peer)
			w("| %d | %d | %s | %s |", c.Flows, c.Size, rate, peer)
			if !ok(r) {
				msg := "not run"
				if r != nil {
					msg = short(r.Err)
				}
				w(" %s | | | | | | | | | |\n", msg)
				continue
			}
			p99 := cell(r, mP99)
			if kind == kindSink {
				p99 = "–"
			}
			w(" %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", cell(r, mOffered), cell(r, mDelivered), cell(r, mLoss),
				cell(r, mCPU), cell(r, mCore), p99, cell(r, mDrops), cell(r, mBacklog), ratio(r, refRes, mDelivered), ratio(r, refRes, mCPU))
		}
	}
	w("\n")
}

// short shortens an error for a table cell.
func short(s string) string {
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

// writeGoals writes the goals table with a status per goal.
func (h *harness) writeGoals(w func(string, ...any)) {
	w("## Goals\n\n| goal | measured | status |\n|---|---|---|\n")
	for _, kind := range []string{kindSink, kindEcho} {
		if !h.opts.includes(kind) {
			continue
		}
		measured, status := h.oneCoreGoal(kind)
		w("| %s on one core: CPU per datagram ≤ %.2f× the bare loop's, loss < %.0f %% at the generator's maximum | %s | %s |\n",
			kind, goalCPURatio, goalLossPct, measured, status)
	}
	if h.opts.includes(kindProxy) {
		measured, status := h.proxyGoal()
		w("| proxy: delivered ≥ %.1f× nginx's, loss < %.0f %% at the generator's maximum | %s | %s |\n", goalProxyRatio, goalLossPct, measured, status)
	}
	if h.opts.includes(partFlowtable) {
		h.writeFlowtableGoal(w)
	}
	w("\n")
}

// writeFlowtableGoal writes the flow-table goal's row.
func (h *harness) writeFlowtableGoal(w func(string, ...any)) {
	ft := h.rec.Flowtable
	const ftGoal = "flow table: lookup < 50 ns at 1M sessions, 0 allocations"
	switch {
	case ft.Err != "":
		w("| %s | %s | not measured |\n", ftGoal, short(ft.Err))
	case len(ft.Lookups) == 0:
		w("| %s | no Lookup…/1M benchmark in ./flowtable | not measured |\n", ftGoal)
	default:
		// Every lookup benchmark at 1M is shown; the goal is met if one
		// way of looking up (single or batched) meets it.
		var parts []string
		st := "missed"
		for _, l := range ft.Lookups {
			parts = append(parts, fmt.Sprintf("%s: %.1f ns per lookup (%.1f–%.1f), %.0f allocs/op", l.Name, l.Ns, l.Min, l.Max, l.Allocs))
			if l.Ns < goalLookupNs && l.Allocs == 0 {
				st = "met"
			}
		}
		w("| %s | %s | %s |\n", ftGoal, strings.Join(parts, "; "), st)
	}
}

// oneCoreGoal evaluates the sink or echo goal over every max-rate matrix
// configuration: the worst CPU ratio and the worst loss decide.
func (h *harness) oneCoreGoal(kind string) (measured, status string) {
	var parts []string
	met, seen := true, false
	for _, c := range h.matrix(kind) {
		if c.Rate != 0 || c.Series != "matrix" {
			continue
		}
		u, ref := h.find(c, "udpmux"), h.find(c, "bare")
		if !ok(u) || !ok(ref) {
			continue
		}
		seen = true
		rt := median(u.Runs, mCPU.get) / median(ref.Runs, mCPU.get)
		loss := median(u.Runs, mLoss.get)
		if rt > goalCPURatio || loss >= goalLossPct {
			met = false
		}
		parts = append(parts, fmt.Sprintf("%d flows %dB: %.2f×, %.2f %% loss (%s; bare %.2f %%)", c.Flows, c.Size, rt, loss, lossFreeRuns(u), median(ref.Runs, mLoss.get)))
	}
	if !seen {
		return "udpmux not yet measured", "not yet measured"
	}
	if met {
		return strings.Join(parts, "; "), "met"
	}
	return strings.Join(parts, "; "), "missed"
}

// lossFreeRuns says in how many of r's runs loss stayed under the goal. At the
// generator's maximum a loaded server's runs tend to split into lossless ones
// and lossy ones rather than scatter around the median (benchmarks/README.md,
// Caveats), so the count says more than the median alone.
func lossFreeRuns(r *result) string {
	n := 0
	for _, run := range r.Runs {
		if run.LossPct < goalLossPct {
			n++
		}
	}
	return fmt.Sprintf("%d of %d runs < %.0f %%", n, len(r.Runs), goalLossPct)
}

// proxyGoal evaluates the proxy goal over every max-rate configuration.
func (h *harness) proxyGoal() (measured, status string) {
	var parts []string
	met, seen := true, false
	for _, c := range h.matrix(kindProxy) {
		if c.Rate != 0 {
			continue
		}
		u, ng := h.find(c, "udpmux"), h.find(c, "nginx")
		if !ok(u) || !ok(ng) {
			continue
		}
		seen = true
		rt := median(u.Runs, mDelivered.get) / median(ng.Runs, mDelivered.get)
		loss := median(u.Runs, mLoss.get)
		if rt < goalProxyRatio || loss >= goalLossPct {
			met = false
		}
		parts = append(parts, fmt.Sprintf("%d flows %dB: %.2f×, %.2f %% loss (%s)", c.Flows, c.Size, rt, loss, lossFreeRuns(u)))
	}
	if !seen {
		if u := h.find(h.matrix(kindProxy)[0], "udpmux"); u != nil && u.Err != "" {
			return "udpmux proxy: not available", "not yet measured"
		}
		return "not measured", "not yet measured"
	}
	if met {
		return strings.Join(parts, "; "), "met"
	}
	return strings.Join(parts, "; "), "missed"
}

// machine describes the host, the software and the source revision.
func machine(h *harness) [][2]string {
	o := h.opts
	cmd := func(name string, args ...string) string {
		c := exec.Command(name, args...)
		c.Dir = h.opts.mainDir
		out, err := c.CombinedOutput()
		if err != nil {
			return "unknown"
		}
		return strings.TrimSpace(string(out))
	}
	field := func(file, key string) string {
		b, _ := os.ReadFile(file)
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, found := strings.Cut(line, ":"); found && strings.TrimSpace(k) == key {
				return strings.TrimSpace(v)
			}
		}
		return "unknown"
	}
	commit := cmd("git", "rev-parse", "--short", "HEAD")
	if cmd("git", "status", "--porcelain", "--untracked-files=no") != "" {
		commit += " (with uncommitted changes in the work tree)"
	}
	return [][2]string{
		{"date", h.started.UTC().Format(time.RFC3339)},
		{"CPUs (nproc)", fmt.Sprint(runtime.NumCPU())},
		{"CPU model", field("/proc/cpuinfo", "model name")},
		{"memory", field("/proc/meminfo", "MemTotal")},
		{"kernel", cmd("uname", "-r")},
		{"go", cmd("go", "version")},
		{"commit", commit},
		{"nginx", strings.TrimPrefix(cmd("nginx", "-v"), "nginx version: ")},
		{"runs per figure", fmt.Sprint(o.runs)},
		{"duration per run", o.duration.String()},
	}
}

// writeGrowth writes how echo's cost grows with concurrent flows.
func (h *harness) writeGrowth(w func(string, ...any)) {
	w("## How cost grows with concurrent flows\n\nEcho, 64-byte datagrams at the fixed rate (%.0f/s), one datagram per flow per send (so at 100 000 flows each flow sends about once per run, after a warm-up that made every session). Server CPU µs per datagram (median, min–max), then loss %%.\n\n", h.opts.rate)
	w("| peer | 256 flows | 10 000 flows | 100 000 flows |\n|---|---|---|---|\n")
	for _, peer := range peersOf[kindEcho] {
		w("| %s |", peer)
		for _, f := range growthFlows {
			r := h.find(config{Kind: kindEcho, Flows: f, Size: 64, Rate: h.opts.rate, Burst: 1, Series: "growth"}, peer)
			switch {
			case ok(r):
				w(" %s; %.2f %% |", cell(r, mCPU), median(r.Runs, mLoss.get))
			case r != nil:
				w(" %s |", short(r.Err))
			default:
				w(" not run |")
			}
		}
		w("\n")
	}
}

// writeFlowtable writes the flow-table microbenchmarks.
func (h *harness) writeFlowtable(w func(string, ...any)) {
	w("\n## Flow table microbenchmarks\n\n")
	ft := h.rec.Flowtable
	if ft.Err != "" {
		w("Not measured: %s\n", ft.Err)
	} else {
		w("`go test -run XXX -bench . -benchmem -cpu 2 -count %d ./flowtable/` (compiled first, run with both CPUs and the lab down)", h.opts.ftCount)
		if ft.Compared {
			w(", compared by benchstat with the previous run's output (flowtable-bench.txt)")
		}
		w(":\n\n```\n%s\n```\n", ft.Benchstat)
	}
}
