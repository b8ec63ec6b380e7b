package wire

import "testing"

func TestRoundTrip(t *testing.T) {
	b := make([]byte, 64)
	want := Header{Flow: 99999, Seq: 1 << 40, Sent: 123456789}
	Put(b, want)
	got, err := Parse(b)
	if err != nil || got != want {
		t.Fatalf("Parse = %+v, %v; want %+v", got, err, want)
	}
	if _, err := Parse(b[:HeaderLen-1]); err != ErrShort {
		t.Fatalf("short: err = %v", err)
	}
	b[0] ^= 1
	if _, err := Parse(b); err != ErrMagic {
		t.Fatalf("magic: err = %v", err)
	}
}
