//go:build linux

package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
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
