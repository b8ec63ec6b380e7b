//go:build linux

package mux

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"
)

// benchConn returns a Conn of a one-loop Listener and its peer, which reads
// nothing: what the Conn writes past the peer's receive buffer the kernel
// drops at the peer, after the sender has paid for it.
func benchConn(b *testing.B) (*Listener, net.Conn) {
	b.Helper()
	lc := ListenConfig{Workers: 1, Logger: quietLogger()}
	ln, err := lc.Listen(context.Background(), "udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	peer, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(ln.Addr().String())))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { peer.Close() })
	peer.Write([]byte("open"))
	c, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 8)); err != nil {
		b.Fatal(err)
	}
	return ln, c
}

// reportSent reports the share of b.N datagrams the listener sent and the
// share it dropped, once the last writes have left the loop.
func reportSent(b *testing.B, ln *Listener) {
	var st ListenerStats
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		s, _ := ln.Stats()
		if st = s.Listeners[0]; st.TxDatagrams+st.SendDrops+st.SendErrors >= uint64(b.N) {
			break
		}
	}
	b.ReportMetric(float64(st.TxDatagrams)/float64(b.N), "sent/op")
	b.ReportMetric(float64(st.SendDrops+st.SendErrors)/float64(b.N), "dropped/op")
}

// BenchmarkConnWrite measures Conn.Write of 1200-byte datagrams, from one
// goroutine and from several at once on the same Conn.
func BenchmarkConnWrite(b *testing.B) {
	p := make([]byte, 1200)
	b.Run("serial", func(b *testing.B) {
		ln, c := benchConn(b)
		b.SetBytes(int64(len(p)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Write(p); err != nil {
				b.Fatal(err)
			}
		}
		reportSent(b, ln)
	})
	b.Run("parallel", func(b *testing.B) {
		ln, c := benchConn(b)
		b.SetBytes(int64(len(p)))
		b.ReportAllocs()
		b.SetParallelism(4)
		b.ResetTimer() // the Listener's flow table is no part of a write
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := c.Write(p); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportSent(b, ln)
	})
}
