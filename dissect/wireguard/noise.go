package wireguard

import (
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/subtle"
	"hash"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
)

// The protocol's names (whitepaper, section 5.4).
const (
	construction = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
	identifier   = "WireGuard v1 zx2c4 Jason@zx2c4.com"
	labelMAC1    = "mac1----"
)

// Offsets within an initiation.
const (
	offEphemeral = 8
	offStatic    = 40  // the encrypted static key: 32 bytes and a 16-byte tag
	offTimestamp = 88  // the encrypted TAI64N timestamp: 12 bytes and a tag
	offMAC1      = 116 // mac1 covers everything before it
	offMAC2      = 132
)

// handshake holds what the responder's side of an initiation needs that
// depends only on the server's key.
type handshake struct {
	c0      [32]byte // chaining key: HASH(CONSTRUCTION)
	h0      [32]byte // hash after mixing in the responder's public key
	mac1Key [32]byte // HASH(LABEL_MAC1 || responder's public key)
}

func (hs *handshake) init(pub *[32]byte) {
	hs.c0 = blake2s.Sum256([]byte(construction))
	hs.h0 = hs.c0
	mixHash(&hs.h0, []byte(identifier))
	mixHash(&hs.h0, pub[:])
	hs.mac1Key = blake2s.Sum256(append([]byte(labelMAC1), pub[:]...))
}

// scratch is the working memory of one initiation's processing, pooled so
// that the interfaces the crypto packages return need no fresh buffers.
type scratch struct {
	mac1   hash.Hash // keyed BLAKE2s-128 with the mac1 key
	hmacC0 hash.Hash // HMAC keyed with the initial chaining key
	sum    [32]byte
	c, h   [32]byte // chaining key and hash
	k      [32]byte // AEAD key
	t0, t1 [32]byte // KDF intermediates
	static [32]byte
	ts     [12]byte
}

func (hs *handshake) newScratch() *scratch {
	m, err := blake2s.New128(hs.mac1Key[:])
	if err != nil {
		panic(err) // a 32-byte key is valid
	}
	return &scratch{mac1: m, hmacC0: hmac.New(newHash, hs.c0[:])}
}

// clear erases what one initiation's processing left in s.
func (s *scratch) clear() {
	s.c, s.h, s.k, s.t0, s.t1, s.static, s.ts = [32]byte{}, [32]byte{}, [32]byte{}, [32]byte{}, [32]byte{}, [32]byte{}, [12]byte{}
}

// checkMAC1 reports whether an initiation's mac1 is the one made with the
// scratch's mac1 key.
func (s *scratch) checkMAC1(p []byte) bool {
	s.mac1.Reset()
	s.mac1.Write(p[:offMAC1])
	sum := s.mac1.Sum(s.sum[:0])
	return subtle.ConstantTimeCompare(sum, p[offMAC1:offMAC2]) == 1
}

var (
	zeroNonce  [chacha20poly1305.NonceSize]byte
	kdfCounter = [3]byte{0, 1, 2}
)

// open runs the responder's side of the initiation p (with a checked
// length) up to the decrypted timestamp, and returns the initiator's static
// public key if both the static key and the timestamp decrypt. The
// timestamp's AEAD key comes from DH(initiator's static key, responder's
// static key), so its tag proves the initiator holds its private key.
func (hs *handshake) open(priv *ecdh.PrivateKey, p []byte, s *scratch) (*[32]byte, bool) {
	eph := p[offEphemeral:offStatic]
	encStatic := p[offStatic:offTimestamp]
	encTS := p[offTimestamp:offMAC1]

	s.h = hs.h0
	mixHash(&s.h, eph)
	// c = KDF1(c0, eph), with an HMAC keyed once.
	s.hmacC0.Reset()
	s.hmacC0.Write(eph)
	s.hmacC0.Sum(s.t0[:0])
	hmacOne(&s.c, s, s.t0[:])
	if !s.mixDH(priv, eph) {
		return nil, false
	}
	static, ok := s.aeadOpen(s.static[:0], encStatic)
	if !ok {
		return nil, false
	}
	mixHash(&s.h, encStatic)
	if !s.mixDH(priv, static) {
		return nil, false
	}
	if _, ok := s.aeadOpen(s.ts[:0], encTS); !ok {
		return nil, false
	}
	return &s.static, true
}

// mixDH sets (c, k) = KDF2(c, DH(priv, pub)). It fails for a point of
// small order, whose shared secret is zero.
func (s *scratch) mixDH(priv *ecdh.PrivateKey, pub []byte) bool {
	pk, err := ecdh.X25519().NewPublicKey(pub)
	if err != nil {
		return false
	}
	dh, err := priv.ECDH(pk)
	if err != nil {
		return false
	}
	kdf2(&s.c, &s.k, s, s.c[:], dh)
	return true
}

// aeadOpen decrypts ciphertext with key s.k, a zero counter and the hash
// s.h as associated data, appending to dst.
func (s *scratch) aeadOpen(dst, ciphertext []byte) ([]byte, bool) {
	aead, err := chacha20poly1305.New(s.k[:])
	if err != nil {
		return nil, false
	}
	out, err := aead.Open(dst, zeroNonce[:], ciphertext, s.h[:])
	return out, err == nil
}

// mixHash sets h = HASH(h || data), for data of at most 48 bytes (the
// longest is an encrypted static key).
func mixHash(h *[32]byte, data []byte) {
	var buf [32 + 48]byte
	n := copy(buf[:], h[:])
	n += copy(buf[n:], data)
	*h = blake2s.Sum256(buf[:n])
}

func newHash() hash.Hash {
	h, _ := blake2s.New256(nil)
	return h
}

// kdf2 sets (t1, t2) = KDF2(key, input), the whitepaper's KDF over
// HMAC-BLAKE2s. key may alias t1.
func kdf2(t1, t2 *[32]byte, s *scratch, key, input []byte) {
	m := hmac.New(newHash, key)
	m.Write(input)
	m.Sum(s.t0[:0])
	m = hmacOne(t1, s, s.t0[:])
	m.Reset()
	m.Write(t1[:])
	m.Write(kdfCounter[2:3])
	m.Sum(t2[:0])
}

// hmacOne sets out = HMAC(t0, 0x1), the first output of the KDF whose
// first HMAC gave t0, and returns the HMAC keyed with t0.
func hmacOne(out *[32]byte, s *scratch, t0 []byte) hash.Hash {
	m := hmac.New(newHash, t0)
	m.Write(kdfCounter[1:2])
	m.Sum(s.t1[:0])
	*out = s.t1
	return m
}
