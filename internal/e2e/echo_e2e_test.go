//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/netlab"
)

// Sizes of the echo smoke test.
const (
	echoFlows      = 50
	echoPerFlow    = 20 // echoFlows*echoPerFlow = 1000 datagrams
	echoReplyWait  = 2 * time.Second
	echoTestBudget = 30 * time.Second
)

// TestEchoThroughNetns runs the udpmux daemon with the echo handler in one
// namespace and checks from another that 1000 datagrams over 50 flows (50
// client sockets, each with its own source port, 20 datagrams each, one in
// flight per flow) all come back unchanged from the listener's address.
func TestEchoThroughNetns(t *testing.T) {
	netlab.RequireRoot(t)
	udpmuxBinary(t) // build (or fail) before building the lab
	lab := netlab.New(t)
	dir := t.TempDir()
	mux := lab.NewNamespace("mux")
	cli := lab.NewNamespace("client")
	lab.Connect(cli, "198.18.0.1/24", mux, "198.18.0.2/24")
	listen := netip.MustParseAddrPort("198.18.0.2:7777")

	config := fmt.Sprintf(`workers: 2
batch: 64
listeners:
  - name: echo
    address: %q
    handler: echo
    dissector: flow
    idle_timeout: 60s
sessions:
  max: 10000
  max_per_source: 0
`, listen.String())
	d := startDaemon(t, lab, mux, dir, config, "echo", listen.Port())
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, d.Config, d.Log)
		}
	})

	conns := make([]*net.UDPConn, echoFlows)
	if err := cli.Do(func() error {
		for i := range conns {
			c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(listen))
			if err != nil {
				return err
			}
			conns[i] = c
		}
		return nil
	}); err != nil {
		t.Fatalf("open client sockets: %v", err)
	}
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()

	start := time.Now()
	deadline := start.Add(echoTestBudget)
	got := make([]int, echoFlows)
	type slow struct {
		rtt      time.Duration
		flow, at int
	}
	slowest := make([]slow, echoFlows) // per flow, its slowest round trip
	errs := make([]error, echoFlows)
	var wg sync.WaitGroup
	for f, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 2048)
			for seq := range echoPerFlow {
				msg := fmt.Appendf(nil, "udpmux-e2e flow=%02d seq=%02d local=%v", f, seq, c.LocalAddr())
				sent := time.Now()
				if _, err := c.Write(msg); err != nil {
					errs[f] = fmt.Errorf("flow %d seq %d: send: %v", f, seq, err)
					return
				}
				wait := time.Now().Add(echoReplyWait)
				if wait.After(deadline) {
					wait = deadline
				}
				c.SetReadDeadline(wait)
				n, err := c.Read(buf)
				if err != nil {
					errs[f] = fmt.Errorf("flow %d (%v) seq %d: no reply: %v", f, c.LocalAddr(), seq, err)
					return
				}
				if !bytes.Equal(buf[:n], msg) {
					errs[f] = fmt.Errorf("flow %d seq %d: reply %q; want %q", f, seq, buf[:n], msg)
					return
				}
				if rtt := time.Since(sent); rtt > slowest[f].rtt {
					slowest[f] = slow{rtt, f, seq}
				}
				got[f]++
			}
		}()
	}
	wg.Wait()
	total := 0
	for f := range conns {
		total += got[f]
		if errs[f] != nil {
			t.Error(errs[f])
		}
	}
	if total != echoFlows*echoPerFlow {
		t.Errorf("%d of %d datagrams came back", total, echoFlows*echoPerFlow)
	}
	elapsed := time.Since(start)
	d.Stop(t)
	worst := slow{}
	for _, s := range slowest {
		if s.rtt > worst.rtt {
			worst = s
		}
	}
	t.Logf("echo: %d/%d datagrams over %d flows in %v; slowest round trip %v (flow %d, datagram %d)",
		total, echoFlows*echoPerFlow, echoFlows, elapsed.Round(time.Millisecond), worst.rtt.Round(time.Microsecond), worst.flow, worst.at)
}
