//go:build linux

package mux

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/udpsys"
)

// rawClients are many client sockets, one flow each, driven without the Go
// runtime's poller so that thousands stay cheap and allocation-free.
type rawClients struct {
	fds  []int
	send *udpsys.Batch
	recv *udpsys.Batch
}

func newRawClients(t *testing.T, n int, server netip.AddrPort) *rawClients {
	t.Helper()
	rc := &rawClients{send: udpsys.NewBatch(1, 2048, unix.AF_INET), recv: udpsys.NewBatch(8, 70000, unix.AF_INET)}
	t.Cleanup(func() {
		for _, fd := range rc.fds {
			unix.Close(fd)
		}
	})
	for i := 0; i < n; i++ {
		s, err := udpsys.DialUDP(server, udpsys.ListenConfig{})
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		rc.fds = append(rc.fds, s.FD)
	}
	return rc
}

// exchange sends one datagram from each client, filled by fill, and returns
// every reply. It works in chunks, so that a slow server's receive buffer is
// never asked to hold more than one chunk.
func (rc *rawClients) exchange(t *testing.T, chunk int, limit time.Duration, fill func(i int, b []byte) int) [][]byte {
	t.Helper()
	var got [][]byte
	for from := 0; from < len(rc.fds); from += chunk {
		part := &rawClients{fds: rc.fds[from:min(from+chunk, len(rc.fds))], send: rc.send, recv: rc.recv}
		part.sendAll(t, func(i int, b []byte) int { return fill(from+i, b) })
		got = append(got, part.receiveAll(t, limit)...)
	}
	return got
}

// sendAll sends one datagram from each client, filled by fill.
func (rc *rawClients) sendAll(t *testing.T, fill func(i int, b []byte) int) {
	t.Helper()
	for i, fd := range rc.fds {
		m := &rc.send.Msgs[0]
		m.N = fill(i, m.Buf)
		if _, err := rc.send.Send(fd, 0, 1); err != nil {
			t.Fatalf("client %d send: %v", i, err)
		}
	}
}

// receiveAll waits for one datagram on every client and returns them.
func (rc *rawClients) receiveAll(t *testing.T, limit time.Duration) [][]byte {
	t.Helper()
	got := make([][]byte, len(rc.fds))
	missing := len(rc.fds)
	deadline := time.Now().Add(limit)
	for missing > 0 {
		for i, fd := range rc.fds {
			if got[i] != nil {
				continue
			}
			n, err := rc.recv.Recv(fd)
			if err == unix.EAGAIN {
				continue
			}
			if err != nil {
				t.Fatalf("client %d recv: %v", i, err)
			}
			if n > 0 {
				m := rc.recv.Msgs[0]
				got[i] = append([]byte{}, m.Buf[:m.N]...)
				missing--
			}
		}
		if missing > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d clients got no reply within %s", missing, len(rc.fds), limit)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return got
}
