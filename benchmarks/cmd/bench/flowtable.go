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
	Err       string       `json:"error,omitempty"`
	Benchstat string       `json:"benchstat"` // benchstat's summary, or its comparison with the previous output
	Compared  bool         `json:"compared"`  // Benchstat compares with the previous run's output
	Lookups   []lookupStat `json:"lookups"`   // the lookup benchmarks on a 1M-entry table
}

// lookupStat summarises one lookup benchmark on a table of 1M entries.
type lookupStat struct {
	Name          string  `json:"name"`
	Ns, Min, Max  float64 // ns/op over the counts: median, min, max
	Allocs        float64 // largest allocs/op
	nsPerOpValues []float64
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
	return res
}

// parseLookup finds the lookup benchmarks on a table of 1M entries (names
// BenchmarkLookup…/1M, GOMAXPROCS suffix removed) and records, per
// benchmark, the median, min and max ns/op and the largest allocs/op. Their
// ns/op is per key: the batched benchmark counts keys, not batches.
func parseLookup(out string, res *flowtableResult) {
	byName := map[string]*lookupStat{}
	var order []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "BenchmarkLookup") {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		if !strings.HasSuffix(name, "/1M") {
			continue
		}
		st := byName[name]
		if st == nil {
			st = &lookupStat{Name: name}
			byName[name] = st
			order = append(order, name)
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				st.nsPerOpValues = append(st.nsPerOpValues, v)
			case "allocs/op":
				st.Allocs = max(st.Allocs, v)
			}
		}
	}
	for _, name := range order {
		st := byName[name]
		ns := st.nsPerOpValues
		if len(ns) == 0 {
			continue
		}
		slices.Sort(ns)
		st.Ns = ns[len(ns)/2]
		if len(ns)%2 == 0 {
			st.Ns = (ns[len(ns)/2-1] + ns[len(ns)/2]) / 2
		}
		st.Min, st.Max = ns[0], ns[len(ns)-1]
		res.Lookups = append(res.Lookups, *st)
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
