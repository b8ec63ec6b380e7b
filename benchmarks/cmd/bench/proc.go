package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
// Linux fixes it at 100 on every architecture this harness runs on.
const clockTicks = 100

// process is a server-side program started in a namespace, pinned to a CPU.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string // file holding its stdout and stderr
	done chan struct{}
	err  error // set when done is closed
}

// spawn runs args in namespace ns (the root namespace if ns is empty)
// pinned to cpu, output to a log file in dir. `ip netns exec` and taskset
// both exec, so the process keeps the pid that spawn sees.
func spawn(dir, name, ns, cpu string, args ...string) (*process, error) {
	log := filepath.Join(dir, name+".log")
	f, err := os.Create(log)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	full := append([]string{"taskset", "-c", cpu}, args...)
	if ns != "" {
		full = append([]string{"ip", "netns", "exec", ns}, full...)
	}
	cmd := exec.Command(full[0], full[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: log, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// pid returns the process id.
func (p *process) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to two seconds, then kills.
func (p *process) stop() {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(2 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// tail returns the last lines of the process's log, for error messages.
func (p *process) tail() string {
	b, _ := os.ReadFile(p.log)
	return lastLines(string(b), 5)
}

// waitUDP waits until ns has a UDP socket bound to port, or the process
// exits, or timeout passes.
func waitUDP(p *process, ns string, port int, timeout time.Duration) error {
	want := fmt.Sprintf(":%04X ", port)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("%s exited: %s", p.name, p.tail())
		}
		out, err := exec.Command("ip", "netns", "exec", ns, "cat", "/proc/net/udp").Output()
		if err != nil {
			return fmt.Errorf("reading /proc/net/udp in %s: %w", ns, err)
		}
		for _, line := range strings.Split(string(out), "\n")[1:] {
			if f := strings.Fields(line); len(f) > 1 && strings.HasSuffix(f[1]+" ", want) {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s: nothing listening on UDP port %d after %v: %s", p.name, port, timeout, p.tail())
}

// treeCPU returns the user+system CPU time, in seconds, of root and all its
// descendants (every thread of each: /proc/<pid>/stat sums the threads).
func treeCPU(root int) (float64, error) {
	parent := map[int]int{}
	ticks := map[int]uint64{}
	err := eachProcess("stat", func(pid int, b []byte) {
		// Fields after the command name, which is in parentheses and may hold spaces.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			return
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 13 {
			return
		}
		ppid, _ := strconv.Atoi(f[1])
		utime, _ := strconv.ParseUint(f[11], 10, 64)
		stime, _ := strconv.ParseUint(f[12], 10, 64)
		parent[pid] = ppid
		ticks[pid] = utime + stime
	})
	if err != nil {
		return 0, err
	}
	if _, ok := ticks[root]; !ok {
		return 0, fmt.Errorf("process %d is gone", root)
	}
	var sum uint64
	for pid, t := range ticks {
		for p := pid; p > 1; p = parent[p] {
			if p == root {
				sum += t
				break
			}
		}
	}
	return float64(sum) / clockTicks, nil
}

// udpCounters returns InDatagrams and RcvbufErrors from /proc/net/snmp as
// seen inside namespace ns (the counters are per network namespace).
func udpCounters(ns string) (in, rcvbufErrs uint64, err error) {
	out, err := exec.Command("ip", "netns", "exec", ns, "cat", "/proc/net/snmp").Output()
	if err != nil {
		return 0, 0, fmt.Errorf("reading /proc/net/snmp in %s: %w", ns, err)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i := 1; i < len(f) && i < len(names); i++ {
			v, _ := strconv.ParseUint(f[i], 10, 64)
			switch names[i] {
			case "InDatagrams":
				in = v
			case "RcvbufErrors":
				rcvbufErrs = v
			}
		}
		return in, rcvbufErrs, nil
	}
	return 0, 0, fmt.Errorf("no Udp: lines in /proc/net/snmp of %s", ns)
}

// backlogDrops returns, per CPU, the packets dropped because the CPU's input
// backlog (net.core.netdev_max_backlog) was full: the second column of
// /proc/net/softnet_stat, which is global, not per namespace.
func backlogDrops() ([]uint64, error) {
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		return nil, err
	}
	var out []uint64
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("unexpected /proc/net/softnet_stat line %q", line)
		}
		v, err := strconv.ParseUint(f[1], 16, 64)
		if err != nil {
			return nil, fmt.Errorf("/proc/net/softnet_stat: %w", err)
		}
		out = append(out, v)
	}
	return out, nil
}

// eachProcess calls fn with each process's pid and its /proc/<pid>/<file>,
// skipping processes that exit meanwhile.
func eachProcess(file string, fn func(pid int, content []byte)) error {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/" + file); err == nil {
			fn(pid, b)
		}
	}
	return nil
}
