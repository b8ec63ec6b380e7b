package mux

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/udpsys"
)

// TestSteadyStatePathAllocatesNothing drives one loop by hand over real
// sockets: clients send a batch, the loop reads it with recvmmsg, dissects,
// finds each session in the flow table, runs the echo handler and answers
// with sendmmsg. Once the sessions exist, a whole round must allocate nothing.
func TestSteadyStatePathAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	const flows, perFlow = 8, 8
	srv, err := New(echoConfig("127.0.0.1:0", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.cfg.Logger = quietLogger()
	l := srv.loops[0]
	ls := l.socks[0]

	var clients []int
	for i := 0; i < flows; i++ {
		s, err := udpsys.DialUDP(srv.Addr(0), udpsys.ListenConfig{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		clients = append(clients, s.FD)
	}
	out := udpsys.NewBatch(perFlow, 256, unix.AF_INET)
	in := udpsys.NewBatch(perFlow, 256, unix.AF_INET)
	for i := range out.Msgs {
		out.Msgs[i].N = 128
	}
	echoed := 0
	round := func() {
		for _, fd := range clients {
			if _, err := out.Send(fd, 0, perFlow); err != nil {
				t.Fatalf("client send: %v", err)
			}
		}
		l.readSocket(ls)
		for _, fd := range clients {
			for got := 0; got < perFlow; {
				n, err := in.Recv(fd)
				if err != nil {
					t.Fatalf("client recv after %d of %d: %v", got, perFlow, err)
				}
				got += n
				echoed += n
			}
		}
	}
	round() // opens the sessions: allocation is expected here
	if allocs := testing.AllocsPerRun(200, round); allocs != 0 {
		t.Errorf("steady state: %.2f allocations per round of %d datagrams, want 0", allocs, flows*perFlow)
	}
	// One opening round, AllocsPerRun's warm-up round, then 200 measured.
	if want := 202 * flows * perFlow; echoed != want {
		t.Errorf("echoed %d datagrams, want %d", echoed, want)
	}
}
