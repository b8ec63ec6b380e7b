package check

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/prereq"
)

const openvpnPath = "/usr/sbin/openvpn"

// selfSigned writes a self-signed ECDSA certificate and its key to dir
// and returns their paths.
func selfSigned(t *testing.T, dir string) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "backend"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	return cert, key
}

// freePort returns a UDP port of 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// probeOnce runs one attempt of p against addr with a fresh socket.
func probeOnce(t *testing.T, p Probe, addr *net.UDPAddr, timeout time.Duration) error {
	t.Helper()
	conn, err := net.DialUDP("udp4", nil, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	a, err := p.Start(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return Exchange(conn, a, time.Now().Add(timeout), make([]byte, 2048))
}

// TestOpenVPNProbeRealServer probes a real OpenVPN server (TLS mode,
// point-to-point with --dev null, which needs neither root nor a tun
// device) with each control channel protection, keys made by openvpn
// --genkey: the probe must get its answer, and a probe without the key,
// or with another, none.
func TestOpenVPNProbeRealServer(t *testing.T) {
	if _, err := os.Stat(openvpnPath); err != nil {
		prereq.Missingf(t, "needs OpenVPN at %s (apt-get install -y openvpn): %v", openvpnPath, err)
	}
	dir := t.TempDir()
	cert, key := selfSigned(t, dir)
	genkey := func(kind string) (string, StaticKey) {
		path := filepath.Join(dir, kind+".key")
		if out, err := exec.Command(openvpnPath, "--genkey", kind, path).CombinedOutput(); err != nil {
			t.Fatalf("openvpn --genkey %s: %v\n%s", kind, err, out)
		}
		k, err := LoadStaticKey(path)
		if err != nil {
			t.Fatal(err)
		}
		return path, k
	}
	taPath, ta := genkey("tls-auth")
	tcPath, tc := genkey("tls-crypt")
	_, other := genkey("secret")
	cases := []struct {
		name   string
		server []string
		probe  OpenVPNConfig
		// wrong are probes the server must not answer.
		wrong []OpenVPNConfig
	}{
		{"plain", nil, OpenVPNConfig{}, nil},
		{"tls-auth 0", []string{"--tls-auth", taPath, "0"}, OpenVPNConfig{Wrap: "tls-auth", Key: ta, Direction: KeyInverse},
			[]OpenVPNConfig{{}, {Wrap: "tls-auth", Key: ta, Direction: KeyNormal}, {Wrap: "tls-auth", Key: other, Direction: KeyInverse}}},
		{"tls-auth bidirectional", []string{"--tls-auth", taPath}, OpenVPNConfig{Wrap: "tls-auth", Key: ta},
			[]OpenVPNConfig{{Wrap: "tls-auth", Key: ta, Direction: KeyInverse}}},
		{"tls-auth SHA256", []string{"--tls-auth", taPath, "0", "--auth", "SHA256"}, OpenVPNConfig{Wrap: "tls-auth", Key: ta, Direction: KeyInverse, Digest: "SHA256"},
			[]OpenVPNConfig{{Wrap: "tls-auth", Key: ta, Direction: KeyInverse}}},
		{"tls-crypt", []string{"--tls-crypt", tcPath}, OpenVPNConfig{Wrap: "tls-crypt", Key: tc},
			[]OpenVPNConfig{{}, {Wrap: "tls-crypt", Key: other}, {Wrap: "tls-auth", Key: tc, Direction: KeyInverse}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			port := freePort(t)
			log := filepath.Join(t.TempDir(), "openvpn.log")
			args := append([]string{"--tls-server", "--dev", "null", "--proto", "udp4", "--local", "127.0.0.1",
				"--port", strconv.Itoa(port), "--ca", cert, "--cert", cert, "--key", key, "--dh", "none",
				"--verb", "3", "--log", log}, c.server...)
			cmd := exec.Command(openvpnPath, args...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
			addr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
			p, err := NewOpenVPN(c.probe)
			if err != nil {
				t.Fatal(err)
			}
			// Until OpenVPN has bound its port, probes are refused: poll.
			deadline := time.Now().Add(10 * time.Second)
			for {
				err := probeOnce(t, p, addr, 200*time.Millisecond)
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					out, _ := os.ReadFile(log)
					t.Fatalf("no answer from OpenVPN: %v\n%s", err, out)
				}
			}
			for _, w := range c.wrong {
				wp, err := NewOpenVPN(w)
				if err != nil {
					t.Fatal(err)
				}
				if err := probeOnce(t, wp, addr, 500*time.Millisecond); !errors.Is(err, ErrTimeout) {
					t.Errorf("probe %s direction %d: %v; want no answer", w.Wrap, w.Direction, err)
				}
			}
			// The server still answers: nothing the probes sent upset it.
			if err := probeOnce(t, p, addr, 2*time.Second); err != nil {
				out, _ := os.ReadFile(log)
				t.Fatalf("no answer after the wrong probes: %v\n%s", err, tail(string(out)))
			}
		})
	}
}

func tail(s string) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}
