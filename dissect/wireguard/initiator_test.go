package wireguard

import (
	"crypto/hmac"
	"encoding/binary"
	"hash"
	"testing"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"
)

// This file is a test-only initiator: it builds handshake initiations as
// the whitepaper's section 5.4.2 describes, with x/crypto's curve25519
// (not crypto/ecdh, which the Dissector uses) and none of the package's
// helpers, so that a shared mistake would have to be made twice.

type keyPair struct{ priv, pub [32]byte }

// testKey derives a key pair from a seed, so that test runs repeat.
func testKey(t testing.TB, seed string) keyPair {
	t.Helper()
	var kp keyPair
	kp.priv = blake2s.Sum256([]byte("udpmux test key " + seed))
	kp.priv[0] &= 248
	kp.priv[31] = kp.priv[31]&127 | 64
	pub, err := curve25519.X25519(kp.priv[:], curve25519.Basepoint)
	if err != nil {
		t.Fatal(err)
	}
	copy(kp.pub[:], pub)
	return kp
}

func tHash(parts ...[]byte) [32]byte {
	h, _ := blake2s.New256(nil)
	for _, p := range parts {
		h.Write(p)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

func tHMAC(key []byte, parts ...[]byte) [32]byte {
	m := hmac.New(func() hash.Hash { h, _ := blake2s.New256(nil); return h }, key)
	for _, p := range parts {
		m.Write(p)
	}
	var out [32]byte
	m.Sum(out[:0])
	return out
}

// tKDF2 returns KDF2(key, input) of the whitepaper.
func tKDF2(key, input []byte) (t1, t2 [32]byte) {
	t0 := tHMAC(key, input)
	t1 = tHMAC(t0[:], []byte{1})
	t2 = tHMAC(t0[:], t1[:], []byte{2})
	return
}

func tDH(t testing.TB, priv, pub [32]byte) []byte {
	t.Helper()
	out, err := curve25519.X25519(priv[:], pub[:])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func tSeal(t testing.TB, key [32]byte, plain, ad []byte) []byte {
	t.Helper()
	aead, err := chacha20poly1305.New(key[:])
	if err != nil {
		t.Fatal(err)
	}
	return aead.Seal(nil, make([]byte, 12), plain, ad)
}

// initOpts are the inputs of one initiation, and the mistakes to make.
type initOpts struct {
	initiator keyPair  // whose static public key the initiation carries
	dhKey     *keyPair // static key pair used for DH(Si, Sr); nil: initiator
	server    [32]byte // responder public key the handshake is for
	mac1For   *[32]byte
	ephemeral keyPair
	sender    uint32
	timestamp [12]byte
}

// buildInitiation returns a handshake initiation made from o, with mac2
// zero.
func buildInitiation(t testing.TB, o initOpts) []byte {
	t.Helper()
	msg := make([]byte, 148)
	msg[0] = 1
	binary.LittleEndian.PutUint32(msg[4:], o.sender)

	c := tHash([]byte("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"))
	h := tHash(c[:], []byte("WireGuard v1 zx2c4 Jason@zx2c4.com"))
	h = tHash(h[:], o.server[:])

	copy(msg[8:40], o.ephemeral.pub[:])
	t0 := tHMAC(c[:], o.ephemeral.pub[:])
	c = tHMAC(t0[:], []byte{1})
	h = tHash(h[:], o.ephemeral.pub[:])

	c, k := tKDF2(c[:], tDH(t, o.ephemeral.priv, o.server))
	encStatic := tSeal(t, k, o.initiator.pub[:], h[:])
	copy(msg[40:88], encStatic)
	h = tHash(h[:], encStatic)

	dh := o.initiator
	if o.dhKey != nil {
		dh = *o.dhKey
	}
	_, k = tKDF2(c[:], tDH(t, dh.priv, o.server))
	copy(msg[88:116], tSeal(t, k, o.timestamp[:], h[:]))

	mac1For := o.server
	if o.mac1For != nil {
		mac1For = *o.mac1For
	}
	setMAC1(msg, mac1For)
	return msg
}

// setMAC1 writes the mac1 of an initiation for the given responder key.
func setMAC1(msg []byte, server [32]byte) {
	key := tHash([]byte("mac1----"), server[:])
	m, _ := blake2s.New128(key[:])
	m.Write(msg[:116])
	m.Sum(msg[116:116])
}
