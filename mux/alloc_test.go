//go:build linux

package mux

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// TestSteadyStatePathAllocatesNothing drives one loop by hand over real
// sockets: clients send a batch, the loop reads it with recvmmsg, dissects,
// finds each session in the flow table, runs the echo handler and answers
// with sendmmsg. Once the sessions exist, a whole round must allocate nothing.
func TestSteadyStatePathAllocatesNothing(t *testing.T) {
	t.Run("4-tuples", func(t *testing.T) { testSteadyState(t, echoConfig("127.0.0.1:0", 1), nil, false) })
	// Each client's datagrams as one segmented message, which arrives
	// coalesced (UDP GRO) and is cut apart.
	t.Run("coalesced", func(t *testing.T) { testSteadyState(t, echoConfig("127.0.0.1:0", 1), nil, true) })
	// Datagrams that carry an ID their sessions learned (idDissector): the
	// claim of every one is checked.
	cfg := echoConfig("127.0.0.1:0", 1)
	cfg.Listeners[0].Handler, cfg.Listeners[0].Dissector = learningEcho{}, idDissector{}
	t.Run("IDs", func(t *testing.T) { testSteadyState(t, cfg, []byte("d"), false) })
}

// learningEcho echoes; "k<id>" also makes the session learn id.
type learningEcho struct{ session.Echo }

func (learningEcho) Datagram(s session.Session, p []byte) {
	if p[0] == 'k' {
		s.AddKey(testID(s.Key().Scope(), p[1:5]))
	}
	s.Write(p)
}

// testSteadyState runs the test for cfg; with a prefix, each client's
// session first learns the client's ID, which every datagram then carries
// after the prefix; with gso, clients send their datagrams segmented.
func testSteadyState(t *testing.T, cfg Config, prefix []byte, gso bool) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	const flows, perFlow = 8, 8
	srv, err := New(cfg)
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
	if gso {
		out.EnableGSO()
	}
	for i := range out.Msgs {
		out.Msgs[i].N = 128
	}
	setID := func(c int, first byte) {
		for i := range out.Msgs {
			m := out.Msgs[i].Buf
			m[0] = first
			binary.BigEndian.PutUint32(m[1:], uint32(c))
		}
	}
	if prefix != nil {
		for c, fd := range clients {
			setID(c, 'k')
			out.Send(fd, 0, 1)
			l.readSocket(ls)
			in.Recv(fd)
		}
	}
	echoed := 0
	round := func() {
		for c, fd := range clients {
			if prefix != nil {
				setID(c, prefix[0])
			}
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
	round() // opens the sessions (4-tuples): allocation is expected here
	if allocs := testing.AllocsPerRun(200, round); allocs != 0 {
		t.Errorf("steady state: %.2f allocations per round of %d datagrams, want 0", allocs, flows*perFlow)
	}
	// One opening round, AllocsPerRun's warm-up round, then 200 measured.
	if want := 202 * flows * perFlow; echoed != want {
		t.Errorf("echoed %d datagrams, want %d", echoed, want)
	}
	if gso && srv.Stats().Listeners[0].RxCoalesced == 0 {
		t.Error("no datagram arrived coalesced: the case did not test GRO")
	}
}

// TestConnPathAllocatesNothing drives a Listener's loop by hand: a client
// sends, the loop reads and queues the datagram for its Conn, Read takes
// it, Write queues the answer for the loop, and the loop sends it when the
// wakeup arrives. Once the Conn is warm, a whole echo allocates nothing.
func TestConnPathAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	lc := ListenConfig{Workers: 1, Logger: quietLogger()}
	ln, err := lc.newListener(netip.MustParseAddrPort("127.0.0.1:0"), false)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.srv.Close()
	l := ln.srv.loops[0]
	client, err := udpsys.DialUDP(ln.srv.Addr(0), udpsys.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	unix.Write(client.FD, []byte("open"))
	l.readSocket(l.socks[0])
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	msg, buf, reply := make([]byte, 1200), make([]byte, 2048), make([]byte, 2048)
	c.Read(buf)
	echoed := 0
	round := func() {
		if _, err := unix.Write(client.FD, msg); err != nil {
			t.Fatalf("client send: %v", err)
		}
		l.readSocket(l.socks[0])
		n, err := c.Read(buf)
		if err != nil || n != len(msg) {
			t.Fatalf("Read: %d bytes, %v", n, err)
		}
		if _, err := c.Write(buf[:n]); err != nil {
			t.Fatalf("Write: %v", err)
		}
		l.onWake()
		if n, err := unix.Read(client.FD, reply); err != nil || n != len(msg) {
			t.Fatalf("client recv: %d bytes, %v", n, err)
		}
		echoed++
	}
	round() // makes the Conn's write buffer
	if allocs := testing.AllocsPerRun(200, round); allocs != 0 {
		t.Errorf("steady state: %.2f allocations per echo through a Conn, want 0", allocs)
	}
	st := ln.srv.Stats().Listeners[0]
	if want := uint64(echoed); st.TxDatagrams != want || c.(*Conn).Session().Stats().TxPackets != want {
		t.Errorf("TxDatagrams %d, session TxPackets %d; want %d each", st.TxDatagrams, c.(*Conn).Session().Stats().TxPackets, want)
	}
}
