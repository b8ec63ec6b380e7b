//go:build linux

package e2e

import (
	"bufio"
	"crypto/x509"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/netlab"
)

// openvpnPath is where Debian's openvpn package installs the binary.
const openvpnPath = "/usr/sbin/openvpn"

// Timeouts of the OpenVPN tests. Each wait is also cut short by the test's
// overall budget (vpnLab.wait), so that a test never runs past vpnBudget.
const (
	vpnBudget       = 75 * time.Second // whole test up to the last wait; pings, shutdown and teardown add at most ~12 s
	serverUpTimeout = 10 * time.Second // OpenVPN server start
	tunnelUpTimeout = 30 * time.Second // per batch of clients, from start to "Initialization Sequence Completed"
	statusTimeout   = 10 * time.Second // for the servers' status files to list every client
)

// ovpnVerb is OpenVPN's log level: 3, or UDPMUX_E2E_OVPN_VERB for debugging.
// The tests parse lines logged at level 3.
func ovpnVerb() string {
	if v := os.Getenv("UDPMUX_E2E_OVPN_VERB"); v != "" {
		return v
	}
	return "3"
}

// ovpnServer is one OpenVPN server process in TLS mode.
type ovpnServer struct {
	Name    string         // label used in file names and messages, e.g. "server1194"
	Listen  netip.AddrPort // UDP address it listens on
	Subnet  netip.Prefix   // its tunnel subnet, e.g. 10.8.0.0/24
	Gateway netip.Addr     // its own tunnel address, the first of Subnet
	Log     string         // path of its --log file
	Status  string         // path of its --status file (version 2, rewritten every second)
	proc    *netlab.Process
}

// startServer runs an OpenVPN server inside ns, listening on listen with
// the tunnel subnet (a /24), in TLS mode with certificates from p; extra
// options (such as "--float") are appended to its command line.
func startServer(t testing.TB, lab *netlab.Lab, ns *netlab.Namespace, p *pki, dir string, listen netip.AddrPort, subnet netip.Prefix, extra ...string) *ovpnServer {
	t.Helper()
	name := fmt.Sprintf("server%d", listen.Port())
	crt := p.Issue(name, x509.ExtKeyUsageServerAuth)
	s := &ovpnServer{
		Name:    name,
		Listen:  listen,
		Subnet:  subnet,
		Gateway: subnet.Addr().Next(),
		Log:     filepath.Join(dir, name+".log"),
		Status:  filepath.Join(dir, name+".status"),
	}
	mask := net4Mask(subnet.Bits())
	args := []string{
		"--server", subnet.Addr().String(), mask,
		"--topology", "subnet",
		"--dev", fmt.Sprintf("tun%d", listen.Port()), // its own name: both servers share a namespace
		"--dev-type", "tun",
		"--proto", "udp4",
		"--local", listen.Addr().String(),
		"--port", strconv.Itoa(int(listen.Port())),
		"--ca", p.CAFile(),
		"--cert", crt.Cert,
		"--key", crt.Key,
		"--dh", "none",
		"--data-ciphers", "AES-256-GCM",
		"--cipher", "AES-256-GCM",
		"--disable-dco",
		"--keepalive", "10", "60",
		"--status", s.Status, "1",
		"--status-version", "2",
		"--verb", ovpnVerb(),
		"--log", s.Log,
	}
	args = append(args, extra...)
	s.proc = lab.Start(ns.Command(openvpnPath, args...))
	return s
}

// net4Mask renders an IPv4 prefix length as a dotted mask.
func net4Mask(bits int) string {
	m := uint32(0xffffffff) << (32 - bits)
	if bits == 0 {
		m = 0
	}
	return fmt.Sprintf("%d.%d.%d.%d", m>>24, m>>16&0xff, m>>8&0xff, m&0xff)
}

// ovpnClient is one OpenVPN client process in its own namespace.
type ovpnClient struct {
	Name   string // its certificate's common name, e.g. "client3"
	NS     *netlab.Namespace
	Link   string // its interface towards the bridge (set by vpnLab.addClients)
	Log    string
	Remote netip.AddrPort
	proc   *netlab.Process
}

// clientDev is the tun device of every client (each is alone in its namespace).
const clientDev = "tun0"

// startClient runs an OpenVPN client named cn inside ns, connecting to
// remote; extra options (such as "--tls-crypt", FILE) are appended to its
// command line.
func startClient(t testing.TB, lab *netlab.Lab, ns *netlab.Namespace, p *pki, dir, cn string, remote netip.AddrPort, extra ...string) *ovpnClient {
	t.Helper()
	crt := p.Issue(cn, x509.ExtKeyUsageClientAuth)
	c := &ovpnClient{Name: cn, NS: ns, Log: filepath.Join(dir, cn+".log"), Remote: remote}
	args := []string{
		"--client",
		"--dev", clientDev,
		"--dev-type", "tun",
		"--proto", "udp4",
		"--remote", remote.Addr().String(), strconv.Itoa(int(remote.Port())),
		"--nobind",
		"--ca", p.CAFile(),
		"--cert", crt.Cert,
		"--key", crt.Key,
		"--remote-cert-tls", "server",
		"--data-ciphers", "AES-256-GCM",
		"--disable-dco",
		"--connect-retry", "1", "2",
		"--verb", ovpnVerb(),
		"--log", c.Log,
	}
	args = append(args, extra...)
	c.proc = lab.Start(ns.Command(openvpnPath, args...))
	return c
}

// waitLog polls a log file until it contains want, the process exits, or the
// timeout passes.
func waitLog(path, want string, proc *netlab.Process, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		data, _ := os.ReadFile(path)
		if strings.Contains(string(data), want) {
			return nil
		}
		if proc != nil && proc.Exited() {
			return fmt.Errorf("process exited before logging %q: %v", want, proc.Wait())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %q in %s after %v", want, filepath.Base(path), timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// initDone is what OpenVPN logs once its tunnel is configured.
const initDone = "Initialization Sequence Completed"

// WaitUp waits for the client's tunnel to come up and returns the IPv4
// address the server pushed for its tun device.
func (c *ovpnClient) WaitUp(timeout time.Duration) (netip.Prefix, error) {
	if err := waitLog(c.Log, initDone, c.proc, timeout); err != nil {
		return netip.Prefix{}, fmt.Errorf("%s: tunnel did not come up: %w", c.Name, err)
	}
	out, err := c.NS.Command("ip", "-4", "-o", "addr", "show", "dev", clientDev).CombinedOutput()
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s: ip addr show %s: %v: %s", c.Name, clientDev, err, out)
	}
	pfx, err := parseInet(string(out))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s: %v", c.Name, err)
	}
	return pfx, nil
}

var inetRE = regexp.MustCompile(`\binet (\d+\.\d+\.\d+\.\d+/\d+)`)

// parseInet finds the first IPv4 address in `ip -4 -o addr show` output.
func parseInet(out string) (netip.Prefix, error) {
	m := inetRE.FindStringSubmatch(out)
	if m == nil {
		return netip.Prefix{}, fmt.Errorf("no IPv4 address in %q", strings.TrimSpace(out))
	}
	return netip.ParsePrefix(m[1])
}

// statusClient is one CLIENT_LIST row of an OpenVPN status file.
type statusClient struct {
	CommonName string
	Real       netip.AddrPort // the client's address as the server sees it
	Virtual    netip.Addr     // its tunnel address
}

// parseStatus reads the CLIENT_LIST rows of a status file written with
// --status-version 2 (comma separated, header rows start with HEADER).
func parseStatus(data string) ([]statusClient, error) {
	var out []statusClient
	sc := bufio.NewScanner(strings.NewReader(data))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ",")
		if len(f) < 4 || f[0] != "CLIENT_LIST" {
			continue
		}
		real, err := netip.ParseAddrPort(f[2])
		if err != nil {
			return nil, fmt.Errorf("status: bad real address in %q: %v", sc.Text(), err)
		}
		virt, err := netip.ParseAddr(f[3])
		if err != nil {
			return nil, fmt.Errorf("status: bad virtual address in %q: %v", sc.Text(), err)
		}
		out = append(out, statusClient{CommonName: f[1], Real: real, Virtual: virt})
	}
	return out, sc.Err()
}

// Clients returns the server's current status-file client list.
func (s *ovpnServer) Clients() ([]statusClient, error) {
	data, err := os.ReadFile(s.Status)
	if err != nil {
		return nil, err
	}
	return parseStatus(string(data))
}

// WaitClients polls the status file until it lists exactly the common names
// in want, and returns the rows.
func (s *ovpnServer) WaitClients(want []string, timeout time.Duration) ([]statusClient, error) {
	deadline := time.Now().Add(timeout)
	for {
		rows, err := s.Clients()
		if err == nil && sameNames(rows, want) {
			return rows, nil
		}
		if time.Now().After(deadline) {
			return rows, fmt.Errorf("%s: status file lists %v after %v (err %v); want exactly %v", s.Name, rows, timeout, err, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func sameNames(rows []statusClient, want []string) bool {
	if len(rows) != len(want) {
		return false
	}
	seen := map[string]int{}
	for _, r := range rows {
		seen[r.CommonName]++
	}
	for _, w := range want {
		if seen[w] != 1 {
			return false
		}
	}
	return true
}

var peerInitRE = regexp.MustCompile(`\[([^\]]+)\] Peer Connection Initiated with \[AF_INET6?\](\S+)`)

// peerAddresses parses a server log and returns, per common name, every
// distinct source address:port its "Peer Connection Initiated" lines show.
func peerAddresses(log string) map[string][]string {
	out := map[string][]string{}
	for _, m := range peerInitRE.FindAllStringSubmatch(log, -1) {
		cn, addr := m[1], m[2]
		dup := false
		for _, a := range out[cn] {
			dup = dup || a == addr
		}
		if !dup {
			out[cn] = append(out[cn], addr)
		}
	}
	return out
}

// dumpLogs prints the named files into the test log (for failures).
func dumpLogs(t testing.TB, paths ...string) {
	t.Helper()
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Logf("==== %s: %v", p, err)
			continue
		}
		t.Logf("==== %s ====\n%s", p, tail(string(data), 12000))
	}
}

// tail returns at most the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}

func TestParseStatus(t *testing.T) {
	const data = `TITLE,OpenVPN 2.6.14 x86_64-pc-linux-gnu
TIME,2026-11-23 11:00:00,1795000000
HEADER,CLIENT_LIST,Common Name,Real Address,Virtual Address,Virtual IPv6 Address,Bytes Received,Bytes Sent,Connected Since,Connected Since (time_t),Username,Client ID,Peer ID,Data Channel Cipher
CLIENT_LIST,client1,198.19.0.1:40001,10.8.0.2,,3000,2000,2026-11-23 11:00:00,1795000000,UNDEF,0,0,AES-256-GCM
CLIENT_LIST,client2,198.19.0.1:40002,10.8.0.3,,3000,2000,2026-11-23 11:00:00,1795000000,UNDEF,1,1,AES-256-GCM
HEADER,ROUTING_TABLE,Virtual Address,Common Name,Real Address,Last Ref,Last Ref (time_t)
ROUTING_TABLE,10.8.0.2,client1,198.19.0.1:40001,2026-11-23 11:00:00,1795000000
GLOBAL_STATS,Max bcast/mcast queue length,0
END
`
	rows, err := parseStatus(data)
	if err != nil {
		t.Fatal(err)
	}
	want := []statusClient{
		{"client1", netip.MustParseAddrPort("198.19.0.1:40001"), netip.MustParseAddr("10.8.0.2")},
		{"client2", netip.MustParseAddrPort("198.19.0.1:40002"), netip.MustParseAddr("10.8.0.3")},
	}
	if len(rows) != len(want) {
		t.Fatalf("rows = %v; want %v", rows, want)
	}
	for i := range want {
		if rows[i] != want[i] {
			t.Errorf("row %d = %+v; want %+v", i, rows[i], want[i])
		}
	}
	if !sameNames(rows, []string{"client2", "client1"}) || sameNames(rows, []string{"client1"}) {
		t.Error("sameNames wrong")
	}
}

func TestPeerAddresses(t *testing.T) {
	const log = `2026-11-23 11:00:00 198.19.0.1:40001 [client1] Peer Connection Initiated with [AF_INET]198.19.0.1:40001
2026-11-23 11:00:01 198.19.0.1:40002 [client2] Peer Connection Initiated with [AF_INET]198.19.0.1:40002
2026-11-23 11:00:09 198.19.0.1:40001 [client1] Peer Connection Initiated with [AF_INET]198.19.0.1:40001
2026-11-23 11:00:09 198.19.0.1:40003 [client2] Peer Connection Initiated with [AF_INET]198.19.0.1:40003
`
	got := peerAddresses(log)
	if len(got["client1"]) != 1 || len(got["client2"]) != 2 {
		t.Fatalf("peerAddresses = %v", got)
	}
}

func TestParseInet(t *testing.T) {
	out := "5: tun0    inet 10.9.0.3/24 scope global tun0\\       valid_lft forever preferred_lft forever\n"
	p, err := parseInet(out)
	if err != nil || p != netip.MustParsePrefix("10.9.0.3/24") {
		t.Fatalf("parseInet = %v, %v", p, err)
	}
	if _, err := parseInet("nothing"); err == nil {
		t.Fatal("parseInet accepted garbage")
	}
	if net4Mask(24) != "255.255.255.0" || net4Mask(16) != "255.255.0.0" || net4Mask(0) != "0.0.0.0" {
		t.Fatal("net4Mask wrong")
	}
}
