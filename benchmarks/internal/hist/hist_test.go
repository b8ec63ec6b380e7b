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
