package mmsg

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// udpSocket returns a UDP socket bound to an ephemeral loopback port.
func udpSocket(t *testing.T) (int, netip.AddrPort) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fd, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
}

func TestEchoBatch(t *testing.T) {
	client, _ := udpSocket(t)
	server, saddr := udpSocket(t)
	if err := unix.Connect(client, Sockaddr(saddr)); err != nil {
		t.Fatal(err)
	}
	out := NewBatch(3, 16, false)
	for i := range 3 {
		out.Bufs[i][0] = byte('a' + i)
		out.SetLen(i, i+1)
	}
	if n, err := out.Send(client, 3, 0); n != 3 || err != nil {
		t.Fatalf("Send = %d, %v", n, err)
	}
	in := NewBatch(8, 16, true)
	n, err := in.Recv(server, unix.MSG_WAITFORONE)
	if err != nil || n != 3 {
		t.Fatalf("Recv = %d, %v", n, err)
	}
	for i := range n {
		if in.Len(i) != i+1 || in.Bufs[i][0] != byte('a'+i) || in.Hdrs[i].Hdr.Namelen != unix.SizeofSockaddrInet4 {
			t.Fatalf("slot %d: len %d byte %q name length %d", i, in.Len(i), in.Bufs[i][0], in.Hdrs[i].Hdr.Namelen)
		}
	}
	in.EchoLens(n)
	if m, err := in.Send(server, n, 0); m != n || err != nil {
		t.Fatalf("echo Send = %d, %v", m, err)
	}
	back := NewBatch(8, 16, false)
	if m, err := back.Recv(client, unix.MSG_WAITFORONE); m != 3 || err != nil {
		t.Fatalf("client Recv = %d, %v", m, err)
	}
}
