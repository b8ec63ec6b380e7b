//go:build linux

package mux

import (
	"sync/atomic"

	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// counter is a statistic with one writer, its loop: Store(Load()+n) is
// race-free without a locked instruction on the packet path.
type counter struct{ v atomic.Uint64 }

func (c *counter) add(n uint64) { c.v.Store(c.v.Load() + n) }
func (c *counter) inc()         { c.add(1) }
func (c *counter) load() uint64 { return c.v.Load() }

// socketStats are one loop's counters for one listener.
type socketStats struct {
	rxDatagrams, rxBytes, txDatagrams, txBytes counter
	rxCoalesced, upstreamCoalesced             counter
	truncated, malformed, unknownFlow          counter
	statelessDrops, unknownID, keysRefused     counter
	roamed, roamRefused, moved                 counter
	movesWithoutTuple                          counter
	kernelDrops                                counter
	opened, refusedFull, refusedOpen           counter
	closed                                     [len(reasonIndex)]counter
	forwarded, forwardDrops                    counter
	sendErrors, sendDrops, tooLarge            counter
	upstreamRx, upstreamKernelDrops            counter
	upstreamTx, upstreamSendDrops              counter
	upstreamSendErrors                         counter
	relayed, relayDrops                        counter
}

// reasonIndex sizes the per-reason close counters.
var reasonIndex = [...]session.Reason{
	session.ReasonIdle, session.ReasonClosed, session.ReasonShutdown,
	session.ReasonRefused, session.ReasonError, session.ReasonHandoff,
}

// ListenerStats are a listener's counters summed over all loops. The JSON
// keys are the fields' names in snake_case, as udpmux's config and metrics
// spell theirs.
type ListenerStats struct {
	// Name and Address are the listener's, as configured and as bound.
	Name    string `json:"name"`
	Address string `json:"address"`
	// RxDatagrams and RxBytes count datagrams read from the listener's
	// sockets; TxDatagrams and TxBytes those sent to clients.
	RxDatagrams uint64 `json:"rx_datagrams"`
	RxBytes     uint64 `json:"rx_bytes"`
	TxDatagrams uint64 `json:"tx_datagrams"`
	TxBytes     uint64 `json:"tx_bytes"`
	// RxCoalesced counts the datagrams that arrived coalesced with others
	// of their flow (UDP GRO; a receive cuts them apart), of RxDatagrams;
	// UpstreamCoalesced the same of UpstreamRx.
	RxCoalesced       uint64 `json:"rx_coalesced"`
	UpstreamCoalesced uint64 `json:"upstream_coalesced"`
	// Truncated counts datagrams larger than the read buffer (MSG_TRUNC),
	// dropped rather than delivered cut.
	Truncated uint64 `json:"truncated"`
	// Malformed counts datagrams the dissector rejected; UnknownFlow those it
	// allowed only for an existing session that did not exist; UnknownID
	// those whose ID (session.Dissection) no session held; StatelessDrops
	// those it handed over without a session to a handler that serves
	// sessions only.
	Malformed      uint64 `json:"malformed"`
	UnknownFlow    uint64 `json:"unknown_flow"`
	UnknownID      uint64 `json:"unknown_id"`
	StatelessDrops uint64 `json:"stateless_drops"`
	// Roamed counts datagrams of a session from an address other than its
	// peer's, handed to its handler's Roam; RoamRefused those dropped
	// because the handler cannot follow a client (it is no
	// session.Roamer); Moved the sessions handlers moved to a new address,
	// of which MovesWithoutTuple could not take the new 4-tuple (a stale
	// session held it) and were found by their other keys.
	Roamed            uint64 `json:"roamed"`
	RoamRefused       uint64 `json:"roam_refused"`
	Moved             uint64 `json:"moved"`
	MovesWithoutTuple uint64 `json:"moves_without_tuple"`
	// KeysRefused counts keys handlers asked sessions to be found by
	// (Session.AddKey, such as an ID learned from a server) that the table
	// could not take (full, or another session's).
	KeysRefused uint64 `json:"keys_refused"`
	// KernelDrops is the growth of the sockets' receive-queue overflow
	// counters (SO_RXQ_OVFL) while udpmux ran.
	KernelDrops uint64 `json:"kernel_drops"`
	// SessionsOpened counts sessions created; RefusedFull the new flows
	// refused because the session table was full; RefusedOpen those the
	// handler's Open refused.
	SessionsOpened uint64 `json:"sessions_opened"`
	RefusedFull    uint64 `json:"refused_full"`
	RefusedOpen    uint64 `json:"refused_open"`
	// SessionsClosed counts ended sessions by reason.
	SessionsClosed map[string]uint64 `json:"sessions_closed"`
	// Forwarded counts datagrams passed to the loop owning their session;
	// ForwardDrops those lost because that loop's inbox was full.
	Forwarded    uint64 `json:"forwarded"`
	ForwardDrops uint64 `json:"forward_drops"`
	// SendErrors counts datagrams the kernel refused to send; SendDrops those
	// dropped after the send buffer stayed full; TooLarge writes larger than a
	// datagram can be.
	SendErrors uint64 `json:"send_errors"`
	SendDrops  uint64 `json:"send_drops"`
	TooLarge   uint64 `json:"too_large"`
	// UpstreamRx counts datagrams read from sessions' own sockets (a
	// proxy's backend replies); UpstreamKernelDrops those the kernel dropped
	// because such a socket's receive queue was full (SO_RXQ_OVFL).
	UpstreamRx          uint64 `json:"upstream_rx"`
	UpstreamKernelDrops uint64 `json:"upstream_kernel_drops"`
	// UpstreamTx counts datagrams sent on sessions' own sockets (a
	// proxy's to its backends); UpstreamSendDrops those dropped because such a
	// socket's send buffer stayed full and too many waited for it;
	// UpstreamSendErrors those the kernel refused.
	UpstreamTx         uint64 `json:"upstream_tx"`
	UpstreamSendDrops  uint64 `json:"upstream_send_drops"`
	UpstreamSendErrors uint64 `json:"upstream_send_errors"`
	// Relayed counts datagrams of sessions a predecessor kept across a
	// restart (see Server.Drain): in the successor, those passed to the
	// predecessor; in the draining predecessor, those received from the
	// successor. RelayDrops counts such datagrams lost: the relay socket
	// was full or the predecessor gone (successor), or the session had
	// already ended (predecessor).
	Relayed    uint64 `json:"relayed"`
	RelayDrops uint64 `json:"relay_drops"`
}

func (st *socketStats) addTo(ls *ListenerStats) {
	ls.RxDatagrams += st.rxDatagrams.load()
	ls.RxBytes += st.rxBytes.load()
	ls.TxDatagrams += st.txDatagrams.load()
	ls.TxBytes += st.txBytes.load()
	ls.Truncated += st.truncated.load()
	ls.Malformed += st.malformed.load()
	ls.UnknownFlow += st.unknownFlow.load()
	ls.StatelessDrops += st.statelessDrops.load()
	ls.UnknownID += st.unknownID.load()
	ls.Roamed += st.roamed.load()
	ls.RoamRefused += st.roamRefused.load()
	ls.Moved += st.moved.load()
	ls.MovesWithoutTuple += st.movesWithoutTuple.load()
	ls.KeysRefused += st.keysRefused.load()
	ls.KernelDrops += st.kernelDrops.load()
	ls.SessionsOpened += st.opened.load()
	ls.RefusedFull += st.refusedFull.load()
	ls.RefusedOpen += st.refusedOpen.load()
	ls.Forwarded += st.forwarded.load()
	ls.ForwardDrops += st.forwardDrops.load()
	ls.SendErrors += st.sendErrors.load()
	ls.SendDrops += st.sendDrops.load()
	ls.TooLarge += st.tooLarge.load()
	ls.UpstreamRx += st.upstreamRx.load()
	ls.RxCoalesced += st.rxCoalesced.load()
	ls.UpstreamCoalesced += st.upstreamCoalesced.load()
	ls.UpstreamKernelDrops += st.upstreamKernelDrops.load()
	ls.UpstreamTx += st.upstreamTx.load()
	ls.UpstreamSendDrops += st.upstreamSendDrops.load()
	ls.UpstreamSendErrors += st.upstreamSendErrors.load()
	ls.Relayed += st.relayed.load()
	ls.RelayDrops += st.relayDrops.load()
	if ls.SessionsClosed == nil {
		ls.SessionsClosed = make(map[string]uint64)
	}
	for i, r := range reasonIndex {
		if n := st.closed[i].load(); n > 0 {
			ls.SessionsClosed[r.String()] += n
		}
	}
}

// countTx counts the n datagrams of b sent from from on.
func (st *socketStats) countTx(b *udpsys.Batch, from, n int) {
	st.txDatagrams.add(uint64(n))
	for i := from; i < from+n; i++ {
		st.txBytes.add(uint64(b.Msgs[i].N))
	}
}

func (st *socketStats) closedFor(r session.Reason) *counter {
	for i, x := range reasonIndex {
		if x == r {
			return &st.closed[i]
		}
	}
	return &st.closed[len(reasonIndex)-1]
}

// Stats is a snapshot of a Server's counters, with JSON keys in
// snake_case as ListenerStats has.
type Stats struct {
	// Listeners are the listeners' counters, in configuration order.
	Listeners []ListenerStats `json:"listeners"`
	// Sessions is the number of live sessions; Keys the keys they are filed
	// under (each has one or more); Capacity the table's bound on keys.
	Sessions int `json:"sessions"`
	Keys     int `json:"keys"`
	Capacity int `json:"capacity"`
	// HandlerPanics counts handler callbacks that panicked; each ended the
	// session it served.
	HandlerPanics uint64 `json:"handler_panics"`
}
