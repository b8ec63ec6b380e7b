package check

import (
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"net/netip"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/udpmux/udpmux/dissect/wireguard"
	"github.com/udpmux/udpmux/flowtable"
)

// TestWireGuardInitiation has package wireguard's Dissector, which runs
// the responder's side of an initiation with the backend's private key,
// decrypt the probe's initiations: it must find the health peer's static
// key in each.
func TestWireGuardInitiation(t *testing.T) {
	spriv, spub := wgPair(t)
	hpriv, hpub := wgPair(t)
	p, err := NewWireGuard(hpriv, spub)
	if err != nil {
		t.Fatal(err)
	}
	d, err := wireguard.New(wireguard.Config{PrivateKey: &spriv})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := flowtable.CIDKey(0, hpub[:flowtable.MaxCIDLen])
	local, peer := netip.MustParseAddrPort("192.0.2.1:51820"), netip.MustParseAddrPort("192.0.2.2:40000")
	for i := range 3 {
		a, err := p.Start(t0) // the same time: the timestamps must still grow
		if err != nil {
			t.Fatal(err)
		}
		if got := d.Dissect(a.Request(), local, peer, 0).Key; got != want {
			t.Fatalf("initiation %d: the dissector keys it %v, not by the health peer's key", i, got)
		}
	}
	if st := d.Stats(); st.StaticKeyed != 3 {
		t.Fatalf("dissector stats %+v", st)
	}
}

// wgRespond is the backend's side of a handshake: its response to the
// initiation init, whose static key it decrypts with spriv.
func wgRespond(t *testing.T, spriv [32]byte, init []byte) []byte {
	t.Helper()
	priv, _ := ecdh.X25519().NewPrivateKey(spriv[:])
	dh := func(k *ecdh.PrivateKey, pub []byte) []byte {
		pk, err := ecdh.X25519().NewPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		s, err := k.ECDH(pk)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	open := func(k [32]byte, ct, ad []byte) []byte {
		aead, _ := chacha20poly1305.New(k[:])
		var nonce [12]byte
		pt, err := aead.Open(nil, nonce[:], ct, ad)
		if err != nil {
			t.Fatalf("responder: %v", err)
		}
		return pt
	}
	c := wgHash([]byte(wgConstruction))
	h := wgHash(c[:], []byte(wgIdentifier))
	h = wgHash(h[:], priv.PublicKey().Bytes())
	epubI := init[8:40]
	c = wgKDF(c[:], epubI)[0]
	h = wgHash(h[:], epubI)
	out := wgKDF(c[:], dh(priv, epubI))
	c = out[0]
	spubI := open(out[1], init[40:88], h[:])
	h = wgHash(h[:], init[40:88])
	out = wgKDF(c[:], dh(priv, spubI))
	c = out[0]
	open(out[1], init[88:116], h[:])
	h = wgHash(h[:], init[88:116])

	eph, _ := ecdh.X25519().GenerateKey(rand.Reader)
	msg := make([]byte, wgResponseSize)
	msg[0] = wgResponse
	copy(msg[4:8], []byte{9, 9, 9, 9})
	copy(msg[8:12], init[4:8])
	copy(msg[12:44], eph.PublicKey().Bytes())
	c = wgKDF(c[:], msg[12:44])[0]
	h = wgHash(h[:], msg[12:44])
	c = wgKDF(c[:], dh(eph, epubI))[0]
	c = wgKDF(c[:], dh(eph, spubI))[0]
	var psk [32]byte
	out = wgKDF(c[:], psk[:])
	h = wgHash(h[:], out[1][:])
	wgSeal(msg[44:44], &out[2], nil, h[:])
	mac1Key := wgHash([]byte(wgLabelMAC1), spubI)
	m, _ := newMAC(mac1Key[:])
	m.Write(msg[:60])
	m.Sum(msg[60:60])
	return msg
}

// wgCookie is a backend's cookie reply to init, under load.
func wgCookie(spub [32]byte, init []byte) []byte {
	msg := make([]byte, wgCookieSize)
	msg[0] = wgCookieReply
	copy(msg[4:8], init[4:8])
	rand.Read(msg[8:32])
	key := wgHash([]byte(wgLabelCookie), spub[:])
	aead, _ := chacha20poly1305.NewX(key[:])
	cookie := make([]byte, 16)
	rand.Read(cookie)
	aead.Seal(msg[32:32], msg[8:32], cookie, init[116:132])
	return msg
}

func TestWireGuardProbe(t *testing.T) {
	spriv, spub := wgPair(t)
	hpriv, _ := wgPair(t)
	cases := []struct {
		name  string
		reply func(init []byte) []byte
		ok    bool
	}{
		{"response", func(init []byte) []byte { return wgRespond(t, spriv, init) }, true},
		{"cookie reply", func(init []byte) []byte { return wgCookie(spub, init) }, true},
		{"response to another sender index", func(init []byte) []byte {
			p := wgRespond(t, spriv, init)
			p[8] ^= 1
			return p
		}, false},
		{"response with a flipped payload bit", func(init []byte) []byte {
			p := wgRespond(t, spriv, init)
			p[50] ^= 1
			return p
		}, false},
		{"response with a bad mac1", func(init []byte) []byte {
			p := wgRespond(t, spriv, init)
			p[70] ^= 1
			return p
		}, false},
		{"cookie reply to another sender index", func(init []byte) []byte {
			p := wgCookie(spub, init)
			p[4] ^= 1
			return p
		}, false},
		{"cookie reply for another initiation", func(init []byte) []byte {
			other := append([]byte(nil), init...)
			other[116] ^= 1 // another mac1
			return wgCookie(spub, other)
		}, false},
		{"initiation", func(init []byte) []byte { return init }, false},
		{"truncated response", func(init []byte) []byte { return wgRespond(t, spriv, init)[:91] }, false},
		{"nothing", func([]byte) []byte { return nil }, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := startAttempt(t)(NewWireGuard(hpriv, spub))
			err := a.Check(c.reply(a.Request()))
			if (err == nil) != c.ok {
				t.Fatalf("Check: %v; want ok %v", err, c.ok)
			}
			if err != nil && !errors.Is(err, ErrNotAnswer) {
				t.Fatalf("Check: %v does not wrap ErrNotAnswer", err)
			}
		})
	}
	// A response made for one attempt does not pass another's check.
	p, _ := NewWireGuard(hpriv, spub)
	a, _ := p.Start(t0)
	b, _ := p.Start(t0)
	if err := b.Check(wgRespond(t, spriv, a.Request())); err == nil {
		t.Fatal("one attempt's response passed another's check")
	}
}

func TestWireGuardPublicKey(t *testing.T) {
	priv, pub := wgPair(t)
	got, err := WireGuardPublicKey(priv)
	if err != nil || got != pub {
		t.Fatalf("WireGuardPublicKey: %x, %v; want %x", got, err, pub)
	}
}
