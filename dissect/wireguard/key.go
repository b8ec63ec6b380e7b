package wireguard

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"syscall"
)

// LoadPrivateKey reads a private key from the file at path, in the base64
// form `wg genkey` writes (surrounding white space is ignored). It refuses
// a file that group or others may access or that belongs to another user
// than the process's effective user, as wg(8) warns about, and says how to
// fix it.
func LoadPrivateKey(path string) ([32]byte, error) {
	var key [32]byte
	// O_NONBLOCK: opening a FIFO someone left there must not hang; it is
	// refused below as not a regular file.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return key, fmt.Errorf("wireguard: private key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return key, fmt.Errorf("wireguard: private key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return key, fmt.Errorf("wireguard: private key file %s is not a regular file", path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if euid := os.Geteuid(); int(st.Uid) != euid {
			return key, fmt.Errorf("wireguard: private key file %s belongs to uid %d, not to this process's uid %d; make it this user's (chown %d %s) or run as its owner",
				path, st.Uid, euid, euid, path)
		}
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return key, fmt.Errorf("wireguard: private key file %s has mode %04o, which lets group or others read or change it; make it private to its owner: chmod 600 %s",
			path, perm, path)
	}
	// A key is 44 characters; read a little more to recognise a longer
	// file without reading a large one whole.
	buf := make([]byte, 0, 128)
	defer clear(buf[:cap(buf)])
	buf, err = readAtMost(f, buf)
	if err != nil {
		return key, fmt.Errorf("wireguard: private key: %w", err)
	}
	text := bytes.TrimSpace(buf)
	bad := fmt.Errorf("wireguard: private key file %s does not hold a key as `wg genkey` writes it (44 characters of base64)", path)
	if len(text) != base64.StdEncoding.EncodedLen(len(key)) {
		return key, bad
	}
	var dec [33]byte // base64's decoded length of 44 characters
	defer clear(dec[:])
	if n, err := base64.StdEncoding.Decode(dec[:], text); err != nil || n != len(key) {
		return key, bad
	}
	copy(key[:], dec[:len(key)])
	return key, nil
}

// readAtMost reads f into buf up to its capacity.
func readAtMost(f *os.File, buf []byte) ([]byte, error) {
	for len(buf) < cap(buf) {
		n, err := f.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}
