//go:build linux

package mux

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// benchmarkLoop drives one loop by hand: clients send a batch over loopback,
// the loop reads, dispatches and (for echo) answers, clients drain. It
// reports the loop's own cost per datagram separately from the clients'.
func benchmarkLoop(b *testing.B, h session.Handler, flows int) {
	cfg := echoConfig("127.0.0.1:0", 1)
	cfg.Listeners[0].Handler = h
	cfg.Logger = quietLogger()
	srv, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	l := srv.loops[0]
	ls := l.socks[0]
	perFlow := max(64/flows, 1)
	var clients []int
	for i := 0; i < flows; i++ {
		s, err := udpsys.DialUDP(srv.Addr(0), udpsys.ListenConfig{})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		clients = append(clients, s.FD)
	}
	out := udpsys.NewBatch(perFlow, 256, unix.AF_INET)
	in := udpsys.NewBatch(64, 256, unix.AF_INET)
	for i := range out.Msgs {
		out.Msgs[i].N = 64
	}
	_, echo := h.(session.Echo)
	round := func(start int) int {
		n := 0
		for i := 0; i < 64/perFlow; i++ {
			fd := clients[(start+i)%flows]
			out.Send(fd, 0, perFlow)
			n += perFlow
		}
		l.readSocket(ls)
		if echo {
			for i := 0; i < 64/perFlow; i++ {
				for {
					if _, err := in.Recv(clients[(start+i)%flows]); err != nil {
						break
					}
				}
			}
		}
		return n
	}
	for i := 0; i < flows; i += 64 / perFlow {
		round(i)
	}
	b.ResetTimer()
	total := 0
	for i := 0; i < b.N; i++ {
		total += round(i * (64 / perFlow))
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(total), "ns/datagram")
}

func BenchmarkLoopSink256(b *testing.B)   { benchmarkLoop(b, session.Discard{}, 256) }
func BenchmarkLoopEcho256(b *testing.B)   { benchmarkLoop(b, session.Echo{}, 256) }
func BenchmarkLoopSink10000(b *testing.B) { benchmarkLoop(b, session.Discard{}, 10000) }
