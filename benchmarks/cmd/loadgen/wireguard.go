package main

import "encoding/binary"

// WireGuard message layout (whitepaper, section 5.4), as much of it as a
// proxy's dissector reads.
const (
	wgInitiation    = 1
	wgTransport     = 4
	wgHeaderLen     = 16  // type, 3 reserved bytes, receiver index, counter
	wgMinTransport  = 32  // the header and an empty payload's 16-byte tag
	wgInitiationLen = 148 // fixed length of a handshake initiation
)

// putTransport writes a transport message header into b: receiver index
// and counter are little-endian, as WireGuard writes them.
func putTransport(b []byte, receiver uint32, counter uint64) {
	b[0], b[1], b[2], b[3] = wgTransport, 0, 0, 0
	binary.LittleEndian.PutUint32(b[4:], receiver)
	binary.LittleEndian.PutUint64(b[8:], counter)
}

// initiation returns a handshake initiation from sender: the right type and
// length, zeros where the keys and MACs would be. A proxy without the
// backends' private key reads only its type and length.
func initiation(sender uint32) []byte {
	b := make([]byte, wgInitiationLen)
	b[0] = wgInitiation
	binary.LittleEndian.PutUint32(b[4:], sender)
	return b
}
