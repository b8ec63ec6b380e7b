package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pion/transport/v5/udp"

	"github.com/udpmux/udpmux/mux"
)

// pionWriteInterval is how long pion's batched writer may hold a reply
// before it sends the batch: its flush timer.
const pionWriteInterval = time.Millisecond

// listen opens a net.Listener that accepts a net.Conn per peer: pion's
// udp.Listener or udpmux's mux.Listener, each with the batched I/O it
// offers and one core's worth of loops.
func listen(kind string, ap netip.AddrPort, rcvbuf, sndbuf int) (net.Listener, error) {
	switch kind {
	case "pion":
		lc := udp.ListenConfig{
			Backlog:         4096,
			ReadBufferSize:  rcvbuf,
			WriteBufferSize: sndbuf,
			Batch:           udp.BatchIOConfig{Enable: true, ReadBatchSize: 64, WriteBatchSize: 64, WriteBatchInterval: pionWriteInterval},
		}
		return lc.Listen("udp4", net.UDPAddrFromAddrPort(ap))
	case "muxlisten":
		lc := mux.ListenConfig{Workers: 1, Batch: 64, AcceptBacklog: 4096, MaxSessions: 1 << 20}
		ln, err := lc.Listen(context.Background(), "udp4", ap.String())
		if err != nil {
			return nil, err // not a nil *mux.Listener in a non-nil net.Listener
		}
		return ln, nil
	}
	return nil, fmt.Errorf("no listener %q", kind)
}

// serveListener accepts every Conn and serves each on a goroutine of its
// own, until the listener fails.
func serveListener(ln net.Listener, echo bool, c *counters) error {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		go serveConn(conn, echo, c)
	}
}

// serveConn reads datagrams from conn and, in echo mode, writes each back.
func serveConn(conn net.Conn, echo bool, c *counters) {
	defer conn.Close()
	buf := make([]byte, 65536)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return
		}
		c.Received.Add(1)
		if echo {
			if _, err := conn.Write(buf[:n]); err == nil {
				c.Sent.Add(1)
			}
		}
	}
}
