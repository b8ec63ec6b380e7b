//go:build linux

package netlab

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

func TestSNATScript(t *testing.T) {
	s := snatScript("veth0", 5100, "198.18.0.3:40001", "198.18.0.3")
	for _, want := range []string{
		"table ip " + natTable + " {",
		"flush chain ip " + natTable + " postrouting",
		`oifname "veth0" udp sport 5100 counter snat ip to 198.18.0.3:40001`,
		`oifname "veth0" meta l4proto udp counter snat ip to 198.18.0.3`,
		`iifname "veth0" meta l4proto udp ct state new counter drop`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("snatScript lacks %q:\n%s", want, s)
		}
	}
}

func TestMissingTools(t *testing.T) {
	if msg := MissingTools(Tool{"sh", "dash"}); msg != "" {
		t.Fatalf("MissingTools(sh) = %q; want none missing", msg)
	}
	msg := MissingTools(Tool{"sh", "dash"}, Tool{"no-such-tool-x1", "pkg-x1"}, Tool{"no-such-tool-x2", "pkg-x2"})
	for _, want := range []string{"no-such-tool-x1 (apt-get install -y pkg-x1)", "no-such-tool-x2 (apt-get install -y pkg-x2)"} {
		if !strings.Contains(msg, want) {
			t.Errorf("MissingTools message %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "dash") {
		t.Errorf("MissingTools message %q names an installed tool", msg)
	}
	if p, err := LookPath("sh"); err != nil || !strings.HasPrefix(p, "/") {
		t.Errorf("LookPath(sh) = %q, %v", p, err)
	}
}

// TestSNAT moves a running UDP flow, whose client socket never changes, to
// other source ports and to a second source address with SNAT, and checks
// what the server sees and that its replies reach the client over the new
// mapping only: a reply sent to the old mapping is dropped. A second flow
// from the client gets a mapping of its own.
func TestSNAT(t *testing.T) {
	RequireRoot(t)
	RequireTools(t, ToolNft, ToolConntrack)
	lab := New(t)
	cli := lab.NewNamespace("natcli")
	srv := lab.NewNamespace("natsrv")
	cIf, _ := lab.Connect(cli, "198.18.0.1/24", srv, "198.18.0.2/24")
	cli.AddAddr(cIf, "198.18.0.3/24") // the second address the client roams to

	var server, client *net.UDPConn
	if err := srv.Do(func() (err error) {
		server, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(198, 18, 0, 2), Port: 5000})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	if err := cli.Do(func() (err error) {
		client, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 5100})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	serverAddr := netip.MustParseAddrPort("198.18.0.2:5000")
	buf := make([]byte, 64)

	// exchange sends one datagram to the server, checks the source it sees,
	// and answers it there; the client must get the answer.
	exchange := func(step string, client *net.UDPConn, want netip.AddrPort) {
		t.Helper()
		if _, err := client.WriteToUDPAddrPort([]byte(step), serverAddr); err != nil {
			t.Fatalf("%s: send: %v", step, err)
		}
		server.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, from, err := server.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("%s: server: %v", step, err)
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if string(buf[:n]) != step || from != want {
			t.Fatalf("%s: server got %q from %v; want %q from %v", step, buf[:n], from, step, want)
		}
		if _, err := server.WriteToUDPAddrPort([]byte("re "+step), from); err != nil {
			t.Fatalf("%s: reply: %v", step, err)
		}
		client.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err = client.ReadFromUDPAddrPort(buf)
		if err != nil || string(buf[:n]) != "re "+step {
			t.Fatalf("%s: client got %q, %v; want the reply", step, buf[:n], err)
		}
	}
	// noReply sends a datagram from the server to an old mapping: the
	// client must not receive it.
	noReply := func(step string, old netip.AddrPort) {
		t.Helper()
		if _, err := server.WriteToUDPAddrPort([]byte("stale "+step), old); err != nil {
			t.Fatalf("%s: send to the old mapping: %v", step, err)
		}
		client.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, _, err := client.ReadFromUDPAddrPort(buf); err == nil {
			t.Fatalf("%s: client received %q sent to the old mapping %v", step, buf[:n], old)
		} else if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("%s: client: %v", step, err)
		}
	}

	own := netip.MustParseAddrPort("198.18.0.1:5100")
	exchange("plain", client, own)

	rebind1 := netip.MustParseAddrPort("198.18.0.1:40001")
	cli.SNAT(cIf, 5100, rebind1)
	exchange("rebind1", client, rebind1)
	noReply("rebind1", own) // the socket's own port is no longer a mapping

	rebind2 := netip.MustParseAddrPort("198.18.0.1:40002")
	cli.SNAT(cIf, 5100, rebind2)
	exchange("rebind2", client, rebind2)
	noReply("rebind2", rebind1)

	roamed := netip.MustParseAddrPort("198.18.0.3:40003")
	cli.SNAT(cIf, 5100, roamed)
	exchange("roam", client, roamed)
	noReply("roam", rebind2)

	// Another socket, as of a client that reconnects, is another flow: it
	// gets the mapping's address with its own port, not the mapping (whose
	// conntrack entry the first flow holds).
	var other *net.UDPConn
	if err := cli.Do(func() (err error) {
		other, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 5200})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	exchange("another flow", other, netip.MustParseAddrPort("198.18.0.3:5200"))
	exchange("roam again", client, roamed)

	// Address only: the socket's port is kept.
	cli.SNAT(cIf, 5100, netip.AddrPortFrom(netip.MustParseAddr("198.18.0.3"), 0))
	exchange("address only", client, netip.MustParseAddrPort("198.18.0.3:5100"))

	cli.ClearSNAT()
	exchange("cleared", client, own)
	cli.ClearSNAT() // nothing to clear: no error
}
