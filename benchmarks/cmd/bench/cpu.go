package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// How busy the server core was, and why it is measured this way.
//
// This VM's kernel has TICK_CPU_ACCOUNTING without IRQ_TIME_ACCOUNTING and
// NO_HZ_IDLE: the user, system, irq and softirq fields of /proc/stat (and a
// process's utime and stime) are sampled at timer ticks, so the softirq
// work that runs when the core wakes from idle to take a packet is mostly
// charged to nobody. The idle field is different: with NO_HZ the kernel
// clocks every idle period exactly (get_cpu_idle_time_us), so
// elapsed − idle − iowait − steal is the time the core really worked,
// whoever it worked for. A first try at kernel NAT with the sampled fields
// gave a tenth of its real cost.
//
// /proc/stat prints in USER_HZ (10 ms) units, so each sample is exact to
// 10 ms: about 0.5 % of a 2 s run per sample. The SCHED_IDLE spinner
// (cmd/spinner, spinner.go) measures the same thing another way.

// cpuStat is one CPU's line of /proc/stat, in USER_HZ ticks.
type cpuStat struct {
	User, Nice, System, Idle, IOWait, IRQ, SoftIRQ, Steal uint64
}

// sampled returns the fields the kernel charges at ticks (see above): a
// lower bound of the CPU's busy time, kept for comparison with older
// sessions.
func (s cpuStat) sampled() uint64 {
	return s.User + s.Nice + s.System + s.IRQ + s.SoftIRQ
}

// parseProcStat returns the per-CPU lines of a /proc/stat text, indexed by
// CPU number. The guest fields are left out: they are already in user.
func parseProcStat(text string) ([]cpuStat, error) {
	var out []cpuStat
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		n, err := strconv.Atoi(f[0][3:])
		if err != nil {
			return nil, fmt.Errorf("/proc/stat: bad CPU name %q", f[0])
		}
		if len(f) < 9 {
			return nil, fmt.Errorf("/proc/stat: %s has %d fields, want at least 8", f[0], len(f)-1)
		}
		var v [8]uint64
		for i := range v {
			if v[i], err = strconv.ParseUint(f[i+1], 10, 64); err != nil {
				return nil, fmt.Errorf("/proc/stat: %s: %w", f[0], err)
			}
		}
		for len(out) <= n {
			out = append(out, cpuStat{})
		}
		out[n] = cpuStat{User: v[0], Nice: v[1], System: v[2], Idle: v[3], IOWait: v[4], IRQ: v[5], SoftIRQ: v[6], Steal: v[7]}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("/proc/stat: no per-CPU lines")
	}
	return out, nil
}

// cpuSample is /proc/stat read at one instant.
type cpuSample struct {
	At   time.Time
	CPUs []cpuStat
}

// readCPU samples /proc/stat now.
func readCPU() (cpuSample, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuSample{}, err
	}
	at := time.Now()
	cpus, err := parseProcStat(string(b))
	return cpuSample{At: at, CPUs: cpus}, err
}

// coreTime is what one CPU did between two samples, in seconds.
type coreTime struct {
	Elapsed float64 // wall-clock time between the samples
	Busy    float64 // Elapsed − idle − iowait − steal: the work it did
	Sampled float64 // the tick-sampled busy fields, an undercount (see above)
	Steal   float64 // time the hypervisor gave the vCPU to something else
}

// between returns what CPU cpu did from sample a to sample b. Busy is
// clamped to [0, Elapsed]: the 10 ms resolution of idle can take it a
// little outside.
func between(a, b cpuSample, cpu int) coreTime {
	if cpu >= len(a.CPUs) || cpu >= len(b.CPUs) {
		return coreTime{}
	}
	x, y := a.CPUs[cpu], b.CPUs[cpu]
	ticks := func(d uint64) float64 { return float64(d) / clockTicks }
	t := coreTime{
		Elapsed: b.At.Sub(a.At).Seconds(),
		Sampled: ticks(y.sampled() - x.sampled()),
		Steal:   ticks(y.Steal - x.Steal),
	}
	idle := ticks((y.Idle + y.IOWait) - (x.Idle + x.IOWait))
	t.Busy = min(max(t.Elapsed-idle-t.Steal, 0), t.Elapsed)
	return t
}

// cpuBusy samples /proc/stat over d and returns each CPU's busy fraction,
// busy as in coreTime.
func cpuBusy(d time.Duration) ([]float64, error) {
	a, err := readCPU()
	if err != nil {
		return nil, err
	}
	time.Sleep(d)
	b, err := readCPU()
	if err != nil {
		return nil, err
	}
	out := make([]float64, len(b.CPUs))
	for i := range out {
		if t := between(a, b, i); t.Elapsed > 0 {
			out[i] = t.Busy / t.Elapsed
		}
	}
	return out, nil
}
