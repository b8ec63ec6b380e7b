//go:build linux

package proxy

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cespare/xxhash/v2"
)

// DefaultTableSize is the Maglev lookup table size used when none is given.
// It is prime, as the permutation method requires, and large enough
// (≥ 100 × backends for any realistic backend count) that every backend's
// share of the table differs from the ideal by well under 1 %, while the
// table (2 bytes per entry) still fits comfortably in L2 cache.
const DefaultTableSize = 65537

// maxTableSize bounds the table so a configuration typo cannot make a rebuild
// allocate gigabytes.
const maxTableSize = 1 << 24

// maxBackends is the number of distinct indexes a uint16 table entry can hold
// once one value is reserved as the "empty" marker during the fill.
const maxBackends = 1<<16 - 1

const emptySlot = 1<<16 - 1

// The two seeds that derive a backend's permutation from its name. They are
// part of the on-the-wire contract between udpmux instances: every instance
// given the same backend list must map a key to the same backend, so the seeds
// are fixed and must never change (changing them would move almost every
// session of a fleet to another backend during a rolling upgrade).
const (
	seedOffset uint64 = 0x75646d7578_4f4646 // "udmux" "OFF"
	seedSkip   uint64 = 0x75646d7578_534b50 // "udmux" "SKP"
)

// Maglev is an immutable Maglev consistent-hashing lookup table (Eisenbud et
// al., "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI 2016,
// §3.4). A key hash is mapped to a backend by a single table lookup, and when
// a backend leaves the set only a little more than the keys it owned move,
// which keeps sessions sticky across health changes.
//
// The table depends only on the set of backend names and their weights (not
// on their order in the configuration), so separate udpmux instances, or the
// same instance after a restart, agree on the mapping. A Balancer builds
// weighted tables, in which a backend's share of the slots follows its
// weight; with equal weights the table is the unweighted one. A Maglev is
// safe for concurrent use.
type Maglev struct {
	// lookup holds, for each slot, the index of the owning backend in the
	// list passed to NewMaglev. uint16 halves the cache footprint of the
	// hot table compared with int32.
	lookup []uint16
}

// NewMaglev builds a lookup table of the given prime size (0 means
// DefaultTableSize) for backends, which are identified by their string
// (normally "host:port"). Backends whose entry in down is true are left out
// of the table, but the indexes returned by Pick still refer to positions in
// backends; a table built with some backends down assigns every other backend
// almost exactly the keys it would own with those backends absent from the
// list, which is what lets health changes rebuild the table without moving the
// sessions of healthy backends. down may be nil or shorter than backends;
// missing entries count as up.
//
// It returns an error if the size is not a prime greater than len(backends),
// if a name is empty or repeated, or if no backend is up.
func NewMaglev(backends []string, size int, down []bool) (*Maglev, error) {
	if size == 0 {
		size = DefaultTableSize
	}
	if err := validateBackends(backends); err != nil {
		return nil, err
	}
	if size <= len(backends) || size > maxTableSize || !isPrime(size) {
		return nil, fmt.Errorf("proxy: maglev table size %d must be a prime in (%d, %d]",
			size, len(backends), maxTableSize)
	}
	up := make([]int, 0, len(backends))
	for i := range backends {
		if i < len(down) && down[i] {
			continue
		}
		up = append(up, i)
	}
	if len(up) == 0 {
		return nil, errors.New("proxy: maglev: no backend is up")
	}
	return buildMaglev(backends, up, nil, size), nil
}

// member is one backend of a table being built: its index in the list of
// names and its weight.
type member struct {
	index  int
	weight uint64
}

// buildMaglev builds the table for the backends whose indexes are in up
// (non-empty), each with the weight at the same position in weights (nil:
// all equal); inputs must already be validated, and weights be positive.
func buildMaglev(backends []string, up, weights []int, size int) *Maglev {
	ms := make([]member, len(up))
	for k, bi := range up {
		ms[k] = member{index: bi, weight: 1}
		if weights != nil {
			ms[k].weight = uint64(weights[k])
		}
	}
	// Fill in name order so that the result does not depend on how the
	// operator ordered the list: turns in the fill decide which backend gets
	// a contested slot, so the order has to be canonical for instances to agree.
	slices.SortFunc(ms, func(a, b member) int { return strings.Compare(backends[a.index], backends[b.index]) })
	return &Maglev{lookup: fill(backends, ms, uint64(size))}
}

// fill runs the population loop of the paper: backends take turns claiming
// the next free slot of their own permutation of the table. The permutation
// of backend i is offset_i, offset_i+skip_i, offset_i+2·skip_i, … (mod M),
// which visits every slot exactly once because M is prime and
// 0 < skip_i < M.
//
// Weights change how often a backend takes a turn (§3.4 of the paper
// leaves the method open; this is Envoy's): in round r a backend of weight
// w takes its turn if r·w has reached the turns it has had times the
// largest weight, so that the heaviest backends claim a slot every round
// and one of half their weight every other round, and the shares of the
// table follow the weights. With equal weights every backend takes every
// turn, exactly as the unweighted loop, so that tables built before
// weights existed stay as they were; every backend claims in the first
// round, so none of weight > 0 is left without a slot.
func fill(backends []string, ms []member, m uint64) []uint16 {
	lookup := make([]uint16, m)
	for i := range lookup {
		lookup[i] = emptySlot
	}
	cur := make([]uint64, len(ms))    // next candidate slot of each backend
	skip := make([]uint64, len(ms))   // step of each backend's permutation
	target := make([]uint64, len(ms)) // turns had, times maxWeight
	var maxWeight uint64
	for k, mb := range ms {
		cur[k] = hashString(seedOffset, backends[mb.index]) % m
		skip[k] = hashString(seedSkip, backends[mb.index])%(m-1) + 1
		maxWeight = max(maxWeight, mb.weight)
	}
	filled := uint64(0)
	for round := uint64(1); ; round++ {
		for k, mb := range ms {
			if round*mb.weight < target[k] {
				continue
			}
			target[k] += maxWeight
			c := cur[k]
			for lookup[c] != emptySlot {
				c += skip[k]
				if c >= m {
					c -= m
				}
			}
			lookup[c] = uint16(mb.index)
			c += skip[k]
			if c >= m {
				c -= m
			}
			cur[k] = c
			filled++
			if filled == m {
				return lookup
			}
		}
	}
}

// Pick returns the index (into the list given to NewMaglev) of the backend
// that owns keyHash. It is O(1) and does not allocate. keyHash should be a
// well-mixed hash of the session key; the same keyHash always gives the same
// backend for a given table.
func (m *Maglev) Pick(keyHash uint64) int {
	return int(m.lookup[keyHash%uint64(len(m.lookup))])
}

func hashString(seed uint64, s string) uint64 {
	d := xxhash.NewWithSeed(seed)
	d.WriteString(s)
	return d.Sum64()
}

func validateBackends(backends []string) error {
	if len(backends) == 0 {
		return errors.New("proxy: no backends")
	}
	if len(backends) > maxBackends {
		return fmt.Errorf("proxy: %d backends, at most %d supported", len(backends), maxBackends)
	}
	seen := make(map[string]struct{}, len(backends))
	for i, b := range backends {
		if b == "" {
			return fmt.Errorf("proxy: backend %d has an empty address", i)
		}
		if _, dup := seen[b]; dup {
			// Two entries with one identity would share a permutation and
			// could never be told apart by the hash.
			return fmt.Errorf("proxy: backend %q listed twice", b)
		}
		seen[b] = struct{}{}
	}
	return nil
}

func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	if n%2 == 0 {
		return n == 2
	}
	for d := 3; d*d <= n; d += 2 {
		if n%d == 0 {
			return false
		}
	}
	return true
}
