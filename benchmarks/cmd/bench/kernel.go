package main

import (
	"fmt"
	"time"
)

// benchListener is the name of the listener in the daemon's configuration
// (udpmuxConf).
const benchListener = "bench"

// daemonStatus is what `udpmux status -o json` says of the fast path: the
// bench listener's sessions in the kernel's table, and what the kernel
// forwarded for the table's sessions since the daemon started, as of the
// table's last reading of the kernel's counters (Polls counts them).
type daemonStatus struct {
	Proxies map[string]struct {
		Offloaded int64 `json:"offloaded"`
	} `json:"proxies"`
	FastPath *struct {
		RxPackets uint64 `json:"rx_datagrams"`
		TxPackets uint64 `json:"tx_datagrams"`
		Polls     uint64 `json:"polls"`
	} `json:"fast_path"`
}

// offloaded returns the bench listener's sessions in the kernel's table.
func (st daemonStatus) offloaded() int64 { return st.Proxies[benchListener].Offloaded }

// kernelRec is what the kernel forwarded for a fast-path peer's sessions
// while one configuration was measured (its runs, and its cross-check,
// profile or throughput search), against what the generator sent
// meanwhile: a fast peer whose sessions stayed in userspace shows a share
// near 0 rather than passing unnoticed.
type kernelRec struct {
	Offloaded int64  `json:"offloaded"`    // the listener's sessions in the kernel's table at the end
	Sent      uint64 `json:"sent"`         // datagrams the generator sent (data: measured runs send no hellos)
	Received  uint64 `json:"received"`     // replies it got on their flows
	Rx        uint64 `json:"rx_datagrams"` // forwarded by the kernel, client → backend
	Tx        uint64 `json:"tx_datagrams"` // forwarded by the kernel, backend → client
	Err       string `json:"error,omitempty"`
}

// rxShare is the share of the generator's datagrams that the kernel
// forwarded to the backends, in percent.
func (k *kernelRec) rxShare() float64 {
	if k.Sent == 0 {
		return 0
	}
	return 100 * float64(k.Rx) / float64(k.Sent)
}

// kernelMark is the daemon's fast-path counters once they include every
// datagram the generator sent until then (the generator's totals then).
type kernelMark struct {
	st                   daemonStatus
	gens, sent, received uint64
}

// kernelReadings is how many of the table's readings of the kernel's
// counters a mark waits for: the first may have started before the
// generator's last datagrams passed.
const kernelReadings = 2

// kernelWait bounds that wait. The table waits 20 times as long as a
// reading took before the next, but never longer than a quarter of the
// idle timeout (15 s with udpmuxConf's 60 s): with 10 000 sessions here a
// reading takes long enough that they come every 15 s or so, idle or not.
const kernelWait = 45 * time.Second

// kernelMark reads srv's fast-path counters after kernelReadings readings
// that followed the generator's last run; last is returned again when no
// generator has run since it was read.
func (h *harness) kernelMark(srv *server, last *kernelMark) (*kernelMark, error) {
	if last != nil && last.gens == h.gens {
		return last, nil
	}
	st, err := srv.status()
	if err != nil {
		return nil, err
	}
	if st.FastPath == nil {
		return nil, fmt.Errorf("udpmux status: no fast_path")
	}
	want := st.FastPath.Polls + kernelReadings
	for deadline := time.Now().Add(kernelWait); st.FastPath.Polls < want; {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("udpmux status: the kernel's counters were not read for %v", kernelWait)
		}
		time.Sleep(200 * time.Millisecond)
		if st, err = srv.status(); err != nil {
			return nil, err
		}
		if st.FastPath == nil {
			return nil, fmt.Errorf("udpmux status: no fast_path")
		}
	}
	return &kernelMark{st: st, gens: h.gens, sent: h.sent, received: h.received}, nil
}

// kernelSince returns what the kernel forwarded since from, reading the
// counters again (and leaving the new mark in *last).
func (h *harness) kernelSince(srv *server, from *kernelMark, last **kernelMark) *kernelRec {
	to, err := h.kernelMark(srv, *last)
	if err != nil {
		return &kernelRec{Err: err.Error()}
	}
	*last = to
	return &kernelRec{
		Offloaded: to.st.offloaded(),
		Sent:      to.sent - from.sent,
		Received:  to.received - from.received,
		Rx:        to.st.FastPath.RxPackets - from.st.FastPath.RxPackets,
		Tx:        to.st.FastPath.TxPackets - from.st.FastPath.TxPackets,
	}
}
