package main

// Throughput as RFC 2544 (section 26.1) defines it: the highest offered
// rate at which the server loses nothing. On this lab a trial never loses
// exactly nothing (a run of 2 s at 100 000/s sends 200 000 datagrams, and a
// single hypervisor hiccup drops a few), so "nothing" is read as loss under
// lossLimitPct, and a rate holds when a majority of its runs (2 of 3 by
// default) stay under it. The rate is found by a binary search between a
// rate known to hold (0, or the fixed rate if it held) and the generator's
// maximum, in a fixed number of steps: the resolution is the width of that
// interval divided by 2^steps.

// lossLimitPct is the loss under which a trial counts as lossless.
const lossLimitPct = 0.1

// defaultSearchSteps is the number of halvings of the search interval.
const defaultSearchSteps = 5

// majority returns how many of n runs must hold for a rate to hold.
func majority(n int) int { return n/2 + 1 }

// verdict decides a rate from the losses of the runs made at it so far,
// out of runs planned: decided once a majority has held or can no longer
// hold, so a search stops after two runs when they agree.
func verdict(lossPct []float64, runs int) (decided, holds bool) {
	held := 0
	for _, l := range lossPct {
		if l < lossLimitPct {
			held++
		}
	}
	need := majority(runs)
	switch {
	case held >= need:
		return true, true
	case len(lossPct)-held > runs-need:
		return true, false
	}
	return len(lossPct) >= runs, false
}

// bisect finds the highest rate that holds in [lo, hi], where lo is known
// to hold (or is 0) and hi is known not to, in steps halvings: holds is
// asked about each midpoint and the half that contains the boundary is
// kept. It returns the highest rate found to hold (lo if none did) and the
// rates it tried, in order.
func bisect(lo, hi float64, steps int, holds func(rate float64) bool) (best float64, tried []float64) {
	for range steps {
		mid := (lo + hi) / 2
		tried = append(tried, mid)
		if holds(mid) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo, tried
}
