//go:build linux

package fastpath

import (
	"bufio"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/netlab"
)

// meminfo returns the kernel's Slab and Percpu memory, in bytes.
func meminfo(b *testing.B) (slab, percpu int64) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(fs[1], 10, 64)
		switch fs[0] {
		case "Slab:":
			slab = n << 10
		case "Percpu:":
			percpu = n << 10
		}
	}
	return slab, percpu
}

// BenchmarkInstall installs b.N sessions' elements in a namespace's table
// at an unbounded rate and reports what a session costs: the netlink work
// per install (ns/op, the table's goroutine, batched as udpmux batches
// them) and the kernel memory its four elements and their counters take
// (slab-bytes/session, percpu-bytes/session, read from /proc/meminfo, which
// other processes move too: use a large -benchtime, such as 20000x).
//
//	go test -run XXX -bench BenchmarkInstall -benchtime 20000x ./fastpath/
func BenchmarkInstall(b *testing.B) {
	tb := benchTable(b, Config{Rate: 1 << 30, Max: b.N + 1})
	slab0, pcpu0 := meminfo(b)
	b.ResetTimer()
	install(b, tb, b.N)
	b.StopTimer()
	slab1, pcpu1 := meminfo(b)
	b.ReportMetric(float64(slab1-slab0)/float64(b.N), "slab-bytes/session")
	b.ReportMetric(float64(pcpu1-pcpu0)/float64(b.N), "percpu-bytes/session")
}

// benchTable opens a table of kind Any in a namespace of its own.
func benchTable(b *testing.B, cfg Config) *Table {
	netlab.RequireRoot(b)
	ns := netlab.New(b).NewNamespace("bench")
	cfg.Kinds = []Kind{Any}
	var tb *Table
	if err := ns.Do(func() (err error) { tb, err = Open(cfg, nil); return err }); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tb.Close(false) })
	return tb
}

// install offloads n sessions of distinct 4-tuples and waits until the
// kernel has them all.
func install(b *testing.B, tb *Table, n int) {
	for i := range n {
		c := netip.AddrFrom4([4]byte{198, 18, byte(i >> 16), byte(i >> 8)})
		f := Flow{Kind: Any, Client: netip.AddrPortFrom(c, uint16(1024+i&0xff)),
			Local:   netip.MustParseAddrPort("198.18.255.1:51820"),
			Source:  netip.AddrPortFrom(netip.MustParseAddr("198.19.0.1"), uint16(1024+i%60000)),
			Backend: netip.AddrPortFrom(netip.MustParseAddr("198.19.0.2"), uint16(51820+i/60000))}
		if _, err := tb.Offload(f); err != nil {
			b.Fatal(err)
		}
	}
	deadline := time.Now().Add(time.Minute)
	for tb.Stats().Installs < uint64(n) {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d installed after a minute", tb.Stats().Installs, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkPoll reads the counters of 10 000 offloaded sessions, as the
// table's goroutine does every Poll (ns/op is one reading of them all).
//
//	go test -run XXX -bench BenchmarkPoll ./fastpath/
func BenchmarkPoll(b *testing.B) {
	tb := benchTable(b, Config{Rate: 1 << 30, Max: 10000, Poll: time.Hour})
	install(b, tb, 10000)
	b.ResetTimer()
	for range b.N {
		tb.poll(time.Now())
	}
}
