// Package echo is what quicecho and quicclient share: the TLS setup and
// the line protocol of their streams.
//
// On each bidirectional stream the client writes lines "SEQ\n" (a decimal
// counter) and the server answers each with "SEQ SERVER\n", where SERVER
// is the label it was started with (its QUIC-LB server ID in hex, or
// another word), so that the client sees which server answered.
package echo

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"time"
)

// ALPN is the application protocol both programs negotiate.
const ALPN = "udpmux-echo"

// ServerTLS returns a TLS configuration with a new self-signed ECDSA
// certificate for any name, valid for a day.
func ServerTLS() (*tls.Config, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "quicecho"},
		DNSNames:     []string{"quicecho", "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		NextProtos:   []string{ALPN},
	}, nil
}

// ClientTLS returns the client's TLS configuration: it accepts any
// certificate, since the servers' are self-signed and made afresh.
func ClientTLS() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, NextProtos: []string{ALPN}, ServerName: "quicecho"}
}
