package check

import (
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"hash"
	"sync"
	"time"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
)

// WireGuard message types and sizes (whitepaper, section 5.4).
const (
	wgInitiation     = 1
	wgResponse       = 2
	wgCookieReply    = 3
	wgInitiationSize = 148
	wgResponseSize   = 92
	wgCookieSize     = 64
	wgMACSize        = 16
)

// wgConstruction and the other labels of WireGuard's Noise_IKpsk2.
const (
	wgConstruction = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
	wgIdentifier   = "WireGuard v1 zx2c4 Jason@zx2c4.com"
	wgLabelMAC1    = "mac1----"
	wgLabelCookie  = "cookie--"
)

// wireGuard is a WireGuard probe: the health peer's key and the backend's
// public key.
type wireGuard struct {
	priv   *ecdh.PrivateKey
	pub    [32]byte // the health peer's
	server *ecdh.PublicKey
	// h0 and c0 are the initiator's hash and chaining key before the
	// initiation's ephemeral key; mac1Key keys the initiation's mac1,
	// respMAC1Key the response's, cookieKey decrypts cookie replies.
	h0, c0, mac1Key, respMAC1Key, cookieKey [32]byte
	// last is the latest timestamp sent: the backend refuses an
	// initiation whose timestamp is not later than the last it accepted.
	mu   sync.Mutex
	last time.Time
}

// NewWireGuard returns a probe that starts handshakes with a WireGuard
// backend whose public key is server, as the peer whose private key is
// private. Each backend must list that peer (its public key, WireGuardPublicKey);
// with no allowed IPs it can carry no traffic. A peer's handshakes must
// carry ever later timestamps: give every udpmux host (and every listener
// that probes the same backend) a health key of its own.
func NewWireGuard(private, server [32]byte) (Probe, error) {
	priv, err := ecdh.X25519().NewPrivateKey(private[:])
	if err != nil {
		return nil, fmt.Errorf("check: WireGuard health key: %w", err)
	}
	spub, err := ecdh.X25519().NewPublicKey(server[:])
	if err != nil {
		return nil, fmt.Errorf("check: WireGuard backend key: %w", err)
	}
	w := &wireGuard{priv: priv, server: spub}
	copy(w.pub[:], priv.PublicKey().Bytes())
	w.c0 = blake2s.Sum256([]byte(wgConstruction))
	w.h0 = wgHash(w.c0[:], []byte(wgIdentifier))
	w.h0 = wgHash(w.h0[:], server[:])
	w.mac1Key = wgHash([]byte(wgLabelMAC1), server[:])
	w.respMAC1Key = wgHash([]byte(wgLabelMAC1), w.pub[:])
	w.cookieKey = wgHash([]byte(wgLabelCookie), server[:])
	return w, nil
}

// WireGuardPublicKey returns the public key of a WireGuard health key: the peer
// every backend must list.
func WireGuardPublicKey(private [32]byte) ([32]byte, error) {
	var pub [32]byte
	k, err := ecdh.X25519().NewPrivateKey(private[:])
	if err != nil {
		return pub, fmt.Errorf("check: WireGuard key: %w", err)
	}
	copy(pub[:], k.PublicKey().Bytes())
	return pub, nil
}

// wgAttempt is one handshake: what checking its response needs.
type wgAttempt struct {
	w      *wireGuard
	eph    *ecdh.PrivateKey
	sender [4]byte
	h, c   [32]byte // hash and chaining key after the initiation
	mac1   [wgMACSize]byte
	req    []byte
}

// Start makes a handshake initiation (Noise IK's first message) with a
// fresh ephemeral key and sender index.
func (w *wireGuard) Start(now time.Time) (Attempt, error) {
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	a := &wgAttempt{w: w, eph: eph}
	random(a.sender[:])
	msg := make([]byte, wgInitiationSize)
	msg[0] = wgInitiation
	copy(msg[4:8], a.sender[:])
	epub := eph.PublicKey().Bytes()
	copy(msg[8:40], epub)

	a.c, a.h = w.c0, w.h0
	a.c = wgKDF(a.c[:], epub)[0]
	a.h = wgHash(a.h[:], epub)
	k, err := a.mixDH(eph, w.server)
	if err != nil {
		return nil, err
	}
	static := wgSeal(msg[40:40], &k, w.pub[:], a.h[:])
	a.h = wgHash(a.h[:], static)
	if k, err = a.mixDH(w.priv, w.server); err != nil {
		return nil, err
	}
	ts := wgSeal(msg[88:88], &k, w.timestamp(now), a.h[:])
	a.h = wgHash(a.h[:], ts)
	mac, _ := newMAC(w.mac1Key[:])
	mac.Write(msg[:116])
	mac.Sum(msg[116:116])
	copy(a.mac1[:], msg[116:132])
	a.req = msg // mac2 stays zero: no cookie
	return a, nil
}

// timestamp returns the TAI64N of now, or a nanosecond after the last one
// sent if the clock has not moved on since.
func (w *wireGuard) timestamp(now time.Time) []byte {
	w.mu.Lock()
	if !now.After(w.last) {
		now = w.last.Add(time.Nanosecond)
	}
	w.last = now
	w.mu.Unlock()
	ts := binary.BigEndian.AppendUint64(nil, uint64(now.Unix())+1<<62)
	return binary.BigEndian.AppendUint32(ts, uint32(now.Nanosecond()))
}

// mixDH sets (c, k) = KDF2(c, DH(priv, pub)) and returns k.
func (a *wgAttempt) mixDH(priv *ecdh.PrivateKey, pub *ecdh.PublicKey) ([32]byte, error) {
	dh, err := priv.ECDH(pub)
	if err != nil {
		return [32]byte{}, fmt.Errorf("check: WireGuard: %w", err)
	}
	out := wgKDF(a.c[:], dh)
	a.c = out[0]
	return out[1], nil
}

func (a *wgAttempt) Request() []byte { return a.req }

// Check accepts the backend's handshake response to the initiation
// (receiver index, mac1 and the empty payload sealed with the handshake's
// keys, which only the holder of the backend's private key can derive), or
// a cookie reply sealed with the initiation's mac1 as associated data,
// which only what read the initiation knows: a backend under load answers
// with one instead.
func (a *wgAttempt) Check(p []byte) error {
	if len(p) < 8 || p[1] != 0 || p[2] != 0 || p[3] != 0 {
		return notAnswer("WireGuard: not a WireGuard message")
	}
	switch {
	case p[0] == wgResponse && len(p) == wgResponseSize:
		if subtle.ConstantTimeCompare(p[8:12], a.sender[:]) != 1 {
			return notAnswer("WireGuard: response to another sender index")
		}
		return a.checkResponse(p)
	case p[0] == wgCookieReply && len(p) == wgCookieSize:
		if subtle.ConstantTimeCompare(p[4:8], a.sender[:]) != 1 {
			return notAnswer("WireGuard: cookie reply to another sender index")
		}
		aead, err := chacha20poly1305.NewX(a.w.cookieKey[:])
		if err != nil {
			return err
		}
		if _, err := aead.Open(nil, p[8:32], p[32:64], a.mac1[:]); err != nil {
			return notAnswer("WireGuard: cookie reply does not decrypt with the initiation's mac1")
		}
		return nil
	}
	return notAnswer(fmt.Sprintf("WireGuard: message type %d of %d bytes, not a handshake response or cookie reply", p[0], len(p)))
}

// checkResponse runs the initiator's side of the response (whitepaper,
// section 5.4.3) up to the empty payload's tag.
func (a *wgAttempt) checkResponse(p []byte) error {
	mac, _ := newMAC(a.w.respMAC1Key[:])
	mac.Write(p[:60])
	if subtle.ConstantTimeCompare(mac.Sum(nil), p[60:76]) != 1 {
		return notAnswer("WireGuard: response's mac1 is not for the health peer")
	}
	repub, err := ecdh.X25519().NewPublicKey(p[12:44])
	if err != nil {
		return notAnswer("WireGuard: response's ephemeral key is invalid")
	}
	c := wgKDF(a.c[:], p[12:44])[0]
	h := wgHash(a.h[:], p[12:44])
	for _, priv := range []*ecdh.PrivateKey{a.eph, a.w.priv} {
		dh, err := priv.ECDH(repub)
		if err != nil {
			return notAnswer("WireGuard: response's ephemeral key is of small order")
		}
		c = wgKDF(c[:], dh)[0]
	}
	var psk [32]byte // no preshared key
	out := wgKDF(c[:], psk[:])
	h = wgHash(h[:], out[1][:])
	aead, err := chacha20poly1305.New(out[2][:])
	if err != nil {
		return err
	}
	var nonce [chacha20poly1305.NonceSize]byte
	if _, err := aead.Open(nil, nonce[:], p[44:60], h[:]); err != nil {
		return notAnswer("WireGuard: response does not decrypt with the handshake's keys")
	}
	return nil
}

// wgHash is BLAKE2s-256 of the concatenated parts.
func wgHash(parts ...[]byte) [32]byte {
	h, _ := blake2s.New256(nil)
	for _, b := range parts {
		h.Write(b)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// wgKDF is WireGuard's KDF3 (HKDF over HMAC-BLAKE2s); KDF1 and KDF2 are
// its first outputs.
func wgKDF(key, input []byte) [3][32]byte {
	newHash := func() hash.Hash { h, _ := blake2s.New256(nil); return h }
	prk := hmac.New(newHash, key)
	prk.Write(input)
	t0 := prk.Sum(nil)
	var out [3][32]byte
	prev := []byte{}
	for i := range out {
		m := hmac.New(newHash, t0)
		m.Write(prev)
		m.Write([]byte{byte(i + 1)})
		m.Sum(out[i][:0])
		prev = out[i][:]
	}
	return out
}

// wgSeal seals plain with key k, a zero nonce and ad, appending to dst.
func wgSeal(dst []byte, k *[32]byte, plain, ad []byte) []byte {
	aead, err := chacha20poly1305.New(k[:])
	if err != nil {
		panic(err) // a 32-byte key is valid
	}
	var nonce [chacha20poly1305.NonceSize]byte
	return aead.Seal(dst, nonce[:], plain, ad)
}

// newMAC returns WireGuard's MAC: keyed BLAKE2s-128.
func newMAC(key []byte) (hash.Hash, error) { return blake2s.New128(key) }
