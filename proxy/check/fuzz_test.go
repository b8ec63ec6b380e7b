package check

import (
	"bytes"
	"testing"
)

// The fuzz targets feed arbitrary datagrams to every probe's Check: it must
// not panic, must return nil or an error wrapping ErrNotAnswer, and must
// accept only what names the attempt's identifiers.

// fuzzCheck runs one attempt's Check on p and fails unless the result
// keeps to Check's contract; proves reports whether an accepted p carries
// what only the backend could send.
func fuzzCheck(t *testing.T, a Attempt, p []byte, proves func(p []byte) bool) {
	in := append([]byte(nil), p...)
	err := a.Check(p)
	if !bytes.Equal(in, p) {
		t.Fatal("Check changed the datagram")
	}
	if err == nil && !proves(p) {
		t.Fatalf("accepted %x, which does not carry the attempt's identifiers", p)
	}
}

func FuzzOpenVPNCheck(f *testing.F) {
	f.Add(ovpnServerReset(make([]byte, 8), 1), uint8(0))
	f.Add(ovpnServerReset(make([]byte, 8), 3, 1, 2, 3), uint8(1))
	f.Add([]byte{ovpnResetServer}, uint8(2))
	f.Fuzz(func(t *testing.T, p []byte, mode uint8) {
		cfg := []OpenVPNConfig{{}, {Wrap: "tls-auth", Key: testKey(), Direction: KeyInverse}, {Wrap: "tls-crypt", Key: testKey()}}[mode%3]
		pr, err := NewOpenVPN(cfg)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := pr.Start(t0)
		sid := a.Request()[1:ovpnHeader]
		if cfg.Wrap == "" && len(p) >= 12 {
			// Give plain packets a chance to name the session ID.
			copy(p[len(p)-12:], sid)
		}
		fuzzCheck(t, a, p, func(p []byte) bool { return cfg.Wrap != "" || bytes.Contains(p, sid) })
	})
}

func FuzzWireGuardCheck(f *testing.F) {
	f.Add(make([]byte, wgResponseSize))
	f.Add(make([]byte, wgCookieSize))
	f.Add([]byte{2, 0, 0, 0})
	_, spub := wgPairSeed(1)
	hpriv, _ := wgPairSeed(2)
	pr, err := NewWireGuard(hpriv, spub)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		a, _ := pr.Start(t0)
		// Nothing made without the keys passes: any acceptance fails.
		fuzzCheck(t, a, p, func([]byte) bool { return false })
	})
}

func FuzzQUICCheck(f *testing.F) {
	f.Add([]byte{0x80, 0, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 1})
	f.Add([]byte{0x80, 0, 0, 0, 0, 255})
	f.Fuzz(func(t *testing.T, p []byte) {
		at, _ := QUIC{}.Start(t0)
		a := at.(*quicAttempt)
		if len(p) >= 23 && p[5] == 8 && p[14] == 8 {
			// Give well-formed packets a chance to name the IDs.
			copy(p[6:14], a.scid[:])
			copy(p[15:23], a.dcid[:])
		}
		fuzzCheck(t, a, p, func(p []byte) bool {
			return bytes.Contains(p, a.scid[:]) && bytes.Contains(p, a.dcid[:])
		})
	})
}

func FuzzGenericCheck(f *testing.F) {
	f.Add("hello {nonce}", "hello {nonce}", "", []byte("hello 0123456789abcdef"))
	f.Add("ping", "", `^pong \d+$`, []byte("pong 1"))
	f.Fuzz(func(t *testing.T, send, prefix, re string, p []byte) {
		pr, err := NewGeneric(GenericConfig{Send: send, Prefix: prefix, Regexp: re})
		if err != nil {
			return
		}
		a, err := pr.Start(t0)
		if err != nil {
			return
		}
		fuzzCheck(t, a, p, func([]byte) bool { return true })
	})
}

func FuzzParseStaticKey(f *testing.F) {
	f.Add([]byte(staticBegin + "\n00\n" + staticEnd))
	f.Add([]byte("#\n" + staticBegin + "\n" + staticEnd + staticBegin))
	f.Fuzz(func(t *testing.T, text []byte) {
		k, err := ParseStaticKey(text)
		if err != nil && k != (StaticKey{}) {
			t.Fatal("a refused key is not zero")
		}
	})
}
