package quiclb

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"sync"
)

// codec holds what encoding and decoding one configuration need: the
// configuration, its derived lengths and, for the encrypted algorithms, the
// AES block. It is immutable after newCodec and safe for concurrent use.
type codec struct {
	cfg   Config
	alg   Algorithm
	block cipher.Block // nil for Plaintext
	plen  int          // server ID + nonce, the plaintext block
	half  int          // plen/2 rounded up: the length of a Feistel half
	odd   bool         // plen is odd: the halves share the middle octet
	// fourth: decoding needs the fourth pass, since the server ID extends
	// past the octets that left_0 holds whole.
	fourth bool
	// mask0 and mask1 select the first half octets of a 16-octet block
	// read as two little-endian words; tail holds plen and the pass
	// number's place (octets 14 and 15) in the second word.
	mask0, mask1, tail uint64
}

func newCodec(c Config) (*codec, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	k := &codec{cfg: c, alg: c.Algorithm(), plen: c.ServerIDLen + c.NonceLen}
	k.cfg.Key = append([]byte(nil), c.Key...) // the caller keeps its slice
	if c.Key == nil {
		k.cfg.Key = nil
	}
	k.half = (k.plen + 1) / 2
	k.odd = k.plen%2 == 1
	k.fourth = c.ServerIDLen > k.plen/2
	k.setMasks()
	if k.alg != Plaintext {
		b, err := aes.NewCipher(k.cfg.Key)
		if err != nil {
			return nil, err // not reached: the key has 16 octets
		}
		k.block = b
	}
	return k, nil
}

func (k *codec) setMasks() {
	var m [16]byte
	for i := range k.half {
		m[i] = 0xff
	}
	k.mask0 = binary.LittleEndian.Uint64(m[:8])
	k.mask1 = binary.LittleEndian.Uint64(m[8:])
	k.tail = uint64(k.plen) << 48
}

// scratch is the working memory of one encryption or decryption. Passing
// slices of stack arrays to a cipher.Block, an interface, would move them
// to the heap, so Decode takes them from a pool instead: no allocation per
// connection ID in steady state.
type scratch struct {
	l, r    [aes.BlockSize]byte // Feistel halves, in the first half octets
	in, out [aes.BlockSize]byte
	pt      [MaxPlaintextLen]byte
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// round runs one Feistel pass: dst ^= truncate(AES(expand(plen, pass, src)),
// half). The expansion is src, zero padding, plen and pass (draft section
// "Useful functions"). src and dst hold a half in their first half octets;
// the rest of dst is left as it was, and the rest of src ignored. It works
// on two words rather than on octets; the AES operation is most of its
// cost.
func (k *codec) round(s *scratch, pass byte, src, dst *[aes.BlockSize]byte) {
	le := binary.LittleEndian
	le.PutUint64(s.in[:8], le.Uint64(src[:8])&k.mask0)
	le.PutUint64(s.in[8:], le.Uint64(src[8:])&k.mask1|k.tail|uint64(pass)<<56)
	k.block.Encrypt(s.out[:], s.in[:])
	le.PutUint64(dst[:8], le.Uint64(dst[:8])^le.Uint64(s.out[:8])&k.mask0)
	le.PutUint64(dst[8:], le.Uint64(dst[8:])^le.Uint64(s.out[8:])&k.mask1)
}

// clearLeft clears the last four bits of a left half of odd length;
// clearRight the first four bits of a right half.
func (k *codec) clearLeft(l []byte) {
	if k.odd {
		l[k.half-1] &= 0xf0
	}
}

func (k *codec) clearRight(r []byte) {
	if k.odd {
		r[0] &= 0x0f
	}
}

// split copies the plen octets of b into the halves l and r; for an odd
// plen the middle octet's high nibble goes to l and its low nibble to r.
func (k *codec) split(s *scratch, b []byte) (l, r *[aes.BlockSize]byte) {
	l, r = &s.l, &s.r
	copy(l[:], b[:k.half])
	copy(r[:], b[k.plen-k.half:k.plen])
	k.clearLeft(l[:])
	k.clearRight(r[:])
	return l, r
}

// join is the inverse of split: it writes l and r as plen octets to b.
func (k *codec) join(b []byte, l, r *[aes.BlockSize]byte) {
	copy(b, l[:k.half])
	if k.odd {
		b[k.half-1] |= r[0]
		copy(b[k.half:k.plen], r[1:k.half])
		return
	}
	copy(b[k.half:k.plen], r[:k.half])
}

// encrypt writes the ciphertext of the plen octets of pt to ct (which may
// be pt).
func (k *codec) encrypt(s *scratch, ct, pt []byte) {
	if k.alg == SinglePass {
		k.block.Encrypt(ct[:aes.BlockSize], pt[:aes.BlockSize])
		return
	}
	l, r := k.split(s, pt)
	for pass := byte(1); pass <= 4; pass++ {
		k.pass(s, pass, l, r)
	}
	k.join(ct, l, r)
}

// pass runs Feistel pass number pass: the odd passes take the left half
// into the right, the even ones the right into the left.
func (k *codec) pass(s *scratch, pass byte, l, r *[aes.BlockSize]byte) {
	if pass%2 == 1 {
		k.round(s, pass, l, r)
		k.clearRight(r[:])
		return
	}
	k.round(s, pass, r, l)
	k.clearLeft(l[:])
}

// decrypt writes to pt the plaintext of the plen octets of ct, or at
// least its first ServerIDLen octets: the four-pass network stops after
// three passes when the server ID lies in left_0.
func (k *codec) decrypt(s *scratch, pt, ct []byte) {
	if k.alg == SinglePass {
		k.block.Decrypt(pt[:aes.BlockSize], ct[:aes.BlockSize])
		return
	}
	l, r := k.split(s, ct)
	for pass := byte(4); pass >= 2; pass-- {
		k.pass(s, pass, l, r)
	}
	if !k.fourth {
		copy(pt, l[:k.half])
		return
	}
	k.pass(s, 1, l, r)
	k.join(pt, l, r)
}

// serverID decodes the server ID of cid, which holds at least CIDLen
// octets of this configuration.
func (k *codec) serverID(cid []byte) ServerID {
	var id ServerID
	id.n = uint8(k.cfg.ServerIDLen)
	body := cid[1 : 1+k.plen]
	if k.alg == Plaintext {
		copy(id.b[:], body[:id.n])
		return id
	}
	s := scratchPool.Get().(*scratch)
	k.decrypt(s, s.pt[:], body)
	copy(id.b[:], s.pt[:id.n])
	scratchPool.Put(s)
	return id
}

// firstOctet returns the first octet of a connection ID of n octets whose
// five low bits, if the length is not self-encoded, are random5.
func (k *codec) firstOctet(n int, random5 byte) byte {
	low := random5 & 0x1f
	if k.cfg.EncodeLength {
		low = byte(n - 1)
	}
	return k.cfg.Rotation<<5 | low
}
