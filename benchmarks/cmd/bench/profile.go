package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// profileLines is how many of a profile's hottest symbols RESULTS.md shows.
const profileLines = 25

// profileRec is where the server core's time went during one run: perf's
// flat profile of CPU 1, sampled with the CPU clock (this VM has no PMU).
type profileRec struct {
	Command string `json:"command"`
	Top     string `json:"top"` // perf report's hottest symbols
	Err     string `json:"error,omitempty"`
}

// profile makes one run of c with `perf record -C 1` sampling the server
// core, and returns perf's report of it. The run's own figures are not
// kept: perf's sampling adds to the cost it measures.
func (h *harness) profile(srv *server, c config, peer string) *profileRec {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return &profileRec{Err: "perf is not installed (Debian's linux-perf)"}
	}
	data := filepath.Join(h.opts.work, fmt.Sprintf("perf-%s-%s.data", c.Series, peer))
	args := []string{"record", "-C", cpuServer, "-e", "cpu-clock", "-F", "4999", "-o", data}
	rec := exec.Command(perf, args...)
	log, _ := os.Create(data + ".log")
	defer log.Close()
	rec.Stdout, rec.Stderr = log, log
	if err := rec.Start(); err != nil {
		return &profileRec{Err: "perf record: " + err.Error()}
	}
	time.Sleep(300 * time.Millisecond) // perf opens its events
	_, runErr := h.measure(srv, c, c.Rate, nil)
	rec.Process.Signal(syscall.SIGINT)
	rec.Wait()
	p := &profileRec{Command: "perf " + strings.Join(args, " ")}
	if runErr != nil {
		p.Err = "the profiled run failed: " + runErr.Error()
		return p
	}
	out, err := exec.Command(perf, "report", "-i", data, "--stdio", "--no-children", "--sort", "comm,dso,sym",
		"--percent-limit", "0.5").CombinedOutput()
	if err != nil {
		p.Err = fmt.Sprintf("perf report: %v: %s", err, lastLines(string(out), 3))
		return p
	}
	p.Top = topSymbols(string(out), profileLines)
	return p
}

// topSymbols returns the first n sample lines of a perf report, without
// its comment header.
func topSymbols(report string, n int) string {
	var keep []string
	for _, line := range strings.Split(report, "\n") {
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		keep = append(keep, strings.TrimRight(line, " "))
		if len(keep) == n {
			break
		}
	}
	return strings.Join(keep, "\n")
}

// writeProfiles writes every profile of the session.
func (h *harness) writeProfiles(w func(string, ...any)) {
	var rs []*result
	for _, r := range h.rec.Results {
		if r.Profile != nil {
			rs = append(rs, r)
		}
	}
	if len(rs) == 0 {
		return
	}
	w("## Where the server core goes\n\n")
	w("One extra run per profiled peer at its scenario's first fixed rate, with `perf record -C 1 -e cpu-clock` sampling CPU 1 (this VM has no PMU, so the CPU clock is the only event): the hottest symbols of the whole core, kernel and user, by command (anything else that ran on CPU 1 shows up under its own name). Its figures are not used elsewhere; perf's sampling adds to what it measures.\n\n")
	for _, r := range rs {
		w("### %s, %s\n\n", r.Peer, r.Config)
		if r.Profile.Err != "" {
			w("Not profiled: %s\n\n", r.Profile.Err)
			continue
		}
		w("```\n%s\n```\n\n", r.Profile.Top)
	}
}
