//go:build linux

package udpsys

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"testing"
)

func TestParseProcNetUDP(t *testing.T) {
	// The same sockets as the kernel prints them on this machine's byte order.
	word := func(a netip.Addr) string {
		b := a.As4()
		return fmt.Sprintf("%08X", binary.NativeEndian.Uint32(b[:]))
	}
	a1, a2 := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.19.0.2")
	v6 := netip.MustParseAddr("::ffff:198.19.0.1").As16()
	var v6hex string
	for i := 0; i < 16; i += 4 {
		v6hex += fmt.Sprintf("%08X", binary.NativeEndian.Uint32(v6[i:i+4]))
	}
	text := fmt.Sprintf(`   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  512: %s:04AA 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 12345 2 0000000000000000 0
  513: %s:9C41 %s:04AB 01 00000000:00000000 00:00000000 00000000     0        0 12346 2 0000000000000000 17
   sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
   77: %s:9C42 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 0
`, word(a1), word(a1), word(a2), v6hex)
	got, err := ParseProcNetUDP(text)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	want := []BoundSocket{
		{ap("198.18.0.2:1194"), ap("0.0.0.0:0"), 12345, 0},
		{ap("198.18.0.2:40001"), ap("198.19.0.2:1195"), 12346, 17},
		{ap("198.19.0.1:40002"), ap("[::]:0"), 1, 0},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ParseProcNetUDP:\n got %v\nwant %v", got, want)
	}
	if _, err := ParseProcNetUDP("0: 0102:0000 00000000:0000 07 0 0 0 0 0 1 2 0 0"); err == nil {
		t.Error("a short address parsed")
	}
}

// TestBoundSocketsFindsOwnSocket: a socket this process opens is listed, by
// its inode, and its owner is this process.
func TestBoundSocketsFindsOwnSocket(t *testing.T) {
	s, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), ListenConfig{IncomingCPU: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ino, err := Inode(s.FD)
	if err != nil {
		t.Fatal(err)
	}
	socks, err := BoundSockets()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, b := range socks {
		if b.Inode == ino {
			found = b.Local == s.Local
		}
	}
	if !found {
		t.Fatalf("socket %v (inode %d) not listed in %v", s.Local, ino, socks)
	}
	if pid, _, ok := SocketOwner(ino); !ok || pid != os.Getpid() {
		t.Errorf("SocketOwner = %d, %v; want this process", pid, ok)
	}
}
