package quicgo

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/udpmux/udpmux/proxy/check"
	"github.com/udpmux/udpmux/quicgo/internal/echo"
)

// TestHealthProbeAgainstQUICGo runs udpmux's QUIC health probe (package
// proxy/check) against a quic-go listener on loopback: every attempt must
// get quic-go's Version Negotiation, echoing the attempt's connection IDs,
// and a probe of a closed port none.
func TestHealthProbeAgainstQUICGo(t *testing.T) {
	tlsConf, err := echo.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.ListenAddr("127.0.0.1:0", tlsConf, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().(*net.UDPAddr)
	probe := func(to *net.UDPAddr) error {
		conn, err := net.DialUDP("udp4", nil, to)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		a, err := check.QUIC{}.Start(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return check.Exchange(conn, a, time.Now().Add(2*time.Second), make([]byte, 2048))
	}
	for i := range 5 {
		if err := probe(addr); err != nil {
			t.Fatalf("probe %d: %v", i, err)
		}
	}
	ln.Close()
	if err := probe(addr); !errors.Is(err, check.ErrRefused) && !errors.Is(err, check.ErrTimeout) {
		t.Fatalf("probe of a closed listener: %v; want no answer", err)
	}
}
