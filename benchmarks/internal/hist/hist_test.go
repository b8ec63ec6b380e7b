package hist

import "testing"

func TestQuantiles(t *testing.T) {
	var h Histogram
	for v := int64(1); v <= 100000; v++ {
		h.Record(v)
	}
	for _, c := range []struct {
		q    float64
		want int64
	}{{0.5, 50000}, {0.99, 99000}, {0.999, 99900}} {
		got := h.Quantile(c.q)
		if got > c.want || float64(got) < float64(c.want)*0.96 {
			t.Errorf("Quantile(%v) = %d, want within 4%% below %d", c.q, got, c.want)
		}
	}
	if h.Max() != 100000 || h.Count() != 100000 {
		t.Errorf("Max, Count = %d, %d", h.Max(), h.Count())
	}
}

func TestIndexMonotonic(t *testing.T) {
	prev := -1
	for v := uint64(0); v < 1<<20; v += 7 {
		i := index(v)
		if i < prev {
			t.Fatalf("index(%d) = %d < %d", v, i, prev)
		}
		if lowest(i) > v {
			t.Fatalf("lowest(index(%d)) = %d", v, lowest(i))
		}
		prev = i
	}
}

func TestMerge(t *testing.T) {
	var a, b, all Histogram
	for v := int64(0); v < 5000; v++ {
		all.Record(v * 3)
		if v%2 == 0 {
			a.Record(v * 3)
		} else {
			b.Record(v * 3)
		}
	}
	a.Add(b.Buckets(), b.Max())
	for _, q := range []float64{0.5, 0.99, 0.999} {
		if a.Quantile(q) != all.Quantile(q) {
			t.Errorf("merged Quantile(%v) = %d, want %d", q, a.Quantile(q), all.Quantile(q))
		}
	}
	if a.Count() != all.Count() || a.Max() != all.Max() {
		t.Errorf("merged Count, Max = %d, %d; want %d, %d", a.Count(), a.Max(), all.Count(), all.Max())
	}
}
