package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

// metric is a figure of a run, with how to print it.
type metric struct {
	title string
	get   func(run) float64
	fmt   string
}

var (
	mDelivered = metric{"delivered /s", func(r run) float64 { return r.DeliveredPPS }, "%.0f"}
	mLoss      = metric{"loss %", func(r run) float64 { return r.LossPct }, "%.3f"}
	mCPU       = metric{"process CPU µs/dgram (sampled)", func(r run) float64 { return r.CPUPerDgram }, "%.2f"}
	mCore      = metric{"CPU 1 µs/dgram", func(r run) float64 { return r.CorePerDgram }, "%.2f"}
	mP99       = metric{"p99 RTT µs", func(r run) float64 { return r.Gen.RTTP99us }, "%.0f"}
	mDrops     = metric{"kernel drops", func(r run) float64 { return float64(r.RcvbufErrors) }, "%.0f"}
	mBacklog   = metric{"CPU 1 backlog drops", func(r run) float64 {
		if len(r.BacklogDrops) <= serverCPU {
			return 0
		}
		return float64(r.BacklogDrops[serverCPU])
	}, "%.0f"}
	mOffered = metric{"offered /s", func(r run) float64 { return r.Gen.OfferedPPS }, "%.0f"}
)

// cell prints a metric as "median (min–max)", or the median alone for one run.
func cell(runs []run, m metric) string {
	med := median(runs, m.get)
	if len(runs) == 1 {
		return fmt.Sprintf(m.fmt, med)
	}
	lo, hi := span(runs, m.get)
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

// ratioOf returns median(a)/median(b) of a metric, and whether both exist.
func ratioOf(a, b *result, m metric) (float64, bool) {
	if !ok(a) || !ok(b) {
		return 0, false
	}
	den := median(b.Runs, m.get)
	if den == 0 {
		return 0, false
	}
	return median(a.Runs, m.get) / den, true
}

// ratio prints median(a)/median(b) of a metric, or "–".
func ratio(a, b *result, m metric) string {
	if v, found := ratioOf(a, b, m); found {
		return fmt.Sprintf("%.2f", v)
	}
	return "–"
}

// table is the results of one series and kind, in the order they were
// measured: its configurations and peers.
type table struct {
	series, kind string
	configs      []config
	peers        []string
}

// tableOf collects the configurations and peers recorded for a series and
// kind (from the record, so that a report of an older session shows what
// that session measured).
func (h *harness) tableOf(series, kind string) table {
	t := table{series: series, kind: kind}
	for _, r := range h.rec.Results {
		if r.Config.Series != series || r.Config.Kind != kind {
			continue
		}
		if !slices.Contains(t.configs, r.Config) {
			t.configs = append(t.configs, r.Config)
		}
		if !slices.Contains(t.peers, r.Peer) {
			t.peers = append(t.peers, r.Peer)
		}
	}
	return t
}

// writeResults writes RESULTS.md.
func writeResults(h *harness) error {
	if h.opts.only == nil {
		h.opts.only, _ = parseOnly(h.rec.Only) // a report written again from results.json
	}
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	h.writeHeader(w)
	h.writeGoals(w)
	h.writeThroughput(w)
	for _, s := range sections {
		if t := h.tableOf(s.series, s.kind); len(t.configs) > 0 {
			w("## %s\n\n%s\n\n", s.title, s.about)
			h.writeTable(w, t)
			h.writeKernel(w, t)
		}
	}
	h.writeGrowth(w)
	h.writeProfiles(w)
	if h.opts.includes(partFlowtable) {
		h.writeFlowtable(w)
	}
	return os.WriteFile(h.opts.out, []byte(b.String()), 0o644)
}

// sections are the detailed tables of RESULTS.md, in order.
var sections = []struct{ series, kind, title, about string }{
	{seriesMatrix, kindSink, "Sink", "The server reads every datagram and drops it. Delivered = datagrams the kernel queued to the server's socket (InDatagrams in bs); CPU per datagram is over those."},
	{seriesMatrix, kindEcho, "Echo", "The server returns every datagram to its sender. Delivered = replies back at the generator, on the right flow. bare-gso is the bare loop that sends each run of datagrams to one peer as one UDP GSO message, as udpmux does: the fair limit."},
	{seriesMatrix, kindProxy, "Proxy", "Client → proxy in bs → two bare echo backends in bb (CPU 0) → proxy → client. Delivered = replies back at the generator. nat: nftables DNAT (numgen over the two backends) with conntrack in bs, no process; route: no NAT, the generator sends to the backends' addresses and bs routes (the floor of the path)."},
	{seriesListener, kindEcho, "Listeners: a net.Conn per peer", "Echo servers that accept one net.Conn per client flow and echo on it: pion/transport's udp.Listener (v5.1.5) and udpmux's mux.Listen, each in a program of its own on CPU 1."},
	{seriesTunnel, kindProxy, "Tunnel: WireGuard transport messages through the proxy", "The proxy scenario with WireGuard-shaped datagrams (type 4, receiver index = flow id, counter = sequence; each flow's first message, sent only in the warm-up before each peer's first configuration at its flow count, is a 148-byte initiation, which makes its session; the measured runs and the throughput search's trials send transport messages only, from the same source address and port per flow, to the sessions the warm-up made): udpmux with `dissector: flow` and with `dissector: wireguard` (no private key)."},
	{seriesOpenVPN, kindProxy, "Tunnel: OpenVPN data packets through the proxy", "The proxy scenario with OpenVPN-shaped datagrams (P_DATA_V2 as an AEAD cipher sends it: 0x48 = opcode 9, key ID 0; peer-id = flow id; packet-id = sequence + 1, big-endian; each flow's first message, sent only in the warm-up before each peer's first configuration at its flow count, is a 14-byte P_CONTROL_HARD_RESET_CLIENT_V2 with a session ID of its own, which makes its session; the measured runs and the throughput search's trials send data packets only, from the same source address and port per flow, to the sessions the warm-up made; the echo backends reflect every packet, which is what the server's data to that client looks like: same peer-id, packet-ids in sequence): udpmux with `dissector: flow` and with `dissector: openvpn` (no keys), in userspace and with `fast_path: nftables`, and kernel NAT."},
	{seriesGRO, kindEcho, "GRO, listener direction: bursts of 1400-byte datagrams", "Echo, 256 flows sending bursts of 16 datagrams each, with GRO off and on on vs (bs's veth from the clients). bare-gro is the bare loop with UDP_GRO on its socket and GSO replies: what a receiver that uses GRO gets."},
	{seriesGRO, kindProxy, "GRO, upstream direction: bursts of 1400-byte datagrams", "The proxy, 256 flows sending bursts of 16, with GRO off and on on vsb (bs's veth from the backends)."},
	{seriesFlood, kindEcho, "Flood: established sessions while new sources exceed capacity", "Echo at 256, 10 000 and 100 000 established flows (50 000 datagrams/s in all, one per flow per send, sessions made by a warm-up), while a second generator on the same core sends 50 000 datagrams/s from 20 000 new source ports, from 0.5 s before to 0.5 s after each run; the server holds at most the established flows + 1000 sessions (udpmux: `sessions.max`; connected: `-max-sessions`), so most of the flood finds it full. Delivered and loss are the established flows'; CPU 1 per datagram divides the whole cost, flood included, by the established flows' replies. connected: a socket per peer bound to the service address and connected to the peer (the seeds' \"UDP accept\"), one epoll loop."},
}

// writeHeader writes the title, the machine and how things were measured.
func (h *harness) writeHeader(w func(string, ...any)) {
	o := h.opts
	w("# udpmux benchmark results\n\n")
	w("Written by `benchmarks/run.sh` (see README.md for what each scenario measures). ")
	w("Every figure is the median of %d run(s) of %v each, with min–max in parentheses; ", o.runs, o.duration)
	w("ratios are between medians measured in this same session. Absolute numbers drift between sessions and machines: compare ratios.\n\n")
	if o.quick {
		w("**QUICK=1 subset**: fewer shapes, no growth series, one flow-table benchmark count.\n\n")
	}
	if h.rec.Only != "" {
		w("**Partial session** (`ONLY=%s`): the other parts were not run.\n\n", h.rec.Only)
	}
	w("## Machine\n\n| | |\n|---|---|\n")
	for _, kv := range h.rec.Machine {
		w("| %s | %s |\n", kv[0], kv[1])
	}
	if h.rec.GRO != "" {
		w("| veth GRO | %s |\n", h.rec.GRO)
	}
	if h.rec.Elapsed > 0 {
		w("| session took | %v |\n", h.rec.Elapsed)
	}
	w("\nLab: namespaces bc (client, load generator on CPU 0), bs (server under test on CPU 1), bb (proxy backends on CPU 0), ")
	w("joined by veth pairs, receive processing steered with RPS (client and backend rx on CPU 0, server rx on CPU 1). ")
	w("Fixed-rate runs offer %s datagrams/s; \"max\" runs offer what one generator core can send.\n\n", rateList(o.rates))
	if h.rec.CoreCPU == coreCPUMethod {
		w("**CPU 1 µs/dgram** is the server core's busy time, elapsed − idle − iowait − steal from /proc/stat, per delivered datagram (per round trip in echo and proxy): ")
		w("the tick-sampled user/system/softirq fields miss softirq work on this VM's kernel (TICK_CPU_ACCOUNTING, NO_HZ_IDLE), and so does a process's own CPU time, shown for comparison as \"process CPU (sampled)\". ")
		w("Where a \"spinner\" figure is given, it is the same cost from a separate run with a SCHED_IDLE busy loop on CPU 1: the capacity the loop lost.\n\n")
	} else {
		w("**CPU 1 µs/dgram** in this older session is the sum of /proc/stat's tick-sampled busy fields, which undercounts softirq work on this VM.\n\n")
	}
	if h.rec.Noisy > 0 {
		w("**Warning:** %d run(s) started while other work kept a CPU more than 15 %% busy for 10 s; their figures are less reliable (see results.json, \"noisy\").\n\n", h.rec.Noisy)
	}
}

// rateList prints rates as "20000" or "20000, 40000".
func rateList(rates []float64) string {
	var s []string
	for _, r := range rates {
		s = append(s, fmt.Sprintf("%.0f", r))
	}
	return strings.Join(s, ", ")
}

// rateName prints a configuration's rate.
func rateName(c config) string {
	if c.Rate > 0 {
		return fmt.Sprintf("%.0f", c.Rate)
	}
	return "max"
}

// writeTable writes the detailed table of one series and kind.
func (h *harness) writeTable(w func(string, ...any), t table) {
	ref, unit := t.peers[0], "dgram"
	if t.kind == kindProxy {
		unit = "round trip"
	}
	w("| flows | bytes | rate | GRO | peer | offered /s | %s | %s | CPU 1 µs/%s | spinner µs/%s | process CPU µs/%s (sampled) | %s | %s | %s | CPU 1 ÷ %s |\n",
		mDelivered.title, mLoss.title, unit, unit, unit, mP99.title, mDrops.title, mBacklog.title, ref)
	w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range t.configs {
		refRes := h.find(c, ref)
		for _, peer := range t.peers {
			r := h.find(c, peer)
			if r == nil {
				continue
			}
			w("| %d | %d | %s | %s | %s |", c.Flows, c.Size, rateName(c), groName(c.GRO), peer)
			if !ok(r) {
				w(" %s | | | | | | | | | |\n", short(r.Err))
				continue
			}
			spin, proc, p99 := "–", "–", cell(r.Runs, mP99)
			if r.CrossCheck != nil {
				spin = fmt.Sprintf("%.2f", r.CrossCheck.CorePerDgram)
			}
			if median(r.Runs, mCPU.get) > 0 {
				proc = cell(r.Runs, mCPU)
			}
			if t.kind == kindSink {
				p99 = "–"
			}
			w(" %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", cell(r.Runs, mOffered), cell(r.Runs, mDelivered), cell(r.Runs, mLoss),
				cell(r.Runs, mCore), spin, proc, p99, cell(r.Runs, mDrops), cell(r.Runs, mBacklog), ratio(r, refRes, mCore))
		}
	}
	w("\n")
}

// writeKernel writes, for the fast-path peers of a table, what the kernel
// forwarded while each configuration was measured.
func (h *harness) writeKernel(w func(string, ...any), t table) {
	var rows []*result
	for _, c := range t.configs {
		for _, peer := range t.peers {
			if r := h.find(c, peer); r != nil && r.Kernel != nil {
				rows = append(rows, r)
			}
		}
	}
	if len(rows) == 0 {
		return
	}
	w("What the kernel forwarded for the fast-path peers while each configuration was measured (its runs, and its cross-check, profile or throughput search), from the daemon's counters (`udpmux status`: the table's readings of the kernel's, each end read after two readings that followed the generator's last run), against the datagrams the generator sent meanwhile (data only: each flow's first message, which udpmux handles in userspace, went in the warm-up, before these counts):\n\n")
	w("| flows | bytes | rate | peer | sessions in the kernel | sent | forwarded client → backend | share of sent | forwarded backend → client | replies received |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		c, k := r.Config, r.Kernel
		w("| %d | %d | %s | %s |", c.Flows, c.Size, rateName(c), r.Peer)
		if k.Err != "" {
			w(" %s | | | | | |\n", short(k.Err))
			continue
		}
		w(" %d | %d | %d | %.1f %% | %d | %d |\n", k.Offloaded, k.Sent, k.Rx, k.rxShare(), k.Tx, k.Received)
	}
	w("\n")
}

// groName prints a configuration's GRO setting.
func groName(dev string) string {
	if dev == "" {
		return "off"
	}
	return "on (" + dev + ")"
}

// short shortens an error for a table cell.
func short(s string) string {
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

// writeThroughput writes the RFC 2544 throughput of every searched peer,
// one row per peer and one column per shape.
func (h *harness) writeThroughput(w func(string, ...any)) {
	var rows []*result
	for _, r := range h.rec.Results {
		if r.Search != nil {
			rows = append(rows, r)
		}
	}
	if len(rows) == 0 {
		return
	}
	w("## Throughput (RFC 2544)\n\n")
	w("The highest offered rate at which loss stayed under %.1f %% in a majority of %d runs (2 of 3 by default), found by binary search between the highest fixed rate that held (or 0) and the generator's maximum, in %d steps: the resolution is that interval ÷ 2^%d, given per figure. ", lossLimitPct, h.opts.runs, h.opts.steps, h.opts.steps)
	w("\"= max\" means the generator's maximum itself held, so the server's limit is above what one generator core offers. Loss at the maximum (median of the runs there) is the secondary figure.\n\n")
	w("| scenario | flows | bytes | peer | throughput /s | resolution /s | generator max /s | loss at max %% | trials |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		s, c := r.Search, r.Config
		name := c.Kind
		if c.Series != seriesMatrix {
			name = c.Series + " " + c.Kind
		}
		tp := fmt.Sprintf("%.0f", s.Throughput)
		res := fmt.Sprintf("%.0f", s.Resolution)
		if s.AtMax {
			tp, res = tp+" (= max)", "–"
		}
		w("| %s | %d | %d | %s | %s | %s | %.0f | %s | %d |\n", name, c.Flows, c.Size, r.Peer, tp, res, s.MaxPps, cell(r.Runs, mLoss), len(s.Trials))
	}
	w("\n")
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
		{"command", "`" + o.command + "`"},
		{"date", h.started.UTC().Format(time.RFC3339)},
		{"CPUs (nproc)", fmt.Sprint(runtime.NumCPU())},
		{"CPU model", field("/proc/cpuinfo", "model name")},
		{"memory", field("/proc/meminfo", "MemTotal")},
		{"kernel", cmd("uname", "-r")},
		{"go", cmd("go", "version")},
		{"commit", commit},
		{"nginx", strings.TrimPrefix(cmd("nginx", "-v"), "nginx version: ")},
		{"nft", cmd("nft", "--version")},
		{"runs per figure", fmt.Sprint(o.runs)},
		{"duration per run", o.duration.String()},
		{"throughput search", fmt.Sprintf("%d steps, loss < %.1f %% in %d of %d runs", o.steps, lossLimitPct, majority(o.runs), o.runs)},
	}
}

// writeGrowth writes how echo's cost grows with concurrent flows.
func (h *harness) writeGrowth(w func(string, ...any)) {
	t := h.tableOf(seriesGrowth, kindEcho)
	if len(t.configs) == 0 {
		return
	}
	w("## How cost grows with concurrent flows\n\nEcho, 64-byte datagrams at a fixed rate, one datagram per flow per send (so at 100 000 flows each flow sends about once per run, after a warm-up that made every session). CPU 1 µs per datagram (median, min–max), then loss %%.\n\n")
	w("| peer |")
	for _, c := range t.configs {
		w(" %d flows, %s/s |", c.Flows, rateName(c))
	}
	w("\n|---|%s\n", strings.Repeat("---|", len(t.configs)))
	for _, peer := range t.peers {
		w("| %s |", peer)
		for _, c := range t.configs {
			switch r := h.find(c, peer); {
			case ok(r):
				w(" %s; %.3f %% |", cell(r.Runs, mCore), median(r.Runs, mLoss.get))
			case r != nil:
				w(" %s |", short(r.Err))
			default:
				w(" not run |")
			}
		}
		w("\n")
	}
	w("\n")
}
