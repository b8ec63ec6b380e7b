// Command bench runs the udpmux benchmark matrix on the lab that lab.sh
// builds (namespaces bc, bs, bb) and writes RESULTS.md. It is meant to be
// started by run.sh, which builds the binaries and brings the lab up and down.
//
// Every figure is measured with the load generator (loadgen) in bc pinned to
// CPU 0 and the server under test in bs pinned to CPU 1; proxy backends (the
// bare echo peer) run in bb on CPU 0. Each configuration runs -runs times
// against one server instance; RESULTS.md gives medians with min–max.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// options are the command-line settings.
type options struct {
	bin      string        // directory with loadgen, peer and (optionally) udpmux
	mainDir  string        // the main module, for the flow-table benchmarks
	out      string        // RESULTS.md to write
	raw      string        // JSON file for every run's raw figures
	work     string        // scratch directory (configs, logs)
	runs     int           // repetitions per configuration
	duration time.Duration // sending time per run
	rate     float64       // the fixed rate, datagrams/s
	quick    bool          // a small subset of the matrix
	ftCount  int           // -count of the flow-table benchmarks
	ftBench  string        // flow-table benchmark output, kept for the next comparison
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
	flag.Float64Var(&o.rate, "rate", 50000, "fixed offered rate, datagrams/s")
	flag.BoolVar(&o.quick, "quick", false, "run a small subset (about two minutes)")
	flag.IntVar(&o.ftCount, "flowtable-count", 5, "-count for the flow-table benchmarks")
	flag.Parse()
	if o.bin == "" || o.runs < 1 {
		fmt.Fprintln(os.Stderr, "bench: -bin is required and -runs must be >= 1")
		os.Exit(2)
	}
	var err error
	if o.work, err = os.MkdirTemp("", "udpmux-bench-"); err != nil {
		fatal(err)
	}
	defer os.RemoveAll(o.work)

	h := &harness{opts: o, started: time.Now()}
	h.logf("work directory %s", o.work)
	h.runMatrix()
	h.ft = runFlowtable(h)
	if err := writeRaw(o.raw, h.results); err != nil {
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

// writeRaw saves every run's figures as JSON.
func writeRaw(path string, results []*result) error {
	b, err := json.MarshalIndent(results, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// binary returns the path of a built program.
func (h *harness) binary(name string) string { return filepath.Join(h.opts.bin, name) }

// logf prints progress to standard error with the time since the start.
func (h *harness) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(h.started).Seconds(), fmt.Sprintf(format, args...))
}
