//go:build linux

// Package proxy is udpmux's session-sticky fan-out proxy: a session.Handler
// that gives every client session its own socket connected to one backend,
// chosen by Maglev consistent hashing (or least-sessions, round-robin), or
// named by the session's first datagram (Router), so that the backend sees
// one stable source address per session and its replies come back on that
// socket with no lookup.
package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/udpmux/udpmux/fastpath"
	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
)

// Config configures a Handler.
type Config struct {
	// Backends are the backend addresses.
	Backends []netip.AddrPort
	// Weights are the backends' weights, in the order of Backends (see
	// BalancerConfig.Weights); nil means 1 each.
	Weights []int
	// Balance picks new sessions' backends.
	Balance Policy
	// Router, if not nil, routes each new session by the datagram that
	// creates it (see Router): to the backend with the server ID the
	// datagram names while that backend is healthy, otherwise by Balance
	// over the hash of the key the Router returns.
	Router Router
	// ServerIDs are the backends' server IDs, as the Router returns them,
	// in the order of Backends: one per backend, empty for a backend that
	// has none, or nil for none at all. They need a Router, and no two
	// backends may share one.
	ServerIDs [][]byte
	// Sources bounds sessions per client address; nil means unlimited. Share
	// one among listeners for a process-wide bound.
	Sources *SourceLimiter
	// Sockets bounds the upstream sockets (file descriptors); nil means
	// unlimited. Share one among listeners for a process-wide bound.
	Sockets *Budget
	// Tracker, if not nil, follows each session's protocol (the listener's
	// Dissector, when it is a session.Tracker): the proxy files sessions
	// under the IDs their backends assign as it says, and moves a session
	// to a new client address only on a backend's answer it vouches for
	// (see Roam). Without one, sessions learn nothing and never move.
	Tracker session.Tracker
	// Recovery, if not nil, has the handler recover sessions nobody here
	// has seen (session.Recoverer), which needs a Tracker; nil recovers
	// none.
	Recovery *RecoveryConfig
	// Probes bounds the sockets that carry a session's datagrams from a
	// client's new address to its backend until the backend answers (see
	// Roam), apart from Sockets, so that probes never take what sessions
	// need; nil means DefaultProbes. Share one among listeners for a
	// process-wide bound.
	Probes *Budget
	// Health tunes how long a refusing backend is left out, and the runs
	// of health probes that take a backend out and bring it back.
	Health HealthConfig
	// Check, if not nil, probes the backends actively (RunChecks runs the
	// probes); nil leaves the passive signal alone.
	Check *CheckConfig
	// ClientSource sends each session's datagrams to its backend from the
	// session's client address instead of this host's (a transparent
	// proxy; session.DialOptions.Source), so that the backend sees its
	// clients: its probes from the client's new address, its recovery
	// sockets from the client's. It needs CAP_NET_ADMIN or CAP_NET_RAW, and
	// routes that bring the backends' replies to clients back to this
	// host, where policy routing delivers them locally (docs/operations.md).
	// A second session of one client address:port to one backend (from
	// another listener) is refused: the backend could not tell them apart.
	ClientSource bool
	// FastPath, if not nil, has the kernel forward established sessions'
	// data datagrams (see FastPath); nil keeps every datagram in userspace.
	FastPath *FastPath
	// RecvBuffer and SendBuffer size each upstream socket's kernel buffers,
	// in bytes; 0 keeps the kernel's default. A burst of replies larger
	// than the receive buffer is dropped by the kernel (and counted, as
	// UpstreamKernelDrops of mux's listener statistics).
	RecvBuffer, SendBuffer int
	// Logger receives health transitions; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultProbes is the bound on probe sockets when Config.Probes is nil.
const DefaultProbes = 1024

// Handler is the proxy. It is safe for use by every loop at once.
type Handler struct {
	backends []netip.AddrPort
	buffers  session.DialOptions
	// clientSource is Config.ClientSource.
	clientSource bool
	bal          *Balancer
	routes       *routes // nil without a Router
	tracker      session.Tracker
	sources      *SourceLimiter
	sockets      *Budget
	probes       *Budget
	queues       loopQueues[*probe] // the pending probes of each event loop
	recovery     *recovery          // nil: no session is recovered
	checker      *checker           // nil: no active health checks
	log          *slog.Logger
	stats        handlerStats
	// fast is the kernel's fast path, nil without one; fastLoops holds
	// each event loop's offloaded sessions (int -> *fastLoop).
	fast      *FastPath
	fastLoops sync.Map
	fastStats fastStats
	// refusalWindow is the balancer's: a session reports a refusal at
	// most once per window.
	refusalWindow time.Duration
	// now is the balancer's clock (HealthConfig.Now), so that the times
	// the handler reports to it are on its own clock.
	now func() time.Time
}

type handlerStats struct {
	noBackend, dialErrors, upstreamErrors, refusedByBackend, abandoned atomic.Uint64
	moved, movesRefused, lateDatagrams                                 atomic.Uint64
	implausible, unvouched, probesEvicted                              atomic.Uint64
	routed, routeFallbacks                                             atomic.Uint64
	recovered, recoveryProbes, recoveryRefused, recoveryFailed         atomic.Uint64
	pending, recovering                                                atomic.Int64
}

// Stats are the proxy's own counters. The JSON keys are the fields' names
// in snake_case, as mux.Stats has.
type Stats struct {
	// NoBackend counts new sessions refused because no backend took new
	// sessions: every one was down, drained or of weight 0.
	NoBackend uint64 `json:"no_backend"`
	// SourceLimited counts new sessions refused by sessions.max_per_source;
	// SocketLimited those refused by the upstream socket bound.
	SourceLimited uint64 `json:"source_limited"`
	SocketLimited uint64 `json:"socket_limited"`
	// DialErrors counts upstream sockets that could not be opened.
	DialErrors uint64 `json:"dial_errors"`
	// UpstreamErrors counts failed sends and receives on upstream sockets
	// other than refusals (datagrams the engine dropped for a full send
	// buffer are mux's UpstreamSendDrops); RefusedByBackend ICMP
	// port-unreachable reports, of which IgnoredRefusals did not mark a
	// backend down (see Balancer.Refused).
	UpstreamErrors   uint64 `json:"upstream_errors"`
	RefusedByBackend uint64 `json:"refused_by_backend"`
	IgnoredRefusals  uint64 `json:"ignored_refusals"`
	// Abandoned counts sessions closed because their backend was down and
	// had not answered them (for their idle timeout, or ever), so that
	// their clients' next datagrams open sessions on a healthy backend.
	Abandoned uint64 `json:"abandoned"`
	// Moved counts sessions that followed their client to a new address,
	// confirmed by the backend (see Roam); MovesRefused new addresses given
	// no probe (no Tracker, a failed dial, no probe of the event loop's to
	// take the place of) or refused by sessions.max_per_source;
	// MovesPending is the number of probes open now, each a new address
	// waiting for the backend's word.
	Moved        uint64 `json:"moved"`
	MovesRefused uint64 `json:"moves_refused"`
	MovesPending int64  `json:"moves_pending"`
	// MovesImplausible counts datagrams from a new address that the
	// session's Tracker found impossible for its client, dropped;
	// UnvouchedAnswers datagrams on a pending probe that it did not vouch
	// for (forged, or a backend message that proves nothing), dropped;
	// ProbesEvicted pending probes closed for a newer address (a session's
	// fifth, or one the probe budget had no room for).
	MovesImplausible uint64 `json:"moves_implausible"`
	UnvouchedAnswers uint64 `json:"unvouched_answers"`
	ProbesEvicted    uint64 `json:"probes_evicted"`
	// LateDatagrams counts datagrams dropped because they came from the
	// address a session had left less than a second before: overtaken by
	// the client's datagrams from its new address, they would take the
	// session back.
	LateDatagrams uint64 `json:"late_datagrams"`
	// Recovered counts sessions nobody here knew (a crash, another host)
	// adopted on the backend that proved it had them (see Recover);
	// RecoveryProbes the datagrams sent to backends to ask; RecoveryRefused
	// recoveries not begun (Config.Recovery's rates and sockets, or no
	// healthy backend); RecoveryFailed recovering sessions no backend proved
	// by the deadline; Recovering is the number recovering now, and
	// RecoverySockets the sockets they hold.
	Recovered       uint64 `json:"recovered"`
	RecoveryProbes  uint64 `json:"recovery_probes"`
	RecoveryRefused uint64 `json:"recovery_refused"`
	RecoveryFailed  uint64 `json:"recovery_failed"`
	Recovering      int64  `json:"recovering"`
	RecoverySockets int    `json:"recovery_sockets"`
	// Routed counts new sessions sent to the backend whose server ID their
	// first datagram named (Config.Router); RouteFallbacks those whose
	// datagram named a server ID that no healthy backend has, balanced by
	// the Router's hash key instead.
	Routed         uint64 `json:"routed"`
	RouteFallbacks uint64 `json:"route_fallbacks"`
	// Offloaded is the number of sessions whose data the kernel forwards
	// now (Config.FastPath); Offloads counts sessions put in the kernel's
	// table, OffloadsRefused those the table refused (sessions.max, a
	// backend on this host), which stay in userspace. KernelRxDatagrams
	// and KernelRxBytes count what the kernel forwarded from clients,
	// KernelTxDatagrams and KernelTxBytes to them, as of its last poll.
	Offloaded         int64  `json:"offloaded"`
	Offloads          uint64 `json:"offloads"`
	OffloadsRefused   uint64 `json:"offloads_refused"`
	KernelRxDatagrams uint64 `json:"kernel_rx_datagrams"`
	KernelRxBytes     uint64 `json:"kernel_rx_bytes"`
	KernelTxDatagrams uint64 `json:"kernel_tx_datagrams"`
	KernelTxBytes     uint64 `json:"kernel_tx_bytes"`
	// UpstreamSockets is the number of upstream sockets open now, and
	// ProbeSockets the number of probes among them.
	UpstreamSockets int `json:"upstream_sockets"`
	ProbeSockets    int `json:"probe_sockets"`
	// Backends is each backend's health, drained state, weight and live
	// sessions: the configured ones in their order, then the retired ones
	// (see ImportSession).
	Backends []BackendStatus `json:"backends"`
}

// upstream is a session's proxy state.
type upstream struct {
	h       *Handler
	sock    session.Socket // connected to the backend
	backend int
	source  netip.Addr
	// heard is set by each reply; answered once the backend has ever
	// replied. silentSince is when a check while the backend was down last
	// found heard set (see abandon); refusedAt is the last ICMP report
	// counted for the session.
	heard, answered        bool
	silentSince, refusedAt time.Time
	// abandoned is set once abandon has closed the session: the close
	// takes effect between batches, and the datagrams still delivered
	// before it are dropped, not counted again.
	abandoned bool
	// track is the session's protocol state, nil without a Tracker.
	track session.Track
	// rec is set while the session recovers: no backend is its yet
	// (recover.go).
	rec *recovering
	// settled is what other goroutines read of the session (ExportSession,
	// Session): its backend and socket, once it has them, nil while it
	// recovers.
	settled atomic.Pointer[settled]
	// probes are sockets to the backend for new client addresses, waiting
	// for the backend to answer one, in the order they opened (roam.go);
	// left is the address the session last moved away from, at leftAt.
	probes []*probe
	left   netip.AddrPort
	leftAt time.Time
	// replies counts the backend's data datagrams of kind next on the
	// session's own socket up to offloadAfter; kind is the kind of the
	// session's elements (another OpenVPN key's, once its data goes on to
	// it); fast is the session's place in the fast path (nil without one),
	// and offloaded its entry once in the table, for other goroutines
	// (Session).
	replies    int
	kind, next fastpath.Kind
	fast       *fastSess
	offloaded  atomic.Pointer[fastpath.Entry]
}

// settled is a session's backend and socket.
type settled struct {
	backend int
	sock    session.Socket
}

// Errors returned by Open; the engine counts them as refused sessions.
var (
	ErrNoBackend     = errors.New("proxy: no backend takes new sessions (down, drained or of weight 0)")
	ErrSourceLimited = errors.New("proxy: too many sessions from this source")
	ErrSocketLimited = errors.New("proxy: upstream socket limit reached")
)

// New returns a proxy handler for cfg.
func New(cfg Config) (*Handler, error) {
	if len(cfg.Backends) == 0 {
		return nil, errors.New("proxy: no backends")
	}
	routes, err := newRoutes(cfg)
	if err != nil {
		return nil, err
	}
	h := &Handler{backends: cfg.Backends, routes: routes, tracker: cfg.Tracker, sources: cfg.Sources, sockets: cfg.Sockets,
		probes: cfg.Probes, log: cfg.Logger, buffers: session.DialOptions{RecvBuffer: cfg.RecvBuffer, SendBuffer: cfg.SendBuffer},
		clientSource: cfg.ClientSource, fast: cfg.FastPath}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.sources == nil {
		h.sources = NewSourceLimiter(0)
	}
	if h.sockets == nil {
		h.sockets = NewBudget(0)
	}
	if h.probes == nil {
		h.probes = NewBudget(DefaultProbes)
	}
	if h.recovery, err = newRecovery(cfg.Recovery, cfg.Tracker); err != nil {
		return nil, err
	}
	health := cfg.Health
	userChange := health.OnChange
	health.OnChange = func(ev HealthEvent) {
		switch {
		case ev.Up && ev.Check:
			h.log.Info("backend up: it answered its health probes", "backend", ev.Addr)
		case ev.Up:
			h.log.Info("backend up", "backend", ev.Addr)
		case ev.Check:
			h.log.Warn("backend down: its health probes went unanswered; no new sessions until it answers again",
				"backend", ev.Addr, "reason", ev.Reason)
		default:
			h.log.Warn("backend down: its sessions' datagrams were refused (ICMP port unreachable) while it answered none; no new sessions until back-off ends",
				"backend", ev.Addr, "failures", ev.Failures, "backoff", ev.Backoff)
		}
		if userChange != nil {
			userChange(ev)
		}
	}
	bal, err := NewBalancer(BalancerConfig{Backends: cfg.Backends, Weights: cfg.Weights, Policy: cfg.Balance, Health: health})
	if err != nil {
		return nil, err
	}
	h.bal = bal
	if cfg.Check != nil {
		cc, err := cfg.Check.normalize()
		if err != nil {
			return nil, err
		}
		h.checker = &checker{cfg: cc, bal: bal}
		bal.checking.Store(true) // up until the probes say otherwise
		for _, b := range cfg.Backends {
			h.checker.backends = append(h.checker.backends, *net.UDPAddrFromAddrPort(b))
		}
	}
	h.refusalWindow = bal.health.RefusalWindow
	h.now = bal.now
	return h, nil
}

// sessionHash hashes a session key with a fixed seed, so that every udpmux
// instance maps a client to the same backend (the flow table's own hash is
// seeded per process and cannot serve for that).
func sessionHash(k flowtable.Key) uint64 {
	var buf [flowtable.KeySize]byte
	b, _ := k.AppendBinary(buf[:0])
	return xxhash.Sum64(b)
}

// Open is OpenDatagram without a datagram: the session is balanced by its
// key.
func (h *Handler) Open(s session.Session) error { return h.OpenDatagram(s, nil) }

// OpenDatagram picks the backend of session s, which datagram p creates
// (by p's route with a Router, otherwise by s's key), and opens its
// upstream socket.
func (h *Handler) OpenDatagram(s session.Session, p []byte) error {
	src := s.PeerAddr().Addr()
	if err := h.acquire(src); err != nil {
		return err
	}
	u, err := h.dial(s, p)
	if err != nil {
		h.release(src)
		return err
	}
	u.source = src
	s.SetState(u)
	h.bal.Opened(u.backend)
	return nil
}

// newUpstream returns the state of session s, with its socket k to backend.
func (h *Handler) newUpstream(s session.Session, k session.Socket, backend int) *upstream {
	u := &upstream{h: h, sock: k, backend: backend}
	if h.fast != nil {
		u.kind = h.fast.Kind
	}
	if h.tracker != nil {
		u.track = h.tracker.Track(s.Key().Scope())
	}
	u.settled.Store(&settled{backend, k})
	return u
}

func (h *Handler) dial(s session.Session, p []byte) (*upstream, error) {
	if f, b, ok := h.orphanFor(s); ok {
		// What a crashed predecessor left in the kernel for this client:
		// the same backend, from the same source address, so that the
		// kernel's forwarding carries on under this session.
		opts := h.buffers
		opts.Local = f.Source
		if k, err := s.Dial(f.Backend, opts); err == nil {
			u := h.newUpstream(s, k, b)
			u.kind = f.Kind
			h.adoptFast(s, u)
			return u, nil
		}
	}
	b, ok := h.pick(s, p)
	if !ok {
		h.stats.noBackend.Add(1)
		return nil, ErrNoBackend
	}
	k, err := h.dialBackend(s, b, s.PeerAddr())
	if err != nil {
		return nil, err
	}
	return h.newUpstream(s, k, b), nil
}

// dialBackend opens a socket of s's to backend b for the client at from,
// which it sends from with Config.ClientSource, counting a failure.
func (h *Handler) dialBackend(s session.Session, b int, from netip.AddrPort) (session.Socket, error) {
	opts := h.buffers
	if h.clientSource {
		opts.Source = from
	}
	k, err := s.Dial(h.backends[b], opts)
	if err != nil {
		h.stats.dialErrors.Add(1)
		return nil, fmt.Errorf("proxy: backend %s: %w", h.backends[b], err)
	}
	return k, nil
}

// Datagram sends a client datagram to the session's backend, in the loop's
// send batch, after the session's Track has noted it.
func (h *Handler) Datagram(s session.Session, p []byte) {
	u := s.State().(*upstream)
	switch {
	case u.rec != nil:
		h.recoveringDatagram(s, u, p)
		return
	case u.backend < 0:
		return // no backend proved it has the session, which closes
	case h.bal.Down(u.backend) && h.abandon(s, u):
		return
	}
	if u.track != nil {
		own, _ := u.track.Client(s, p, false)
		u.file(s, own)
	}
	if len(u.probes) > 0 {
		h.closeIdleProbes(u, h.now())
	}
	u.sock.Write(p)
}

// abandon closes a session whose backend is down and has not answered it,
// ever or for the session's idle timeout, and reports whether it did: its
// client's next datagram opens a session on a healthy backend. A backend
// that answers is never left this way: forged ICMP errors can mark a backend
// down (see Balancer.Refused) only while it answers no session, and a
// session it answers within its idle timeout stays.
func (h *Handler) abandon(s session.Session, u *upstream) bool {
	if u.abandoned {
		return true
	}
	now := h.now()
	if u.heard || u.silentSince.IsZero() {
		u.heard, u.silentSince = false, now
		if u.answered {
			return false
		}
	}
	if u.answered && now.Sub(u.silentSince) < s.Stats().IdleTimeout {
		return false
	}
	h.stats.abandoned.Add(1)
	u.abandoned = true
	s.Close()
	return true
}

// Upstream sends a backend reply to the session's own client, once the
// session's Track has learned from it. A reply on a probe socket confirms
// the client's new address first, if the Track vouches for it (roam.go).
func (h *Handler) Upstream(s session.Session, sock session.Socket, p []byte) {
	u := s.State().(*upstream)
	switch {
	case u.rec != nil:
		h.recoveringUpstream(s, u, sock, p)
		return
	case u.backend < 0:
		return
	case sock != u.sock:
		if !h.fromProbe(s, u, sock, p) {
			return
		}
	case len(u.probes) > 0:
		u.backOnSocket()
	}
	u.learn(s, p)
	u.heard, u.answered = true, true
	h.bal.MarkUp(u.backend)
	s.Write(p)
	if sock == u.sock {
		h.countReply(s, u, p)
	}
}

// UpstreamError handles a failed read of an upstream socket; a probe's
// failures count for nothing.
func (h *Handler) UpstreamError(s session.Session, sock session.Socket, err error) {
	if u := s.State().(*upstream); u.rec == nil && sock == u.sock {
		h.upstreamFailed(s, u, err)
	}
}

// upstreamFailed counts a failure of the upstream socket. A refusal (ICMP
// port unreachable) is reported to the balancer, at most once per session
// per refusal window, which marks the backend down for new sessions only
// once reports corroborate each other; the session and its socket stay
// either way.
func (h *Handler) upstreamFailed(s session.Session, u *upstream, err error) {
	if !errors.Is(err, session.ErrRefused) {
		h.stats.upstreamErrors.Add(1)
		return
	}
	h.stats.refusedByBackend.Add(1)
	now := h.now()
	if !u.refusedAt.IsZero() && now.Sub(u.refusedAt) < h.refusalWindow {
		return
	}
	u.refusedAt = now
	h.bal.Refused(u.backend, now)
}

// Close releases the session's upstream sockets and its limits; the engine
// has sent what was queued for them and stopped watching them.
func (h *Handler) Close(s session.Session, r session.Reason) {
	u := s.State().(*upstream)
	h.closeFast(u, r)
	if u.rec != nil {
		h.giveUp(u)
	}
	if u.backend < 0 {
		h.sources.Release(u.source) // never adopted: no socket of the sessions'
		return
	}
	for len(u.probes) > 0 {
		h.closeProbe(u.probes[0])
	}
	u.sock.Close()
	h.bal.Closed(u.backend)
	h.release(u.source)
}

// acquire takes a session's share of the per-source and socket limits.
func (h *Handler) acquire(src netip.Addr) error {
	if !h.sources.Acquire(src) {
		return ErrSourceLimited
	}
	if !h.sockets.Acquire() {
		h.sources.Release(src)
		return ErrSocketLimited
	}
	return nil
}

// release returns what acquire took.
func (h *Handler) release(src netip.Addr) {
	h.sockets.Release()
	h.sources.Release(src)
}

// BackendUp reports whether any backend takes new sessions now (see
// Balancer.Available): a proxy with none serves only the sessions it has,
// and one that announces its address (a fleet host) should not attract
// more. Safe from any goroutine.
func (h *Handler) BackendUp() bool {
	for b := range h.backends {
		if h.bal.Available(b) {
			return true
		}
	}
	return false
}

// Stats returns the proxy's counters.
func (h *Handler) Stats() Stats {
	st := Stats{
		NoBackend:         h.stats.noBackend.Load(),
		SourceLimited:     h.sources.Refused(),
		SocketLimited:     h.sockets.Refused(),
		DialErrors:        h.stats.dialErrors.Load(),
		UpstreamErrors:    h.stats.upstreamErrors.Load(),
		RefusedByBackend:  h.stats.refusedByBackend.Load(),
		IgnoredRefusals:   h.bal.IgnoredRefusals(),
		Abandoned:         h.stats.abandoned.Load(),
		Moved:             h.stats.moved.Load(),
		MovesRefused:      h.stats.movesRefused.Load(),
		MovesPending:      h.stats.pending.Load(),
		MovesImplausible:  h.stats.implausible.Load(),
		UnvouchedAnswers:  h.stats.unvouched.Load(),
		ProbesEvicted:     h.stats.probesEvicted.Load(),
		LateDatagrams:     h.stats.lateDatagrams.Load(),
		Routed:            h.stats.routed.Load(),
		Offloaded:         h.fastStats.offloaded.Load(),
		Offloads:          h.fastStats.offloads.Load(),
		OffloadsRefused:   h.fastStats.refused.Load(),
		KernelRxDatagrams: h.fastStats.rx.Load(),
		KernelRxBytes:     h.fastStats.rxBytes.Load(),
		KernelTxDatagrams: h.fastStats.tx.Load(),
		KernelTxBytes:     h.fastStats.txBytes.Load(),
		RouteFallbacks:    h.stats.routeFallbacks.Load(),
		UpstreamSockets:   h.sockets.InUse() + h.probes.InUse(),
		ProbeSockets:      h.probes.InUse(),
		Recovered:         h.stats.recovered.Load(),
		RecoveryProbes:    h.stats.recoveryProbes.Load(),
		RecoveryRefused:   h.stats.recoveryRefused.Load(),
		RecoveryFailed:    h.stats.recoveryFailed.Load(),
		Recovering:        h.stats.recovering.Load(),
	}
	if h.recovery != nil {
		st.RecoverySockets = h.recovery.sockets.InUse()
		st.UpstreamSockets += st.RecoverySockets
	}
	for i := range h.bal.count() {
		st.Backends = append(st.Backends, h.bal.Status(i))
	}
	return st
}

// Drain stops new sessions from going to the backend at addr; its sessions
// stay until they end (see Balancer.Drain). A drained backend is still
// asked by recoveries, and still gets the sessions whose first datagram
// names it by its server ID (Config.Router): those are sessions it has,
// which a udpmux that never saw them finds again. It reports whether the
// backend took new sessions before. Safe from any goroutine.
func (h *Handler) Drain(addr netip.AddrPort) (bool, error) {
	b, err := h.configured(addr)
	if err != nil {
		return false, err
	}
	return h.bal.Drain(b), nil
}

// Enable undoes Drain; it reports whether the backend was drained.
func (h *Handler) Enable(addr netip.AddrPort) (bool, error) {
	b, err := h.configured(addr)
	if err != nil {
		return false, err
	}
	return h.bal.Enable(b), nil
}

// SetWeight sets the weight of the backend at addr (see
// BalancerConfig.Weights).
func (h *Handler) SetWeight(addr netip.AddrPort, weight int) error {
	b, err := h.configured(addr)
	if err != nil {
		return err
	}
	if err := h.bal.SetWeight(b, weight); err != nil {
		return fmt.Errorf("proxy: backend %s: %w", addr, err)
	}
	return nil
}

// configured returns the index of the configured backend at addr.
func (h *Handler) configured(addr netip.AddrPort) (int, error) {
	b, ok := h.bal.index(addr)
	switch {
	case !ok:
		return -1, fmt.Errorf("proxy: %s is not a backend of this listener", addr)
	case b >= h.bal.Len():
		return -1, fmt.Errorf("proxy: backend %s is retired (no longer configured): it takes no new sessions, and its sessions stay until they end", addr)
	}
	return b, nil
}

// ExportSession returns the session's backend address, which the successor
// maps to its own backend list.
func (h *Handler) ExportSession(s session.Session) ([]byte, error) {
	st := s.State().(*upstream).settled.Load()
	if st == nil {
		return nil, nil // recovering: the successor refuses it (see ImportSession)
	}
	return h.bal.addr(st.backend).MarshalBinary()
}

// StateFixed reports true: a session keeps the backend Open chose, so a
// restart may copy it before pausing (session.Precopier).
func (h *Handler) StateFixed() bool { return true }

// ImportSession adopts a predecessor's session: its upstream socket is the
// same kernel socket, so the backend sees the same source address:port. A
// session whose backend the new configuration dropped stays on it: the
// backend is retired, drained for good, and the session
// ends when it idles out, as a drained backend's do. A session the new
// limits refuse is refused.
func (h *Handler) ImportSession(s session.Session, state []byte, sock session.Socket) error {
	if len(state) == 0 {
		return errors.New("proxy: the session was still recovering: its client's next datagram recovers it here")
	}
	var addr netip.AddrPort
	if err := addr.UnmarshalBinary(state); err != nil {
		return fmt.Errorf("proxy: session state: %w", err)
	}
	if sock == nil {
		return errors.New("proxy: session arrived without its upstream socket")
	}
	if got := sock.RemoteAddr(); netip.AddrPortFrom(got.Addr().Unmap(), got.Port()) != addr {
		return fmt.Errorf("proxy: upstream socket is connected to %s, not backend %s", got, addr)
	}
	src := s.PeerAddr().Addr()
	if err := h.acquire(src); err != nil {
		return err
	}
	backend, ok := h.bal.index(addr)
	if !ok {
		backend, _ = h.bal.retire(addr)
		h.log.Info("backend no longer configured: retired, its sessions stay on it until they idle out", "backend", addr)
	}
	u := h.newUpstream(s, sock, backend)
	u.source = src
	s.SetState(u)
	h.bal.Opened(backend)
	h.adoptFast(s, u)
	return nil
}

// SessionInfo is what the proxy knows of one of its sessions.
type SessionInfo struct {
	// Backend is the backend the session sticks to.
	Backend netip.AddrPort
	// Source is the local address of the session's upstream socket: the
	// client as the backend sees it.
	Source netip.AddrPort
	// Offloaded reports that the kernel forwards the session's data
	// datagrams (Config.FastPath).
	Offloaded bool
}

// Session describes s, a session of this handler, as listed by
// mux.Server.Sessions: safe from any goroutine while s lives, false for a
// session that is not this handler's.
func (h *Handler) Session(s session.Session) (SessionInfo, bool) {
	// What Open, ImportSession or a recovery set before the session went
	// live, or once it was adopted, and never change.
	u, ok := s.State().(*upstream)
	if !ok || u.h != h {
		return SessionInfo{}, false
	}
	st := u.settled.Load()
	if st == nil {
		return SessionInfo{}, true // recovering
	}
	e := u.offloaded.Load()
	return SessionInfo{Backend: h.bal.addr(st.backend), Source: st.sock.LocalAddr(),
		Offloaded: e != nil && e.State() == fastpath.Installed}, true
}

// Interface checks.
var (
	_ session.UpstreamHandler = (*Handler)(nil)
	_ session.DatagramOpener  = (*Handler)(nil)
	_ session.Roamer          = (*Handler)(nil)
	_ session.Recoverer       = (*Handler)(nil)
	_ session.TickHandler     = (*Handler)(nil)
	_ session.Precopier       = (*Handler)(nil)
)
