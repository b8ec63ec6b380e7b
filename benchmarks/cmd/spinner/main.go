// Command spinner measures how much of a CPU other work takes, from the
// capacity a lowest-priority busy loop loses while that work runs.
//
// Start it pinned to the CPU to watch (taskset -c N). It switches every
// thread of its own to SCHED_IDLE, so that any other task, and every
// softirq, runs before it, and then counts loop iterations forever,
// publishing the count in the first 8 bytes of -counter (a file it creates
// and maps shared, normally under /dev/shm). Whoever reads the file twice
// knows how many iterations the spinner did in between; compared with its
// rate on an otherwise idle CPU, the shortfall is the CPU time the other
// work took, including the kernel work that tick-sampled accounting misses.
//
// The spinner keeps the CPU from ever going idle, so its cross-check is a
// run of its own: the idle-based measurement of the same run would see a
// CPU busy all the time.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// schedIdle is SCHED_IDLE from <linux/sched.h>.
const schedIdle = 5

// publishEvery is how many iterations pass between two stores of the count:
// often enough for a reader's 10 ms resolution, rarely enough that the store
// costs nothing.
const publishEvery = 1 << 12

func main() {
	path := flag.String("counter", "", "file to create and publish the iteration count in")
	flag.Parse()
	if *path == "" {
		fail(fmt.Errorf("-counter is required"))
	}
	count, err := mapCounter(*path)
	if err != nil {
		fail(err)
	}
	runtime.LockOSThread()
	if err := idleAllThreads(); err != nil {
		fail(err)
	}
	spin(count)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "spinner:", err)
	os.Exit(1)
}

// mapCounter creates path, maps its first page shared and returns the
// counter at its start.
func mapCounter(path string) (*uint64, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := f.Truncate(int64(os.Getpagesize())); err != nil {
		return nil, err
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %s: %w", path, err)
	}
	return (*uint64)(unsafe.Pointer(&mem[0])), nil
}

// idleAllThreads moves every thread of the process to SCHED_IDLE, the
// runtime's as well as the spinning one, so that none of them competes
// with the work being measured.
func idleAllThreads() error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: schedIdle}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetAttr(tid, &attr, 0); err != nil && err != unix.ESRCH {
			return fmt.Errorf("sched_setattr(%d, SCHED_IDLE): %w", tid, err)
		}
	}
	return nil
}

// spin counts iterations forever, publishing the count in *count.
func spin(count *uint64) {
	var n uint64
	for {
		for range publishEvery {
			n++
		}
		atomic.StoreUint64(count, n)
	}
}
