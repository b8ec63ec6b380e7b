//go:build linux

package openvpn

// TestMakeCaptures records real OpenVPN traffic into testdata/. It runs only
// with -capture, as root, with /usr/sbin/openvpn and /dev/net/tun:
//
//	go test -run '^TestMakeCaptures$' ./dissect/openvpn/ -args -capture
//
// (or go generate ./dissect/openvpn/). For each variant of control channel
// protection it builds a lab of network namespaces (a server and two
// clients, each client on its own veth, addresses from 198.18.0.0/15),
// starts an OpenVPN server and two clients, pings through the tunnels in
// both directions, lets the first client renegotiate its keys, stops the
// clients (which say goodbye with explicit-exit-notify) and writes every UDP
// payload to or from the server's port, in order, with its direction and
// client. Beside the traffic it writes what OpenVPN itself says of each
// client: the session ID from the client's own log (verb 9) and the peer-id
// from the server's status file, which capture_test.go checks the dissector
// against. The certificates and keys are made afresh in a temporary
// directory and not kept. The lab removes every namespace and process it
// made, whether the run succeeds or not.

//go:generate go test -run ^TestMakeCaptures$ . -args -capture

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/netlab"
)

var captureFlag = flag.Bool("capture", false, "run OpenVPN in network namespaces and rewrite testdata/*.txt (needs root)")

const (
	openvpnPath = "/usr/sbin/openvpn"
	serverPort  = 1194
)

// captureVariant is one way of protecting the control channel.
type captureVariant struct {
	name string
	// args returns the options of the server and of client n (1 or 2),
	// given a directory holding the keys made by keys.
	server func(dir string) []string
	client func(dir string, n int) []string
	keys   func(t *testing.T, dir string)
}

var captureVariants = []captureVariant{
	{
		name:   "plain",
		server: func(string) []string { return nil },
		client: func(string, int) []string { return nil },
		keys:   func(*testing.T, string) {},
	},
	{
		name:   "tls-auth",
		server: func(dir string) []string { return []string{"--tls-auth", filepath.Join(dir, "ta.key"), "0"} },
		client: func(dir string, _ int) []string { return []string{"--tls-auth", filepath.Join(dir, "ta.key"), "1"} },
		keys: func(t *testing.T, dir string) {
			runOpenVPN(t, "--genkey", "secret", filepath.Join(dir, "ta.key"))
		},
	},
	{
		name:   "tls-crypt",
		server: func(dir string) []string { return []string{"--tls-crypt", filepath.Join(dir, "tc.key")} },
		client: func(dir string, _ int) []string { return []string{"--tls-crypt", filepath.Join(dir, "tc.key")} },
		keys: func(t *testing.T, dir string) {
			runOpenVPN(t, "--genkey", "secret", filepath.Join(dir, "tc.key"))
		},
	},
	{
		name: "tls-crypt-v2",
		server: func(dir string) []string {
			return []string{"--tls-crypt-v2", filepath.Join(dir, "tc2-server.key")}
		},
		client: func(dir string, n int) []string {
			return []string{"--tls-crypt-v2", filepath.Join(dir, fmt.Sprintf("tc2-client%d.key", n))}
		},
		keys: func(t *testing.T, dir string) {
			srv := filepath.Join(dir, "tc2-server.key")
			runOpenVPN(t, "--genkey", "tls-crypt-v2-server", srv)
			for n := 1; n <= 2; n++ {
				runOpenVPN(t, "--tls-crypt-v2", srv, "--genkey", "tls-crypt-v2-client",
					filepath.Join(dir, fmt.Sprintf("tc2-client%d.key", n)))
			}
		},
	},
}

func runOpenVPN(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(openvpnPath, args...).CombinedOutput(); err != nil {
		t.Fatalf("openvpn %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestMakeCaptures(t *testing.T) {
	if !*captureFlag {
		t.Skip("rewrites testdata/ from live OpenVPN runs; enable with -capture (needs root)")
	}
	if _, err := os.Stat(openvpnPath); err != nil {
		t.Fatalf("needs OpenVPN at %s: %v", openvpnPath, err)
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Fatalf("needs /dev/net/tun: %v", err)
	}
	out, err := exec.Command(openvpnPath, "--version").CombinedOutput()
	if len(out) == 0 {
		t.Fatalf("openvpn --version: %v", err)
	}
	version, _, _ := strings.Cut(string(out), "\n")
	for _, v := range captureVariants {
		t.Run(v.name, func(t *testing.T) { makeCapture(t, v, version) })
	}
}

// capturedDatagram is one UDP payload seen in the server's namespace.
type capturedDatagram struct {
	client   int  // 1 or 2
	toServer bool // client to server
	payload  []byte
}

// clientTruth is what OpenVPN itself says about one client.
type clientTruth struct {
	sessionID []byte
	peerID    int
}

func makeCapture(t *testing.T, v captureVariant, version string) {
	dir := t.TempDir()
	writePKI(t, dir)
	v.keys(t, dir)

	lab := netlab.New(t)
	srv := lab.NewNamespace("ovpnsrv")
	srv.DisableIPv6()
	clientAddr := map[string]int{}
	var clients [3]*netlab.Namespace
	for n := 1; n <= 2; n++ {
		c := lab.NewNamespace(fmt.Sprintf("ovpncli%d", n))
		c.DisableIPv6()
		lab.Connect(srv, fmt.Sprintf("198.18.%d.1/24", n), c, fmt.Sprintf("198.18.%d.2/24", n))
		clients[n] = c
		clientAddr[fmt.Sprintf("198.18.%d.2", n)] = n
	}

	rec := startCapture(t, srv, clientAddr)

	srvLog := filepath.Join(dir, "server.log")
	status := filepath.Join(dir, "server.status")
	args := []string{
		"--server", "10.8.0.0", "255.255.255.0",
		"--topology", "subnet",
		"--dev", "tun1194", "--dev-type", "tun",
		"--proto", "udp4", "--port", strconv.Itoa(serverPort),
		"--ca", filepath.Join(dir, "ca.crt"),
		"--cert", filepath.Join(dir, "server.crt"),
		"--key", filepath.Join(dir, "server.key"),
		"--dh", "none",
		"--disable-dco",
		"--keepalive", "2", "20",
		"--status", status, "1", "--status-version", "2",
		"--verb", "3", "--log", srvLog,
	}
	server := lab.Start(srv.Command(openvpnPath, append(args, v.server(dir)...)...))
	if err := waitFile(srvLog, "Initialization Sequence Completed", server, 10*time.Second); err != nil {
		dumpFile(t, srvLog)
		t.Fatal(err)
	}

	var procs [3]*netlab.Process
	var logs [3]string
	for n := 1; n <= 2; n++ {
		cn := fmt.Sprintf("client%d", n)
		logs[n] = filepath.Join(dir, cn+".log")
		args := []string{
			"--client",
			"--dev", "tun0", "--dev-type", "tun",
			"--proto", "udp4",
			"--remote", fmt.Sprintf("198.18.%d.1", n), strconv.Itoa(serverPort),
			"--nobind",
			"--ca", filepath.Join(dir, "ca.crt"),
			"--cert", filepath.Join(dir, cn+".crt"),
			"--key", filepath.Join(dir, cn+".key"),
			"--remote-cert-tls", "server",
			"--disable-dco",
			"--explicit-exit-notify", "1",
			"--verb", "9", "--log", logs[n],
		}
		if n == 1 {
			// The first client renegotiates, so that the capture holds
			// a soft reset and data under key-id 1.
			args = append(args, "--reneg-sec", "6")
		}
		procs[n] = lab.Start(clients[n].Command(openvpnPath, append(args, v.client(dir, n)...)...))
		// One at a time, so that client n gets peer-id n-1.
		if err := waitFile(logs[n], "Initialization Sequence Completed", procs[n], 20*time.Second); err != nil {
			dumpFile(t, srvLog)
			dumpFile(t, logs[n])
			t.Fatal(err)
		}
	}

	truth := map[int]clientTruth{}
	for n := 1; n <= 2; n++ {
		truth[n] = clientTruth{sessionID: clientSessionID(t, logs[n]), peerID: -1}
	}
	virt := map[int]string{}
	deadline := time.Now().Add(5 * time.Second)
	for len(virt) < 2 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		rows := statusClients(t, status)
		for n := 1; n <= 2; n++ {
			if r, ok := rows[fmt.Sprintf("client%d", n)]; ok {
				ct := truth[n]
				ct.peerID = r.peerID
				truth[n] = ct
				virt[n] = r.virtual
			}
		}
	}
	if len(virt) < 2 {
		dumpFile(t, status)
		t.Fatal("the server's status file does not list both clients")
	}
	for n := 1; n <= 2; n++ {
		if pushed := pushedPeerID(t, logs[n]); pushed != truth[n].peerID {
			t.Fatalf("client%d: the server pushed peer-id %d, its status file says %d", n, pushed, truth[n].peerID)
		}
	}

	ping := func(ns *netlab.Namespace, to string) {
		ns.Run("ping", "-c", "3", "-i", "0.2", "-W", "2", to)
	}
	for n := 1; n <= 2; n++ {
		ping(clients[n], "10.8.0.1")
		ping(srv, virt[n])
	}
	// Wait for client 1's renegotiation (reneg-sec 6) to finish, then
	// send data under the new key.
	if err := waitCount(logs[1], "Control Channel: ", 2, procs[1], 20*time.Second); err != nil {
		dumpFile(t, logs[1])
		t.Fatal(err)
	}
	// A client sends under a new key only half its reneg-sec after the
	// renegotiation began (auth_deferred_expire_window in ssl.c).
	time.Sleep(4 * time.Second)
	ping(clients[1], "10.8.0.1")
	ping(srv, virt[1])
	for n := 1; n <= 2; n++ {
		_ = procs[n].Stop(netlab.StopGrace)
	}
	time.Sleep(500 * time.Millisecond) // let the goodbyes arrive
	_ = server.Stop(netlab.StopGrace)
	grams := rec.stop(t)

	// The renegotiation must have produced a soft reset and data under
	// key-id 1, or the capture misses what it is for.
	var softReset, key1Data bool
	for _, g := range grams {
		op, kid := g.payload[0]>>3, g.payload[0]&7
		softReset = softReset || (g.toServer && op == opSoftResetV1 && kid == 1)
		key1Data = key1Data || (g.toServer && op == opDataV2 && kid == 1)
	}
	if !softReset || !key1Data {
		t.Fatalf("no soft reset (%v) or no data under key-id 1 (%v) from client 1", softReset, key1Data)
	}
	writeCapture(t, v, version, truth, grams)
}

// capture reads every IPv4 UDP datagram to or from the server's port on
// the interfaces of a namespace.
type capture struct {
	fd       int
	stopping chan struct{} // closed to stop the reader
	done     chan struct{} // closed when the reader has stopped
	once     sync.Once

	mu    sync.Mutex
	grams []capturedDatagram
	err   error
}

func startCapture(t *testing.T, ns *netlab.Namespace, clientAddr map[string]int) *capture {
	t.Helper()
	c := &capture{fd: -1, stopping: make(chan struct{}), done: make(chan struct{})}
	// ETH_P_ALL: a packet socket bound to one protocol does not see
	// outgoing packets.
	proto := int(htons(unix.ETH_P_ALL))
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		t.Fatalf("packet socket: %v", err)
	}
	tv := unix.Timeval{Usec: 100_000}
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(c.done)
		buf := make([]byte, 1<<16)
		for {
			select {
			case <-c.stopping:
				return
			default:
			}
			n, from, err := unix.Recvfrom(c.fd, buf, unix.MSG_TRUNC)
			if err == unix.EAGAIN || err == unix.EINTR {
				continue
			}
			if err != nil {
				c.fail(err)
				return
			}
			ll, ok := from.(*unix.SockaddrLinklayer)
			if !ok || ll.Protocol != htons(unix.ETH_P_IP) {
				continue
			}
			if n > len(buf) {
				c.fail(fmt.Errorf("packet of %d bytes truncated", n))
				return
			}
			g, ok, err := parseUDP(buf[:n], clientAddr)
			if err != nil {
				c.fail(err)
				return
			}
			if ok {
				c.mu.Lock()
				c.grams = append(c.grams, g)
				c.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { c.close() })
	return c
}

func (c *capture) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
	}
}

func (c *capture) close() {
	c.once.Do(func() {
		close(c.stopping)
		<-c.done
		unix.Close(c.fd)
	})
}

func (c *capture) stop(t *testing.T) []capturedDatagram {
	t.Helper()
	c.close()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		t.Fatalf("capture: %v", c.err)
	}
	return c.grams
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// parseUDP returns the payload of an IPv4 UDP datagram between a client
// and the server's port; ok is false for any other packet.
func parseUDP(pkt []byte, clientAddr map[string]int) (g capturedDatagram, ok bool, err error) {
	if len(pkt) < 20 || pkt[0]>>4 != 4 || pkt[9] != unix.IPPROTO_UDP {
		return g, false, nil
	}
	ihl := int(pkt[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(pkt[2:]))
	if ihl < 20 || total > len(pkt) || total < ihl+8 {
		return g, false, fmt.Errorf("bad IPv4 header: ihl %d total %d captured %d", ihl, total, len(pkt))
	}
	if frag := binary.BigEndian.Uint16(pkt[6:]); frag&0x3fff != 0 {
		return g, false, fmt.Errorf("IPv4 fragment (flags/offset %#x): keep datagrams under the MTU", frag)
	}
	src := fmt.Sprintf("%d.%d.%d.%d", pkt[12], pkt[13], pkt[14], pkt[15])
	dst := fmt.Sprintf("%d.%d.%d.%d", pkt[16], pkt[17], pkt[18], pkt[19])
	udp := pkt[ihl:total]
	sport, dport := binary.BigEndian.Uint16(udp), binary.BigEndian.Uint16(udp[2:])
	ulen := int(binary.BigEndian.Uint16(udp[4:]))
	if ulen < 8 || ulen > len(udp) {
		return g, false, fmt.Errorf("bad UDP length %d of %d", ulen, len(udp))
	}
	payload := bytes.Clone(udp[8:ulen])
	switch {
	case dport == serverPort && clientAddr[src] != 0:
		return capturedDatagram{client: clientAddr[src], toServer: true, payload: payload}, true, nil
	case sport == serverPort && clientAddr[dst] != 0:
		return capturedDatagram{client: clientAddr[dst], payload: payload}, true, nil
	}
	return g, false, nil
}

// writeCapture writes testdata/<variant>.txt in the format readCapture
// reads.
func writeCapture(t *testing.T, v captureVariant, version string, truth map[int]clientTruth, grams []capturedDatagram) {
	var b strings.Builder
	fmt.Fprintf(&b, "# OpenVPN UDP payloads, variant %s, made by TestMakeCaptures on %s.\n", v.name, time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&b, "# %s\n", version)
	fmt.Fprintf(&b, "# server options: %s\n", strings.Join(v.server("DIR"), " "))
	fmt.Fprintf(&b, "# client options: %s\n", strings.Join(v.client("DIR", 1), " "))
	b.WriteString("# \"client N session-id HEX peer-id N\": from client N's log and the server's status file.\n")
	b.WriteString("# \"N> HEX\": a datagram from client N to the server; \"N< HEX\": from the server to client N.\n")
	for n := 1; n <= 2; n++ {
		fmt.Fprintf(&b, "client %d session-id %x peer-id %d\n", n, truth[n].sessionID, truth[n].peerID)
	}
	for _, g := range grams {
		dir := '<'
		if g.toServer {
			dir = '>'
		}
		fmt.Fprintf(&b, "%d%c %x\n", g.client, dir, g.payload)
	}
	path := filepath.Join("testdata", v.name+".txt")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s: %d datagrams", path, len(grams))
}

// sidRE matches the line OpenVPN logs at verb 9 when a client starts its
// handshake, with the client's own session ID.
var sidRE = regexp.MustCompile(`TLS: Initial Handshake, sid=([0-9a-f ]+)`)

// clientSessionID returns the session ID a client's log names; a client
// that started more than one session fails the test.
func clientSessionID(t *testing.T, log string) []byte {
	t.Helper()
	data, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	var sid []byte
	for _, m := range sidRE.FindAllStringSubmatch(string(data), -1) {
		b, err := hex.DecodeString(strings.ReplaceAll(m[1], " ", ""))
		if err != nil || len(b) != 8 {
			t.Fatalf("%s: bad session ID %q", log, m[1])
		}
		if sid != nil && !bytes.Equal(sid, b) {
			t.Fatalf("%s: more than one session ID (%x, %x)", log, sid, b)
		}
		sid = b
	}
	if sid == nil {
		t.Fatalf("%s: no %q line", log, "TLS: Initial Handshake, sid=")
	}
	return sid
}

var pushRE = regexp.MustCompile(`PUSH_REPLY,[^']*\bpeer-id (\d+)`)

// pushedPeerID returns the peer-id the server pushed to a client.
func pushedPeerID(t *testing.T, log string) int {
	t.Helper()
	data, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	m := pushRE.FindStringSubmatch(string(data))
	if m == nil {
		t.Fatalf("%s: no peer-id in a PUSH_REPLY", log)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

type statusRow struct {
	virtual string
	peerID  int
}

// statusClients reads the CLIENT_LIST rows of a --status-version 2 file,
// by common name.
func statusClients(t *testing.T, path string) map[string]statusRow {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	rows := map[string]statusRow{}
	var cols map[string]int
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ",")
		switch {
		case len(f) > 1 && f[0] == "HEADER" && f[1] == "CLIENT_LIST":
			cols = map[string]int{}
			for i, name := range f[1:] {
				cols[name] = i
			}
		case f[0] == "CLIENT_LIST" && cols != nil:
			get := func(name string) string {
				if i, ok := cols[name]; ok && i < len(f) {
					return f[i]
				}
				return ""
			}
			id, err := strconv.Atoi(get("Peer ID"))
			if err != nil {
				t.Fatalf("%s: peer ID %q: %v", path, get("Peer ID"), err)
			}
			rows[get("Common Name")] = statusRow{virtual: get("Virtual Address"), peerID: id}
		}
	}
	return rows
}

func waitFile(path, want string, proc *netlab.Process, timeout time.Duration) error {
	return waitCount(path, want, 1, proc, timeout)
}

// waitCount waits until the file holds want at least n times.
func waitCount(path, want string, n int, proc *netlab.Process, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		data, _ := os.ReadFile(path)
		if strings.Count(string(data), want) >= n {
			return nil
		}
		if proc.Exited() {
			return fmt.Errorf("%s: process exited before logging %q %d times: %v", filepath.Base(path), want, n, proc.Wait())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %q not logged %d times within %v", filepath.Base(path), want, n, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func dumpFile(t *testing.T, path string) {
	data, _ := os.ReadFile(path)
	if len(data) > 8000 {
		data = data[len(data)-8000:]
	}
	t.Logf("--- %s ---\n%s", path, data)
}

// writePKI writes a throwaway CA and certificates for the server and two
// clients into dir.
func writePKI(t *testing.T, dir string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "udpmux capture CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	writePEM(t, filepath.Join(dir, "ca.crt"), "CERTIFICATE", caDER)
	for i, cn := range []string{"server", "client1", "client2"} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		usage := x509.ExtKeyUsageClientAuth
		if cn == "server" {
			usage = x509.ExtKeyUsageServerAuth
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 2)),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			// --remote-cert-tls wants a key usage besides the
			// extended one.
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
			ExtKeyUsage:           []x509.ExtKeyUsage{usage},
			BasicConstraintsValid: true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		writePEM(t, filepath.Join(dir, cn+".crt"), "CERTIFICATE", der)
		writePEM(t, filepath.Join(dir, cn+".key"), "PRIVATE KEY", keyDER)
	}
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
