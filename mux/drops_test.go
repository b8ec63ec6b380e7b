//go:build linux

package mux

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// TestKernelDropsAreCounted overflows a loop's socket while the loop is not
// reading: every datagram sent is then either read or counted as a kernel
// drop, exactly.
func TestKernelDropsAreCounted(t *testing.T) {
	cfg := echoConfig("127.0.0.1:0", 1)
	cfg.Listeners[0].Handler = session.Discard{}
	cfg.RecvBuffer = 4096 // the kernel's minimum: a few datagrams fit
	cfg.Logger = quietLogger()
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	l := srv.loops[0]
	client, err := udpsys.DialUDP(srv.Addr(0), udpsys.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	out := udpsys.NewBatch(64, 512, unix.AF_INET)
	for i := range out.Msgs {
		out.Msgs[i].N = 512
	}
	const rounds = 20
	for r := 0; r < rounds; r++ {
		if n, err := out.Send(client.FD, 0, 64); n != 64 || err != nil {
			t.Fatalf("send: %d, %v", n, err)
		}
	}
	l.readSocket(l.socks[0])
	// One more datagram after the overflow carries the final drop count.
	out.Send(client.FD, 0, 1)
	l.readSocket(l.socks[0])
	st := srv.Stats().Listeners[0]
	sent := uint64(rounds*64 + 1)
	if st.KernelDrops == 0 {
		t.Fatalf("no kernel drops counted with a %d-byte buffer", cfg.RecvBuffer)
	}
	if st.RxDatagrams+st.KernelDrops != sent {
		t.Errorf("received %d + dropped %d != sent %d", st.RxDatagrams, st.KernelDrops, sent)
	}
}
