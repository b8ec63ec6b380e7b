//go:build linux

package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/udpmux/udpmux/proxy"
)

// TestMetricsServerClosesIdleConnections: a scraper's keep-alive
// connection is served request after request, and closed by the server once
// it has waited idle for the next request for the idle timeout, so that an
// abandoned one does not hold a descriptor for as long as the daemon runs.
func TestMetricsServerClosesIdleConnections(t *testing.T) {
	const idle = 500 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := metricsServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "udpmux_sessions 0\n")
	}), idle)
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	t.Cleanup(func() {
		hs.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Every read below gives up well after the server should have closed
	// the connection, rather than waiting forever if it does not, and
	// before the server's other timeouts (ReadTimeout stands in for a zero
	// IdleTimeout) would have.
	if err := c.SetDeadline(time.Now().Add(idle + 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for i := range 2 {
		if _, err := fmt.Fprint(c, "GET /metrics HTTP/1.1\r\nHost: udpmux\r\n\r\n"); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || string(body) != "udpmux_sessions 0\n" {
			t.Fatalf("response %d: %s %q %v", i, resp.Status, body, err)
		}
		if resp.Close {
			t.Fatalf("response %d: the server closes the connection after it", i)
		}
	}

	start := time.Now()
	n, err := br.Read(make([]byte, 1))
	waited := time.Since(start)
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("the idle connection was not closed: read %d bytes, %v, after %v (idle timeout %v)", n, err, waited, idle)
	}
	// The server starts the idle timeout when it has written the response,
	// a little before the client has read it.
	if waited < idle/2 {
		t.Errorf("the connection was closed %v after the last response, before the idle timeout %v", waited, idle)
	}
}

// checksCollector collects collectChecks of fixed backends.
type checksCollector []proxy.BackendStatus

func (c checksCollector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }
func (c checksCollector) Collect(ch chan<- prometheus.Metric) {
	for _, b := range c {
		collectChecks(ch, "vpn", b)
	}
}

// TestCheckMetrics: a backend with health checks has its verdict, probe
// counts and latest failure's time by reason; one without has none.
func TestCheckMetrics(t *testing.T) {
	at := time.Unix(1796620000, 500_000_000)
	c := checksCollector{
		{Addr: netip.MustParseAddrPort("10.0.0.1:1194"), Check: "down", ProbesOK: 7, ProbesFailed: 3,
			LastFailure: &proxy.CheckFailure{Kind: "timeout", Reason: "check: no answer (timeout)", At: at}},
		{Addr: netip.MustParseAddrPort("10.0.0.2:1194"), Check: "up", ProbesOK: 9},
		{Addr: netip.MustParseAddrPort("10.0.0.3:1194")}, // no checks
	}
	want := `
# HELP udpmux_proxy_backend_check_failure_timestamp_seconds When the backend's latest failed health probe was sent, by why it failed: timeout, refused (ICMP port unreachable), unproven (answers that did not prove the backend) or error.
# TYPE udpmux_proxy_backend_check_failure_timestamp_seconds gauge
udpmux_proxy_backend_check_failure_timestamp_seconds{backend="10.0.0.1:1194",listener="vpn",reason="timeout"} 1.7966200005e+09
# HELP udpmux_proxy_backend_check_up 1 if the backend passes its active health checks, 0 if not (listeners with health.probe only).
# TYPE udpmux_proxy_backend_check_up gauge
udpmux_proxy_backend_check_up{backend="10.0.0.1:1194",listener="vpn"} 0
udpmux_proxy_backend_check_up{backend="10.0.0.2:1194",listener="vpn"} 1
# HELP udpmux_proxy_health_probes_total Active health probes, by result: answered (ok) or not (failed).
# TYPE udpmux_proxy_health_probes_total counter
udpmux_proxy_health_probes_total{backend="10.0.0.1:1194",listener="vpn",result="failed"} 3
udpmux_proxy_health_probes_total{backend="10.0.0.1:1194",listener="vpn",result="ok"} 7
udpmux_proxy_health_probes_total{backend="10.0.0.2:1194",listener="vpn",result="failed"} 0
udpmux_proxy_health_probes_total{backend="10.0.0.2:1194",listener="vpn",result="ok"} 9
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
