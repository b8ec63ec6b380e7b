// Package hist is a fixed-size log-linear histogram of durations, precise to
// about 3 % of the value, cheap enough to record every datagram's round trip.
package hist

import "math/bits"

// subBits is the number of mantissa bits kept per power of two: 32 buckets
// per octave.
const subBits = 5

const (
	subCount = 1 << subBits
	octaves  = 64 - subBits
)

// Histogram counts non-negative values (nanoseconds). The zero value is ready
// to use.
type Histogram struct {
	counts [octaves*subCount + subCount]uint64
	total  uint64
	max    int64
}

// index maps v to its bucket: values below subCount have their own bucket;
// above, the bucket is the octave and the top subBits bits after the leading one.
func index(v uint64) int {
	if v < subCount {
		return int(v)
	}
	exp := bits.Len64(v) - 1 - subBits
	return (exp+1)*subCount + int((v>>uint(exp))&(subCount-1))
}

// lowest returns the smallest value that falls into bucket i.
func lowest(i int) uint64 {
	if i < subCount {
		return uint64(i)
	}
	exp := i/subCount - 1
	return (uint64(subCount) | uint64(i%subCount)) << uint(exp)
}

// Record adds one value; negative values count as zero.
func (h *Histogram) Record(v int64) {
	if v < 0 {
		v = 0
	}
	h.counts[index(uint64(v))]++
	h.total++
	if v > h.max {
		h.max = v
	}
}

// Count returns the number of recorded values.
func (h *Histogram) Count() uint64 { return h.total }

// Max returns the largest recorded value.
func (h *Histogram) Max() int64 { return h.max }

// Quantile returns the lower bound of the bucket holding the q-quantile
// (0 < q <= 1), or 0 if nothing was recorded.
func (h *Histogram) Quantile(q float64) int64 {
	if h.total == 0 {
		return 0
	}
	rank := uint64(q * float64(h.total))
	if rank >= h.total {
		rank = h.total - 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen > rank {
			return int64(lowest(i))
		}
	}
	return h.max
}

// Bucket is one non-empty bucket, for moving a histogram between processes.
type Bucket struct {
	Index int    `json:"i"`
	Count uint64 `json:"n"`
}

// Buckets returns the non-empty buckets.
func (h *Histogram) Buckets() []Bucket {
	var out []Bucket
	for i, c := range h.counts {
		if c > 0 {
			out = append(out, Bucket{i, c})
		}
	}
	return out
}

// Add merges buckets taken from another histogram whose largest value was
// max; buckets with an index out of range are ignored.
func (h *Histogram) Add(buckets []Bucket, max int64) {
	for _, b := range buckets {
		if b.Index >= 0 && b.Index < len(h.counts) {
			h.counts[b.Index] += b.Count
			h.total += b.Count
		}
	}
	if max > h.max {
		h.max = max
	}
}
