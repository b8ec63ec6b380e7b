package main

import (
	"bufio"
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
	Err       string
	Benchstat string  // benchstat's summary (or comparison with the previous output)
	Compared  bool    // Benchstat compares with the previous run's output
	LookupNs  float64 // median ns/op of the 1M-entry lookup benchmark, -1 if absent
	LookupMin float64
	LookupMax float64
	Allocs    float64 // largest allocs/op seen in it
	Name      string  // the benchmark the goal was read from
}

// runFlowtable compiles the main module's flowtable tests, runs their
// benchmarks pinned to CPU 1 (what `go test -run XXX -bench . -benchmem
// -count N ./flowtable/` does, without compiling on the measured core), and
// summarises them with benchstat, against the previous output if there is one.
func runFlowtable(h *harness) flowtableResult {
	res := flowtableResult{LookupNs: -1}
	test := filepath.Join(h.opts.work, "flowtable.test")
	build := exec.Command("go", "test", "-c", "-o", test, "./flowtable/")
	build.Dir = h.opts.mainDir
	if out, err := build.CombinedOutput(); err != nil {
		res.Err = fmt.Sprintf("building the flowtable tests failed: %s", strings.TrimSpace(string(out)))
		return res
	}
	count := h.opts.ftCount
	args := []string{"-c", cpuServer, test, "-test.run", "XXX", "-test.bench", ".", "-test.benchmem",
		"-test.count", strconv.Itoa(count)}
	if h.opts.quick {
		args = append(args, "-test.short")
	}
	h.logf("flowtable benchmarks: taskset %s", strings.Join(args, " "))
	out, err := exec.Command("taskset", args...).CombinedOutput()
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

// parseLookup finds the single-goroutine lookup benchmark on a table of about
// a million entries and records its median ns/op and largest allocs/op.
func parseLookup(out string, res *flowtableResult) {
	var ns []float64
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || !strings.Contains(f[0], "Lookup") {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 { // GOMAXPROCS suffix
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		if !strings.HasSuffix(name, "/1M") {
			continue
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				ns = append(ns, v)
			case "allocs/op":
				res.Allocs = max(res.Allocs, v)
			}
		}
		res.Name = name
	}
	if len(ns) == 0 {
		return
	}
	slices.Sort(ns)
	res.LookupNs = ns[len(ns)/2]
	if len(ns)%2 == 0 {
		res.LookupNs = (ns[len(ns)/2-1] + ns[len(ns)/2]) / 2
	}
	res.LookupMin, res.LookupMax = ns[0], ns[len(ns)-1]
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
