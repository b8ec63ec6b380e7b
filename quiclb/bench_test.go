package quiclb

import "testing"

var sinkResult Result

// BenchmarkDecode decodes each draft vector's CID: plaintext, single-pass
// and four-pass with three and four passes.
func BenchmarkDecode(b *testing.B) {
	for _, v := range []struct{ name, row string }{
		{"plaintext", "plaintext/3+4"},
		{"single-pass", "single-pass/8+8"},
		{"four-pass-3", "four-pass/3+4 odd"},
		{"four-pass-4", "four-pass/10+5 odd, fourth pass"},
		{"four-pass-even", "four-pass/9+9 even (row says cr_bits 3)"},
	} {
		var vec vector
		for _, w := range vectors {
			if w.name == v.row {
				vec = w
			}
		}
		d, err := NewDecoder(vec.config(b))
		if err != nil {
			b.Fatal(err)
		}
		cid := unhex(b, vec.cid)
		b.Run(v.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				sinkResult = d.Decode(cid)
			}
		})
	}
	b.Run("unroutable", func(b *testing.B) {
		d, _ := NewDecoder(vectors[0].config(b))
		cid := unhex(b, "e700112233445566")
		b.ReportAllocs()
		for b.Loop() {
			sinkResult = d.Decode(cid)
		}
	})
}

// BenchmarkDecodeParallel decodes four-pass CIDs on every P at once, as
// the loops of a listener do.
func BenchmarkDecodeParallel(b *testing.B) {
	v := vectors[2]
	d, _ := NewDecoder(v.config(b))
	cid := unhex(b, v.cid)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		var r Result
		for pb.Next() {
			r = d.Decode(cid)
		}
		_ = r
	})
}

func BenchmarkNewCID(b *testing.B) {
	for _, v := range []vector{vectors[0], vectors[2], vectors[4]} {
		sid, _ := ParseServerID(v.sid)
		e, _ := NewEncoder(v.config(b), sid)
		b.Run(v.alg.String(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := e.NewCID(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
