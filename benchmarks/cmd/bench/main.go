// Command bench runs the udpmux benchmark session on the lab that lab.sh
// builds (namespaces bc, bs, bb) and writes RESULTS.md. It is meant to be
// started by run.sh, which builds the binaries and brings the lab up and down.
//
// Every figure is measured with the load generator (loadgen) in bc pinned to
// CPU 0 and the server under test in bs pinned to CPU 1; proxy backends (the
// bare echo peer) run in bb on CPU 0. A scenario (scenario.go) is a set of
// peers measured on a set of configurations, each configuration -runs times
// against one server instance; RESULTS.md gives medians with min–max, the
// RFC 2544 throughput of the searched peers (search.go), CPU 1's busy time
// (cpu.go) with a spinner's cross-check (spinner.go), perf profiles
// (profile.go), the flow table against Go's maps (flowtable.go) and the
// goals (goals.go).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// options are the command-line settings.
type options struct {
	bin       string          // directory with loadgen, peer and (optionally) udpmux
	mainDir   string          // the main module, for the flow-table benchmarks
	ftOnly    bool            // rerun the flow-table benchmarks into an earlier session
	out       string          // RESULTS.md to write
	raw       string          // JSON file for every run's raw figures
	work      string          // scratch directory (configs, logs)
	runs      int             // repetitions per configuration
	duration  time.Duration   // sending time per run
	rates     []float64       // the fixed rates, datagrams/s
	steps     int             // halvings of a throughput search
	quick     bool            // a small subset of the matrix
	ftCount   int             // -count of the flow-table benchmarks
	ftBench   string          // flow-table benchmark output, kept for the next comparison
	ftShort   bool            // pass -test.short (skips the 10M-entry tables)
	ftTimeout time.Duration   // limit for the flow-table benchmarks
	report    bool            // only write RESULTS.md again from the raw file
	only      map[string]bool // the parts to run (scenario kinds, "flowtable"); all when empty
	command   string          // the command that started the session, for RESULTS.md
	udpmuxEnv []string        // NAME=value settings added to the udpmux daemon's environment
}

// includes reports whether part is to be measured in this session.
func (o options) includes(part string) bool { return len(o.only) == 0 || o.only[part] }

// parseOnly turns -only's comma-separated list into a set.
func parseOnly(list string) (map[string]bool, error) {
	if list == "" {
		return nil, nil
	}
	set := map[string]bool{}
	for _, p := range strings.Split(list, ",") {
		if !slices.Contains(parts, p) {
			return nil, fmt.Errorf("-only: unknown part %q (want some of %s)", p, strings.Join(parts, ","))
		}
		set[p] = true
	}
	return set, nil
}

// parseEnv turns -udpmux-env's space-separated NAME=value list into
// settings for env(1).
func parseEnv(list string) ([]string, error) {
	kvs := strings.Fields(list)
	for _, kv := range kvs {
		if name, _, ok := strings.Cut(kv, "="); !ok || name == "" {
			return nil, fmt.Errorf("-udpmux-env: %q is not NAME=value", kv)
		}
	}
	return kvs, nil
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "", "directory holding loadgen, peer and optionally udpmux")
	flag.StringVar(&o.mainDir, "main", "..", "directory of the main udpmux module")
	flag.StringVar(&o.out, "out", "RESULTS.md", "results file to write")
	flag.StringVar(&o.raw, "raw", "results.json", "file for the raw per-run figures")
	flag.StringVar(&o.ftBench, "flowtable-out", "flowtable-bench.txt", "flow-table benchmark output; the previous one is compared with benchstat")
	flag.IntVar(&o.runs, "runs", 3, "runs per configuration (the median is reported)")
	flag.DurationVar(&o.duration, "duration", 2*time.Second, "sending time per run")
	rates := flag.String("rates", "20000", "comma-separated fixed offered rates, datagrams/s (the first is the one every peer should hold)")
	flag.IntVar(&o.steps, "search-steps", defaultSearchSteps, "halvings of the throughput search interval")
	flag.BoolVar(&o.quick, "quick", false, "run a small subset (about two minutes)")
	flag.IntVar(&o.ftCount, "flowtable-count", 5, "-count for the flow-table benchmarks")
	flag.BoolVar(&o.ftShort, "flowtable-short", false, "run the flow-table benchmarks with -test.short (no 10M-entry tables)")
	flag.DurationVar(&o.ftTimeout, "flowtable-timeout", 10*time.Minute, "give up on the flow-table benchmarks after this long")
	flag.BoolVar(&o.report, "report-only", false, "measure nothing: write -out again from the -raw file of an earlier session")
	flag.BoolVar(&o.ftOnly, "flowtable-only", false, "run only the flow-table benchmarks and replace them in the -raw session, then write -out")
	flag.StringVar(&o.command, "command", "bench", "the command that started the session, as RESULTS.md should state it")
	udpmuxEnv := flag.String("udpmux-env", "", "space-separated NAME=value settings for the udpmux daemon's environment (such as GOMAXPROCS=1)")
	only := flag.String("only", "", "comma-separated parts to run, of "+strings.Join(parts, ",")+" (default all)")
	flag.Parse()
	var err error
	if o.only, err = parseOnly(*only); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if o.rates, err = parseRates(*rates); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if o.udpmuxEnv, err = parseEnv(*udpmuxEnv); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if o.report || o.ftOnly {
		if err := rewriteReport(o); err != nil {
			fatal(err)
		}
		return
	}
	if o.bin == "" || o.runs < 1 || o.steps < 0 {
		fmt.Fprintln(os.Stderr, "bench: -bin is required, -runs must be >= 1 and -search-steps >= 0")
		os.Exit(2)
	}
	if o.work, err = os.MkdirTemp("", "udpmux-bench-"); err != nil {
		fatal(err)
	}
	defer os.RemoveAll(o.work)

	h := &harness{opts: o, started: time.Now()}
	h.rec = record{Machine: machine(h), Runs: o.runs, Duration: o.duration, Rate: o.rates[0], Rates: o.rates,
		SearchSteps: o.steps, CoreCPU: coreCPUMethod, Quick: o.quick, FTCount: o.ftCount, Only: *only, GRO: groSupport()}
	h.logf("work directory %s", o.work)
	h.runScenarios()
	if o.includes(partFlowtable) {
		h.rec.Flowtable = runFlowtable(h)
	} else {
		h.rec.Flowtable.Err = "not run (-only " + *only + ")"
	}
	h.rec.Elapsed = time.Since(h.started).Round(time.Second)
	if err := writeRaw(o.raw, &h.rec); err != nil {
		fatal(err)
	}
	if err := writeResults(h); err != nil {
		fatal(err)
	}
	h.logf("wrote %s and %s in %v", o.out, o.raw, time.Since(h.started).Round(time.Second))
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

// writeRaw saves the session's record as JSON.
func writeRaw(path string, rec *record) error {
	b, err := json.MarshalIndent(rec, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// rewriteReport writes RESULTS.md again from a saved record, with the
// settings the session ran with.
func rewriteReport(o options) error {
	b, err := os.ReadFile(o.raw)
	if err != nil {
		return err
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		return fmt.Errorf("%s: %w", o.raw, err)
	}
	h := &harness{opts: o, rec: rec, started: time.Now()}
	if o.ftOnly {
		if o.work, err = os.MkdirTemp("", "udpmux-bench-"); err != nil {
			return err
		}
		defer os.RemoveAll(o.work)
		h.opts.work = o.work
		h.rec.Flowtable = runFlowtable(h)
		h.rec.FTCount = o.ftCount
		if err := writeRaw(o.raw, &h.rec); err != nil {
			return err
		}
	}
	h.opts.runs, h.opts.duration, h.opts.quick, h.opts.ftCount = rec.Runs, rec.Duration, rec.Quick, h.rec.FTCount
	h.opts.rates, h.opts.steps = rec.Rates, rec.SearchSteps
	if len(h.opts.rates) == 0 { // sessions before several fixed rates
		h.opts.rates = []float64{rec.Rate}
	}
	return writeResults(h)
}

// parseRates turns -rates' comma-separated list into rates.
func parseRates(list string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(list, ",") {
		r, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || r <= 0 {
			return nil, fmt.Errorf("-rates: %q is not a positive rate", f)
		}
		out = append(out, r)
	}
	return out, nil
}

// binary returns the path of a built program.
func (h *harness) binary(name string) string { return filepath.Join(h.opts.bin, name) }

// logf prints progress to standard error with the time since the start.
func (h *harness) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(h.started).Seconds(), fmt.Sprintf(format, args...))
}
