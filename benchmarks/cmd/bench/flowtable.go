package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// flowtableResult is the outcome of the flow-table microbenchmarks.
type flowtableResult struct {
	Err       string      `json:"error,omitempty"`
	Benchstat string      `json:"benchstat"` // benchstat's summary, or its comparison with the previous output
	Compared  bool        `json:"compared"`  // Benchstat compares with the previous run's output
	Lookups   []benchStat `json:"lookups"`   // the lookup benchmarks on a 1M-entry table

	// The flow table against Go's maps (package flowmap).
	MapsErr string      `json:"maps_error,omitempty"`
	Maps    []benchStat `json:"maps,omitempty"`
	MapsRaw string      `json:"maps_output,omitempty"`
}

// benchStat summarises one benchmark over its -count runs.
type benchStat struct {
	Name         string  // without the GOMAXPROCS suffix
	Ns, Min, Max float64 // ns/op: median, min, max
	Allocs       float64 // largest allocs/op
}

// mapStat returns the flowmap benchmark of one table at one size.
func (r flowtableResult) mapStat(size, table string) (benchStat, bool) {
	for _, st := range r.Maps {
		if st.Name == "BenchmarkLookup/"+size+"/"+table {
			return st, true
		}
	}
	return benchStat{}, false
}

// runFlowtable compiles the main module's flowtable tests, runs their
// benchmarks with two goroutines on both CPUs, as the flow-table budget is
// stated (what `go test -run XXX -bench . -benchmem -cpu 2 -count N
// ./flowtable/` does, with the compile kept out of the measurement), and
// summarises them with benchstat, against the previous output if there is one.
// The lab is down by then, so both CPUs are the benchmark's.
func runFlowtable(h *harness) flowtableResult {
	var res flowtableResult
	test := filepath.Join(h.opts.work, "flowtable.test")
	build := exec.Command("go", "test", "-c", "-o", test, "./flowtable/")
	build.Dir = h.opts.mainDir
	if out, err := build.CombinedOutput(); err != nil {
		res.Err = fmt.Sprintf("building the flowtable tests failed: %s", strings.TrimSpace(string(out)))
		return res
	}
	count := h.opts.ftCount
	args := []string{"-test.run", "XXX", "-test.bench", ".", "-test.benchmem", "-test.cpu", "2",
		"-test.count", strconv.Itoa(count)}
	if h.opts.ftShort {
		args = append(args, "-test.short")
	}
	h.logf("flowtable benchmarks: %s %s", test, strings.Join(args, " "))
	ctx, cancel := context.WithTimeout(context.Background(), h.opts.ftTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, test, args...).CombinedOutput()
	if ctx.Err() != nil {
		res.Err = fmt.Sprintf("flowtable benchmarks did not finish within %v", h.opts.ftTimeout)
		return res
	}
	if err != nil {
		res.Err = fmt.Sprintf("flowtable benchmarks failed: %v: %s", err, lastLines(string(out), 5))
		return res
	}
	prev := h.opts.ftBench + ".prev"
	_, hadPrev := os.Stat(h.opts.ftBench)
	if hadPrev == nil {
		if err := os.Rename(h.opts.ftBench, prev); err != nil {
			res.Err = err.Error()
			return res
		}
		defer os.Remove(prev)
	}
	if err := os.WriteFile(h.opts.ftBench, out, 0o644); err != nil {
		res.Err = err.Error()
		return res
	}
	bsArgs := []string{h.opts.ftBench}
	if hadPrev == nil {
		bsArgs = []string{"previous=" + prev, "this=" + h.opts.ftBench}
		res.Compared = true
	}
	if bs, err := exec.Command("benchstat", bsArgs...).CombinedOutput(); err != nil {
		res.Benchstat = fmt.Sprintf("benchstat failed: %v: %s", err, strings.TrimSpace(string(bs)))
	} else {
		res.Benchstat = strings.TrimSpace(string(bs))
	}
	parseLookup(string(out), &res)
	runFlowmaps(h, &res)
	return res
}

// parseLookup finds the lookup benchmarks on a table of 1M entries (names
// BenchmarkLookup…/1M). Their ns/op is per key: the batched benchmark
// counts keys, not batches.
func parseLookup(out string, res *flowtableResult) {
	res.Lookups = parseBench(out, func(name string) bool {
		return strings.HasPrefix(name, "BenchmarkLookup") && strings.HasSuffix(name, "/1M")
	})
}

// parseBench summarises the benchmark lines of a go test output whose
// names (GOMAXPROCS suffix removed) keep accepts: per benchmark, in the
// order of first appearance, the median, min and max ns/op and the largest
// allocs/op.
func parseBench(out string, keep func(name string) bool) []benchStat {
	ns := map[string][]float64{}
	allocs := map[string]float64{}
	var order []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		if !keep(name) {
			continue
		}
		if _, seen := ns[name]; !seen {
			order = append(order, name)
			ns[name] = nil
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				ns[name] = append(ns[name], v)
			case "allocs/op":
				allocs[name] = max(allocs[name], v)
			}
		}
	}
	var stats []benchStat
	for _, name := range order {
		v := ns[name]
		if len(v) == 0 {
			continue
		}
		slices.Sort(v)
		st := benchStat{Name: name, Ns: v[len(v)/2], Min: v[0], Max: v[len(v)-1], Allocs: allocs[name]}
		if len(v)%2 == 0 {
			st.Ns = (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		stats = append(stats, st)
	}
	return stats
}

// runFlowmaps compiles and runs the flowmap benchmarks of this module: the
// flow table against a sharded Go map and sync.Map at 1k, 1M and 10M
// entries, two goroutines.
func runFlowmaps(h *harness, res *flowtableResult) {
	test := filepath.Join(h.opts.work, "flowmap.test")
	if out, err := exec.Command("go", "test", "-c", "-o", test, "./flowmap/").CombinedOutput(); err != nil {
		res.MapsErr = fmt.Sprintf("building the flowmap benchmarks failed: %s", strings.TrimSpace(string(out)))
		return
	}
	args := []string{"-test.run", "XXX", "-test.bench", ".", "-test.benchmem", "-test.cpu", "2",
		"-test.count", strconv.Itoa(h.opts.ftCount)}
	h.logf("flowmap benchmarks: %s %s", test, strings.Join(args, " "))
	ctx, cancel := context.WithTimeout(context.Background(), h.opts.ftTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, test, args...).CombinedOutput()
	switch {
	case ctx.Err() != nil:
		res.MapsErr = fmt.Sprintf("flowmap benchmarks did not finish within %v", h.opts.ftTimeout)
	case err != nil:
		res.MapsErr = fmt.Sprintf("flowmap benchmarks failed: %v: %s", err, lastLines(string(out), 5))
	default:
		res.MapsRaw = string(out)
		res.Maps = parseBench(res.MapsRaw, func(name string) bool { return strings.HasPrefix(name, "BenchmarkLookup/") })
	}
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// mapTables are the flowmap tables in the order RESULTS.md shows them; the
// sharded map is the reference.
var mapTables = []string{"flowtable", "flowtable-batch", "sharded-map", "sync-map"}

// writeFlowtable writes the flow table against Go's maps and the flow-table
// microbenchmarks.
func (h *harness) writeFlowtable(w func(string, ...any)) {
	ft := h.rec.Flowtable
	w("## Flow table against Go's maps\n\n")
	switch {
	case ft.MapsErr != "":
		w("Not measured: %s\n\n", ft.MapsErr)
	case len(ft.Maps) == 0:
		w("Not measured in this session.\n\n")
	default:
		w("`go test -run XXX -bench . -benchmem -cpu 2 -count %d ./flowmap/` in the benchmarks module: every key of a full table looked up in a random order by two goroutines. ", h.opts.ftCount)
		w("sharded-map is a `map[flowtable.Key]*V` in %d shards, each behind a sync.RWMutex (as a map with writers on several goroutines needs), the shard chosen by hash/maphash; sync-map is a sync.Map; flowtable-batch is LookupBatch with 64 keys per call. ns per lookup, median (min–max) of the counts, then ÷ sharded-map; allocs/op in brackets.\n\n", 256)
		w("| entries |")
		for _, t := range mapTables {
			w(" %s |", t)
		}
		w("\n|---|%s\n", strings.Repeat("---|", len(mapTables)))
		for _, size := range []string{"1k", "1M", "10M"} {
			ref, hasRef := ft.mapStat(size, "sharded-map")
			w("| %s |", size)
			for _, t := range mapTables {
				st, found := ft.mapStat(size, t)
				switch {
				case !found:
					w(" – |")
				case hasRef && ref.Ns > 0:
					w(" %.1f (%.1f–%.1f) ÷ %.2f [%.0f] |", st.Ns, st.Min, st.Max, st.Ns/ref.Ns, st.Allocs)
				default:
					w(" %.1f (%.1f–%.1f) [%.0f] |", st.Ns, st.Min, st.Max, st.Allocs)
				}
			}
			w("\n")
		}
		w("\n")
	}
	w("## Flow table microbenchmarks\n\n")
	if ft.Err != "" {
		w("Not measured: %s\n", ft.Err)
		return
	}
	w("`go test -run XXX -bench . -benchmem -cpu 2 -count %d ./flowtable/` (compiled first)", h.opts.ftCount)
	if ft.Compared {
		w(", compared by benchstat with the previous run's output (flowtable-bench.txt)")
	}
	w(":\n\n```\n%s\n```\n", ft.Benchstat)
}
