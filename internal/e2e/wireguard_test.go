//go:build linux

package e2e

import (
	"bufio"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/netlab"
)

// WireGuard in the lab. The kernel has no WireGuard module here, so every
// endpoint is a wireguard-go process (Debian's wireguard-go) in its own
// namespace, configured with wg (wireguard-tools) and ip. wireguard-go
// keeps its control socket in /var/run/wireguard/IFNAME.sock, which is
// shared by every namespace and every test binary on the machine: interface
// names must be unique machine-wide (wgIfName).

// wgSocketDir is where wireguard-go and wg meet.
const wgSocketDir = "/var/run/wireguard"

// wgKey is a WireGuard key pair, base64 as wg prints them.
type wgKey struct {
	Private, Public string
}

// newWGKey makes a Curve25519 key pair as `wg genkey | wg pubkey` would.
func newWGKey(t testing.TB) wgKey {
	t.Helper()
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("wireguard key: %v", err)
	}
	return wgKey{
		Private: base64.StdEncoding.EncodeToString(k.Bytes()),
		Public:  base64.StdEncoding.EncodeToString(k.PublicKey().Bytes()),
	}
}

// writeKey writes the private key to dir/name in wg's format (one base64
// line), readable only by its owner, and returns the path.
func (k wgKey) writeKey(t testing.TB, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(k.Private+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

var (
	wgIfSeq    atomic.Int32
	wgIfRandom = func() string {
		b := make([]byte, 1)
		rand.Read(b)
		return hex.EncodeToString(b)
	}()
)

// wgIfName returns an interface name unique on the machine: "wg", this
// process's id in hex, a random byte and a sequence number, at most 15
// bytes (IFNAMSIZ-1).
func wgIfName() string {
	name := fmt.Sprintf("wg%x%s%d", os.Getpid(), wgIfRandom, wgIfSeq.Add(1))
	if len(name) > 15 {
		name = name[:2] + name[len(name)-13:]
	}
	return name
}

// wgDev is one wireguard-go process and its interface.
type wgDev struct {
	Name string // interface name, unique on the machine
	NS   *netlab.Namespace
	Log  string // wireguard-go's output (LOG_LEVEL=verbose)
	t    testing.TB
	proc *netlab.Process
}

// wgTimeout bounds every wg command (they talk to wireguard-go over its
// control socket, which a stuck process would never answer).
const wgTimeout = 5 * time.Second

// wg runs `wg args...` in the device's namespace, bounded by wgTimeout.
func (d *wgDev) wg(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), wgTimeout)
	defer cancel()
	out, err := d.NS.CommandContext(ctx, "wg", args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("wg %s in %s: %v: %s", strings.Join(args, " "), d.NS, err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// startWireGuard runs wireguard-go in the foreground inside ns and waits for
// its control socket. Its interface is down and unconfigured: see Set and
// Up. At teardown the process is stopped and a control socket it left
// behind (after a SIGKILL) is removed.
func startWireGuard(t testing.TB, lab *netlab.Lab, ns *netlab.Namespace, dir, label string) *wgDev {
	t.Helper()
	d := &wgDev{Name: wgIfName(), NS: ns, Log: filepath.Join(dir, label+".wg.log"), t: t}
	logf, err := os.Create(d.Log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := ns.Command("wireguard-go", d.Name)
	cmd.Env = append(os.Environ(), "WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=verbose")
	cmd.Stdout, cmd.Stderr = logf, logf
	d.proc = lab.Start(cmd)
	sock := filepath.Join(wgSocketDir, d.Name+".sock")
	t.Cleanup(func() {
		// Runs before the lab's teardown (cleanups run last first).
		d.proc.Stop(netlab.StopGrace)
		logf.Close()
		os.Remove(sock)
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return d
		}
		if d.proc.Exited() {
			out, _ := os.ReadFile(d.Log)
			t.Fatalf("wireguard-go %s exited at start: %v\n%s", d.Name, d.proc.Wait(), out)
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(d.Log)
			t.Fatalf("wireguard-go %s: no control socket %s after 5s\n%s", d.Name, sock, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Set runs `wg set IF args...` in the device's namespace; it fails the
// test on error.
func (d *wgDev) Set(args ...string) {
	d.t.Helper()
	if _, err := d.wg(append([]string{"set", d.Name}, args...)...); err != nil {
		d.t.Fatal(err)
	}
}

// Up gives the interface its tunnel address and brings it up.
func (d *wgDev) Up(addr netip.Prefix) {
	d.NS.AddAddr(d.Name, addr.String())
	d.NS.Up(d.Name)
}

// Dump returns the device's peers as `wg show IF dump` lists them, by
// public key.
func (d *wgDev) Dump() (map[string]wgPeer, error) {
	out, err := d.wg("show", d.Name, "dump")
	if err != nil {
		return nil, err
	}
	return parseWGDump(string(out))
}

// Handshakes counts the handshakes wireguard-go logged so far (verbose
// log): initiations it sent or answered.
func (d *wgDev) Handshakes() int {
	data, _ := os.ReadFile(d.Log)
	return strings.Count(string(data), "Sending handshake initiation") + strings.Count(string(data), "Sending handshake response")
}

// wgPeer is one peer line of `wg show IF dump`.
type wgPeer struct {
	PublicKey  string
	Endpoint   netip.AddrPort // invalid when (none): no datagram seen from it yet
	AllowedIPs string
	Handshake  int64 // latest handshake, Unix seconds; 0 never
	RX, TX     uint64
}

// parseWGDump parses `wg show IF dump`: a first line for the interface
// (private key, public key, listen port, fwmark), then one tab-separated
// line per peer: public key, preshared key, endpoint, allowed IPs, latest
// handshake, rx bytes, tx bytes, persistent keepalive.
func parseWGDump(out string) (map[string]wgPeer, error) {
	peers := map[string]wgPeer{}
	sc := bufio.NewScanner(strings.NewReader(out))
	first := true
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Split(line, "\t")
		if first {
			first = false
			if len(f) != 4 {
				return nil, fmt.Errorf("wg dump: interface line %q has %d fields; want 4", line, len(f))
			}
			continue
		}
		if len(f) != 8 {
			return nil, fmt.Errorf("wg dump: peer line %q has %d fields; want 8", line, len(f))
		}
		p := wgPeer{PublicKey: f[0], AllowedIPs: f[3]}
		if f[2] != "(none)" {
			ep, err := netip.ParseAddrPort(f[2])
			if err != nil {
				return nil, fmt.Errorf("wg dump: endpoint in %q: %v", line, err)
			}
			p.Endpoint = ep
		}
		var err error
		if p.Handshake, err = strconv.ParseInt(f[4], 10, 64); err != nil {
			return nil, fmt.Errorf("wg dump: handshake in %q: %v", line, err)
		}
		if p.RX, err = strconv.ParseUint(f[5], 10, 64); err != nil {
			return nil, fmt.Errorf("wg dump: rx in %q: %v", line, err)
		}
		if p.TX, err = strconv.ParseUint(f[6], 10, 64); err != nil {
			return nil, fmt.Errorf("wg dump: tx in %q: %v", line, err)
		}
		peers[p.PublicKey] = p
	}
	if first {
		return nil, fmt.Errorf("wg dump: empty output")
	}
	return peers, sc.Err()
}

func TestParseWGDump(t *testing.T) {
	const out = "oH0+FwAzUgMGxHiDTDEQ1Bx2xxw8HWvACahKxFD+iWE=\tg5W/V4eHOVgvAsn7vZk1RmXWrb16cQwLJlYlCVnks3Q=\t51900\toff\n" +
		"+p5rsqxQj6EXTTQOMrIzM8K0X5D1brVLzyFJZpEH2Qg=\t(none)\t198.18.5.2:51820\t10.77.0.0/24\t1796161295\t476\t532\toff\n" +
		"aIVW5YrTHI4lTdQKAbPPnjUCY11dIKEdq1CbS+EfRHI=\t(none)\t(none)\t10.77.0.11/32\t0\t0\t0\toff\n"
	peers, err := parseWGDump(out)
	if err != nil {
		t.Fatal(err)
	}
	a := peers["+p5rsqxQj6EXTTQOMrIzM8K0X5D1brVLzyFJZpEH2Qg="]
	if a.Endpoint != netip.MustParseAddrPort("198.18.5.2:51820") || a.Handshake != 1796161295 || a.RX != 476 || a.TX != 532 || a.AllowedIPs != "10.77.0.0/24" {
		t.Errorf("peer a = %+v", a)
	}
	b := peers["aIVW5YrTHI4lTdQKAbPPnjUCY11dIKEdq1CbS+EfRHI="]
	if b.Endpoint.IsValid() || b.Handshake != 0 || len(peers) != 2 {
		t.Errorf("peer b = %+v, %d peers", b, len(peers))
	}
	for _, bad := range []string{"", "a\tb\tc\n", "a\tb\t1\toff\nx\ty\n", "a\tb\t1\toff\nk\t(none)\tnope\t0/0\t0\t0\t0\toff\n"} {
		if _, err := parseWGDump(bad); err == nil {
			t.Errorf("parseWGDump(%q) accepted it", bad)
		}
	}
}

func TestWGIfName(t *testing.T) {
	seen := map[string]bool{}
	for range 200 {
		n := wgIfName()
		if len(n) > 15 || !strings.HasPrefix(n, "wg") || seen[n] {
			t.Fatalf("wgIfName = %q (seen before: %v); want a fresh name of at most 15 bytes", n, seen[n])
		}
		seen[n] = true
	}
}

func TestNewWGKey(t *testing.T) {
	k := newWGKey(t)
	priv, err1 := base64.StdEncoding.DecodeString(k.Private)
	pub, err2 := base64.StdEncoding.DecodeString(k.Public)
	if err1 != nil || err2 != nil || len(priv) != 32 || len(pub) != 32 {
		t.Fatalf("key %+v: %v %v", k, err1, err2)
	}
	// Cross-check with wg itself when it is installed.
	if _, err := netlab.LookPath("wg"); err == nil {
		wg, _ := netlab.LookPath("wg")
		cmd := exec.Command(wg, "pubkey")
		cmd.Stdin = strings.NewReader(k.Private + "\n")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("wg pubkey: %v", err)
		}
		if got := strings.TrimSpace(string(out)); got != k.Public {
			t.Fatalf("wg pubkey gives %s for our private key; we computed %s", got, k.Public)
		}
	}
}
