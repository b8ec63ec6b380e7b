//go:build linux

package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// pki is a throwaway certificate authority for one test, written as PEM
// files into a directory.
type pki struct {
	t      testing.TB
	dir    string
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	serial int64
}

// certFiles names the PEM files of one issued certificate.
type certFiles struct {
	Cert, Key string
}

// newPKI creates a CA (ECDSA P-256, self-signed) and writes it to dir/ca.crt.
func newPKI(t testing.TB, dir string) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("pki: CA key: %v", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "udpmux e2e test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("pki: CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("pki: parse CA certificate: %v", err)
	}
	p := &pki{t: t, dir: dir, caCert: cert, caKey: key, serial: 1}
	writePEM(t, p.CAFile(), "CERTIFICATE", der, 0o644)
	return p
}

// CAFile is the path of the CA certificate.
func (p *pki) CAFile() string { return filepath.Join(p.dir, "ca.crt") }

// Issue signs a leaf certificate for cn with the given extended key usage
// (x509.ExtKeyUsageServerAuth or ExtKeyUsageClientAuth) and writes
// dir/cn.crt and dir/cn.key.
func (p *pki) Issue(cn string, usage x509.ExtKeyUsage) certFiles {
	p.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		p.t.Fatalf("pki: key for %s: %v", cn, err)
	}
	p.serial++
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(p.serial),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		BasicConstraintsValid: true,
		// OpenVPN's --remote-cert-tls checks that a key usage is present
		// as well as the extended key usage.
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
		ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		p.t.Fatalf("pki: certificate for %s: %v", cn, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		p.t.Fatalf("pki: marshal key for %s: %v", cn, err)
	}
	f := certFiles{Cert: filepath.Join(p.dir, cn+".crt"), Key: filepath.Join(p.dir, cn+".key")}
	writePEM(p.t, f.Cert, "CERTIFICATE", der, 0o644)
	writePEM(p.t, f.Key, "PRIVATE KEY", keyDER, 0o600)
	return f
}

func writePEM(t testing.TB, path, typ string, der []byte, mode os.FileMode) {
	t.Helper()
	data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatalf("pki: write %s: %v", path, err)
	}
}

// TestPKI checks the generated chain with Go's own verifier, so that a
// handshake failure in the OpenVPN tests is not a certificate problem.
func TestPKI(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(t, dir)
	srv := p.Issue("server", x509.ExtKeyUsageServerAuth)
	cli := p.Issue("client1", x509.ExtKeyUsageClientAuth)
	roots := x509.NewCertPool()
	roots.AddCert(p.caCert)
	for _, c := range []struct {
		f     certFiles
		usage x509.ExtKeyUsage
	}{{srv, x509.ExtKeyUsageServerAuth}, {cli, x509.ExtKeyUsageClientAuth}} {
		data, err := os.ReadFile(c.f.Cert)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(data)
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{c.usage}}); err != nil {
			t.Errorf("%s: %v", c.f.Cert, err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{otherUsage(c.usage)}}); err == nil {
			t.Errorf("%s verifies for the wrong usage", c.f.Cert)
		}
		keyData, err := os.ReadFile(c.f.Key)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := pem.Decode(keyData)
		key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if !key.(*ecdsa.PrivateKey).PublicKey.Equal(cert.PublicKey) {
			t.Errorf("%s does not match %s", c.f.Key, c.f.Cert)
		}
	}
}

func otherUsage(u x509.ExtKeyUsage) x509.ExtKeyUsage {
	if u == x509.ExtKeyUsageServerAuth {
		return x509.ExtKeyUsageClientAuth
	}
	return x509.ExtKeyUsageServerAuth
}
