package check

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"syscall"
)

// StaticKey is an OpenVPN static key (`openvpn --genkey tls-auth` or
// `--genkey tls-crypt`): two keys of a 64-byte cipher key and a 64-byte
// HMAC key each, 256 bytes in all.
type StaticKey [256]byte

const (
	staticBegin = "-----BEGIN OpenVPN Static key V1-----"
	staticEnd   = "-----END OpenVPN Static key V1-----"
)

// ParseStaticKey reads a static key in OpenVPN's file format: comment
// lines, then the key as hex between its BEGIN and END lines.
func ParseStaticKey(text []byte) (StaticKey, error) {
	var k StaticKey
	begin := bytes.Index(text, []byte(staticBegin))
	end := -1
	if begin >= 0 {
		begin += len(staticBegin)
		end = bytes.Index(text[begin:], []byte(staticEnd))
	}
	if end < 0 {
		return k, fmt.Errorf("check: no %q ... %q block (an OpenVPN static key, as openvpn --genkey writes it)", staticBegin, staticEnd)
	}
	digits := make([]byte, 0, 2*len(k))
	for _, c := range text[begin : begin+end] {
		switch {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
		case len(digits) == cap(digits):
			return k, fmt.Errorf("check: static key longer than %d bytes", len(k))
		default:
			digits = append(digits, c)
		}
	}
	defer clear(digits)
	if n, err := hex.Decode(k[:], digits); err != nil || n != len(k) {
		return StaticKey{}, fmt.Errorf("check: static key is not %d bytes of hex", len(k))
	}
	return k, nil
}

// LoadStaticKey reads a static key file (see ParseStaticKey). Like
// OpenVPN's own key files it must be private to its owner: a file that
// group or others may read is refused, since whoever reads it can forge
// the server's control packets.
func LoadStaticKey(path string) (StaticKey, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return StaticKey{}, fmt.Errorf("check: static key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return StaticKey{}, fmt.Errorf("check: static key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return StaticKey{}, fmt.Errorf("check: static key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return StaticKey{}, fmt.Errorf("check: static key file %s has mode %04o, which lets group or others read it; chmod 600 %s", path, perm, path)
	}
	if fi.Size() > 4096 {
		return StaticKey{}, fmt.Errorf("check: static key file %s is %d bytes, larger than any static key file", path, fi.Size())
	}
	text := make([]byte, fi.Size())
	defer clear(text)
	if _, err := f.ReadAt(text, 0); err != nil {
		return StaticKey{}, fmt.Errorf("check: static key: %w", err)
	}
	k, err := ParseStaticKey(text)
	if err != nil {
		return k, fmt.Errorf("%w (file %s)", err, path)
	}
	return k, nil
}

// cipherKey and hmacKey return the parts of key i (0 or 1).
func (k *StaticKey) cipherKey(i int) []byte { return k[i*128 : i*128+64] }
func (k *StaticKey) hmacKey(i int) []byte   { return k[i*128+64 : i*128+128] }
