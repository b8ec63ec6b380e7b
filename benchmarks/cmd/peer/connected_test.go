package main

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestConnected: each of the first max peers gets a socket of its own
// (its later datagrams reach that socket, not the listening one) and all its
// datagrams back; a peer beyond max gets none and is counted as refused.
func TestConnected(t *testing.T) {
	const max = 2
	var c counters
	s, err := newConnectedServer(netip.MustParseAddrPort("127.0.0.1:0"), 0, 0, max, true, &c)
	if err != nil {
		t.Fatal(err)
	}
	go s.serve()
	var clients []*net.UDPConn
	for range max + 1 {
		cl, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(s.ap))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		clients = append(clients, cl)
	}
	for round := range 3 {
		for i, cl := range clients {
			msg := fmt.Sprintf("%d-%d", i, round)
			cl.Write([]byte(msg))
			wait := time.Second
			if i >= max {
				wait = 200 * time.Millisecond // what must not come back
			}
			cl.SetReadDeadline(time.Now().Add(wait))
			buf := make([]byte, 64)
			n, err := cl.Read(buf)
			switch {
			case i < max && (err != nil || string(buf[:n]) != msg):
				t.Fatalf("client %d round %d: %q, %v; want its echo", i, round, buf[:n], err)
			case i >= max && err == nil:
				t.Fatalf("client %d beyond %d sessions got %q back", i, max, buf[:n])
			}
		}
	}
	if got := c.Refused.Load(); got != 3 {
		t.Errorf("refused %d, want 3 (the third client's datagrams)", got)
	}
	if got := c.Sent.Load(); got != 3*max {
		t.Errorf("sent %d, want %d", got, 3*max)
	}
}
