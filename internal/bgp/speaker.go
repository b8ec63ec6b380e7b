// Package bgp announces udpmux's service addresses (VIPs, as /32 or /128
// host routes) to routers over BGP, so that a fleet of udpmux hosts can sit
// behind ECMP: every host announces the same addresses, the router spreads
// flows over all hosts that announce them, and a host that stops announcing
// (or dies) leaves the set.
//
// It embeds GoBGP (github.com/osrg/gobgp/v4) as a library and is the only
// package that imports it; only cmd/udpmux imports this one, so no library
// package of udpmux depends on GoBGP.
//
// A Speaker dials its peers (it does not listen unless asked), sends only
// the routes given to Announce and accepts whatever the routers send without
// using it. Failure detection is BGP's hold timer or, faster, BFD. Graceful
// restart (RFC 4724) lets a process hand its routes to a successor without
// the routers withdrawing them: Stop(true) closes the sessions without a
// NOTIFICATION, the routers keep the routes as stale, and a Speaker started
// with GracefulRestart.Restarting refreshes them. The predecessor must have
// stopped before the successor's speaker dials (within about 2 s of its
// Start): both use the same address.
//
// # The router
//
// The tests run FRR as the router; the hosts of a fleet share one AS and
// are neighbors of one peer group:
//
//	router bgp 65000
//	 no bgp ebgp-requires-policy
//	 bgp graceful-restart
//	 neighbor fleet peer-group
//	 neighbor fleet remote-as 65001
//	 neighbor fleet passive
//	 neighbor 198.18.0.11 peer-group fleet
//	 neighbor 198.18.0.11 bfd
//	 address-family ipv4 unicast
//	  maximum-paths 8
//	 exit-address-family
//
// maximum-paths installs one route with every host as a next hop; Linux
// spreads flows over them by their addresses and, with
// net.ipv4.fib_multipath_hash_policy=1, their ports. Measured there (see
// the tests): a host whose process dies leaves the set within 0.1 s (its
// kernel closes the session), one cut off within 1 s with BFD at 3 x 300 ms
// and within the hold time (3 s at least) without; with graceful restart, a
// dead host's route stays for the restart time (see GracefulRestart).
package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	gbgp "github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// gobgpLogLevel is the least level of GoBGP's own records that reach the
// speaker's logger; tests lower it.
var gobgpLogLevel = slog.LevelWarn

// ReasonStop is the withdrawal reason counted for each route that
// Stop(false) withdraws.
const ReasonStop = "stop"

// Speaker is a running BGP speaker that announces routes to its peers. Its
// methods are safe for concurrent use.
type Speaker struct {
	log *slog.Logger
	cfg Config // with defaults
	srv *server.BgpServer

	cancelWatch context.CancelFunc
	closing     atomic.Bool // set before GoBGP's Stop

	// BFD follows each BGP session (see Peer.BFD): peerEvent sets bfdWant
	// and kicks bfdLoop, which enables or disables GoBGP's BFD peer.
	bfdMu   sync.Mutex
	bfdWant map[netip.Addr]bool
	bfdKick chan struct{}
	bfdStop chan struct{}
	bfdDone chan struct{}

	mu          sync.Mutex
	routes      map[netip.Prefix]Route
	withdrawals map[string]uint64
	stopped     bool
}

// Start validates cfg, starts a BGP speaker with it and adds its peers,
// which it then dials on its own, again after every failure. ctx bounds the
// start only; the speaker runs until Stop. log receives the speaker's own
// events (peers coming up and going down, announcements, withdrawals) and
// GoBGP's warnings and errors; nil means slog.Default().
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Speaker, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("bgp: invalid configuration: %w", err)
	}
	cfg = cfg.WithDefaults()
	s := &Speaker{
		log:         log,
		cfg:         cfg,
		routes:      make(map[netip.Prefix]Route),
		withdrawals: make(map[string]uint64),
		bfdWant:     make(map[netip.Addr]bool),
		bfdKick:     make(chan struct{}, 1),
		bfdStop:     make(chan struct{}),
		bfdDone:     make(chan struct{}),
	}
	level := new(slog.LevelVar)
	level.Set(gobgpLogLevel)
	s.srv = server.NewBgpServer(server.LoggerOption(slog.New(&gobgpHandler{
		Handler: log.With("component", "gobgp").Handler(),
		level:   level,
		closing: &s.closing,
	}), level))
	go s.srv.Serve()

	global := &api.Global{
		Asn:        cfg.LocalAS,
		RouterId:   cfg.RouterID.Unmap().String(),
		ListenPort: cfg.ListenPort,
	}
	if err := s.srv.StartBgp(ctx, &api.StartBgpRequest{Global: global}); err != nil {
		s.srv.Stop()
		return nil, fmt.Errorf("bgp: start speaker AS %d: %w", cfg.LocalAS, err)
	}
	watchCtx, cancel := context.WithCancel(context.Background())
	s.cancelWatch = cancel
	if err := s.srv.WatchEvent(watchCtx, server.WatchEventMessageCallbacks{OnPeerUpdate: s.peerEvent}, server.WatchPeer()); err != nil {
		cancel()
		s.srv.Stop()
		return nil, fmt.Errorf("bgp: watch peer events: %w", err)
	}
	for _, p := range cfg.Peers {
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: apiPeer(p, cfg.GracefulRestart, false)}); err != nil {
			cancel()
			s.srv.Stop()
			return nil, fmt.Errorf("bgp: add peer %s AS %d: %w", p.Address, p.AS, err)
		}
	}
	go s.bfdLoop()
	log.Info("bgp speaker started", "as", cfg.LocalAS, "router_id", cfg.RouterID, "peers", len(cfg.Peers),
		"graceful_restart", cfg.GracefulRestart.Enabled, "restarting", cfg.GracefulRestart.Restarting)
	return s, nil
}

// apiPeer builds GoBGP's peer configuration, with BFD enabled if p has BFD
// and bfd is true.
func apiPeer(p Peer, gr GracefulRestart, bfd bool) *api.Peer {
	family := &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	if p.Address.Unmap().Is6() {
		family = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
	}
	afi := &api.AfiSafi{Config: &api.AfiSafiConfig{Family: family, Enabled: true}}
	ap := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Address.Unmap().String(),
			PeerAsn:         p.AS,
			AuthPassword:    p.Password,
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime:          uint64(p.HoldTime / time.Second),
			KeepaliveInterval: uint64(p.KeepaliveInterval / time.Second),
		}},
		AfiSafis: []*api.AfiSafi{afi},
	}
	if p.LocalAddress.IsValid() {
		ap.Transport = &api.Transport{LocalAddress: p.LocalAddress.Unmap().String()}
	}
	if gr.Enabled {
		secs := uint32(gr.RestartTime / time.Second)
		ap.GracefulRestart = &api.GracefulRestart{
			Enabled:         true,
			RestartTime:     secs,
			DeferralTime:    secs,
			LocalRestarting: gr.Restarting,
		}
		afi.MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
	}
	if b := p.BFD; b != nil && bfd {
		ap.Bfd = &api.BfdPeerConfig{
			Enabled:                  true,
			DesiredMinimumTxInterval: uint32(b.TxInterval / time.Microsecond),
			RequiredMinimumReceive:   uint32(b.RxInterval / time.Microsecond),
			DetectionMultiplier:      b.Multiplier,
		}
	}
	return ap
}

// peerEvent logs a peer's state changes and has BFD follow the session.
func (s *Speaker) peerEvent(ev *apiutil.WatchEventMessage_PeerEvent, _ time.Time) {
	if ev.Type != apiutil.PEER_EVENT_STATE {
		return
	}
	st := ev.Peer.State
	if p, ok := s.peer(st.NeighborAddress); ok && p.BFD != nil {
		s.bfdMu.Lock()
		s.bfdWant[p.Address] = st.SessionState == gbgp.BGP_FSM_ESTABLISHED
		s.bfdMu.Unlock()
		select {
		case s.bfdKick <- struct{}{}:
		default:
		}
	}
	attrs := []any{"peer", st.NeighborAddress, "as", st.PeerASN, "state", sessionState(st.SessionState)}
	if st.SessionState != gbgp.BGP_FSM_ESTABLISHED && st.DisconnectReason != api.PeerState_DISCONNECT_REASON_UNSPECIFIED {
		attrs = append(attrs, "reason", st.DisconnectReason.String())
		if st.DisconnectMessage != "" {
			attrs = append(attrs, "message", st.DisconnectMessage)
		}
	}
	s.log.Info("bgp peer state", attrs...)
}

// peer returns the configured peer with address a.
func (s *Speaker) peer(a netip.Addr) (Peer, bool) {
	for _, p := range s.cfg.Peers {
		if p.Address.Unmap() == a.Unmap() {
			return p, true
		}
	}
	return Peer{}, false
}

// bfdLoop enables GoBGP's BFD peer for each peer with BFD while its session
// is Established and disables it otherwise, until Stop.
//
// Started with the session, BFD never sees the peer's BFD session of before
// the BGP session: FRR's bgpd, for one, re-creates its BFD session when BGP
// comes up (it learns the interface then) and sends Down from the old one;
// a GoBGP BFD peer running since before then takes it as the router
// signalling Down, resets BGP, or is left waiting in Init for the old
// session and resets BGP when it expires. Either way the route flaps once.
func (s *Speaker) bfdLoop() {
	defer close(s.bfdDone)
	have := make(map[netip.Addr]bool)
	for {
		select {
		case <-s.bfdStop:
			return
		case <-s.bfdKick:
		}
		s.bfdMu.Lock()
		want := maps.Clone(s.bfdWant)
		s.bfdMu.Unlock()
		for addr, on := range want {
			if have[addr] == on {
				continue
			}
			p, _ := s.peer(addr)
			if _, err := s.srv.UpdatePeer(context.Background(), &api.UpdatePeerRequest{Peer: apiPeer(p, s.cfg.GracefulRestart, on)}); err != nil {
				s.log.Warn("bgp: cannot switch BFD", "peer", addr, "enable", on, "err", err)
				continue
			}
			have[addr] = on
			s.log.Debug("bgp BFD switched", "peer", addr, "enable", on)
		}
	}
}

// Announce announces r to every peer of its address family, now and
// whenever a session comes up, until Withdraw or Stop. Announcing a prefix
// again replaces its attributes.
func (s *Speaker) Announce(r Route) error {
	if err := r.Validate(); err != nil {
		return fmt.Errorf("bgp: announce: %w", err)
	}
	r.Communities = slices.Clone(r.Communities)
	if r.MED != nil {
		med := *r.MED
		r.MED = &med
	}
	p, err := apiPath(r, false)
	if err != nil {
		return fmt.Errorf("bgp: announce %s: %w", r.Prefix, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return fmt.Errorf("bgp: announce %s: speaker stopped", r.Prefix)
	}
	if _, err := s.srv.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{p}}); err != nil {
		return fmt.Errorf("bgp: announce %s: %w", r.Prefix, err)
	}
	s.routes[r.Prefix] = r
	s.log.Info("bgp announce", "prefix", r.Prefix, "next_hop", nextHopString(r.NextHop), "communities", communityStrings(r.Communities))
	return nil
}

// Withdraw withdraws the route for prefix from every peer and counts the
// withdrawal under reason (see Withdrawals). Withdrawing a prefix that is
// not announced is not an error and counts nothing.
func (s *Speaker) Withdraw(prefix netip.Prefix, reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return fmt.Errorf("bgp: withdraw %s: speaker stopped", prefix)
	}
	r, ok := s.routes[prefix]
	if !ok {
		return nil
	}
	if err := s.withdrawLocked(r); err != nil {
		return err
	}
	s.withdrawals[reason]++
	s.log.Info("bgp withdraw", "prefix", prefix, "reason", reason)
	return nil
}

// withdrawLocked deletes r from GoBGP's table, which sends the withdrawal.
func (s *Speaker) withdrawLocked(r Route) error {
	p, err := apiPath(r, true)
	if err != nil {
		return fmt.Errorf("bgp: withdraw %s: %w", r.Prefix, err)
	}
	if err := s.srv.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{p}}); err != nil {
		return fmt.Errorf("bgp: withdraw %s: %w", r.Prefix, err)
	}
	delete(s.routes, r.Prefix)
	return nil
}

// Announced returns the routes announced and not withdrawn, sorted by
// prefix.
func (s *Speaker) Announced() []Route {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Route, 0, len(s.routes))
	for _, r := range s.routes {
		r.Communities = slices.Clone(r.Communities)
		if r.MED != nil {
			med := *r.MED
			r.MED = &med
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Route) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return a.Prefix.Bits() - b.Prefix.Bits()
	})
	return out
}

// Withdrawals returns how many routes were withdrawn, by reason: the
// reasons given to Withdraw, and ReasonStop for those that Stop(false)
// withdrew.
func (s *Speaker) Withdrawals() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.withdrawals)
}

// SessionState is a BGP session's state (RFC 4271, 8.2.2).
type SessionState string

// The session states.
const (
	StateUnknown     SessionState = "Unknown"
	StateIdle        SessionState = "Idle"
	StateConnect     SessionState = "Connect"
	StateActive      SessionState = "Active"
	StateOpenSent    SessionState = "OpenSent"
	StateOpenConfirm SessionState = "OpenConfirm"
	StateEstablished SessionState = "Established"
)

// BFDState is a BFD session's state (RFC 5880); "" when the peer has no
// BFD.
type BFDState string

// The BFD session states.
const (
	BFDUp        BFDState = "Up"
	BFDDown      BFDState = "Down"
	BFDInit      BFDState = "Init"
	BFDAdminDown BFDState = "AdminDown"
)

// PeerState is a peer's state as Peers reports it.
type PeerState struct {
	// Address is the peer's address.
	Address netip.Addr
	// AS is the peer's AS.
	AS uint32
	// State is the session's state.
	State SessionState
	// Uptime is how long the session has been Established; 0 otherwise.
	Uptime time.Duration
	// PrefixesSent is how many prefixes are advertised to the peer now.
	PrefixesSent uint64
	// BFD is the BFD session's state, "" without BFD.
	BFD BFDState
	// LastDown says why the session last went down, if it did.
	LastDown string
}

// Peers returns the state of every peer, sorted by address.
func (s *Speaker) Peers() ([]PeerState, error) {
	s.mu.Lock()
	stopped := s.stopped
	s.mu.Unlock()
	if stopped {
		return nil, errors.New("bgp: list peers: speaker stopped")
	}
	var out []PeerState
	err := s.srv.ListPeer(context.Background(), &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		ps := PeerState{}
		st := p.GetState()
		ps.Address, _ = netip.ParseAddr(st.GetNeighborAddress())
		if !ps.Address.IsValid() {
			ps.Address, _ = netip.ParseAddr(p.GetConf().GetNeighborAddress())
		}
		ps.AS = st.GetPeerAsn()
		ps.State = apiSessionState(st.GetSessionState())
		if st.GetDisconnectReason() != api.PeerState_DISCONNECT_REASON_UNSPECIFIED {
			ps.LastDown = st.GetDisconnectReason().String()
			if m := st.GetDisconnectMessage(); m != "" {
				ps.LastDown += ": " + m
			}
		}
		if cp, ok := s.peer(ps.Address); ok && cp.BFD != nil {
			ps.BFD = BFDDown
			if p.GetBfd().GetEnabled() {
				ps.BFD = bfdState(st.GetBfdState().GetSessionState())
			}
		}
		if ps.State == StateEstablished {
			if up := p.GetTimers().GetState().GetUptime(); up != nil && up.AsTime().Unix() > 0 {
				ps.Uptime = time.Since(up.AsTime())
			}
		}
		for _, a := range p.GetAfiSafis() {
			ps.PrefixesSent += a.GetState().GetAdvertised()
		}
		out = append(out, ps)
	})
	if err != nil {
		return nil, fmt.Errorf("bgp: list peers: %w", err)
	}
	slices.SortFunc(out, func(a, b PeerState) int { return a.Address.Compare(b.Address) })
	return out, nil
}

// Stop stops the speaker; later calls do nothing.
//
// With graceful false it withdraws every route (counted under ReasonStop),
// closes every session with a Cease NOTIFICATION and the peers drop the
// routes at once.
//
// With graceful true, and graceful restart enabled, it closes the sessions
// with the peers that negotiated graceful restart without a NOTIFICATION,
// as a restarting speaker would (RFC 4724): those peers keep the routes as
// stale for the restart time, and a successor started with
// GracefulRestart.Restarting takes them over without a withdrawal. Peers
// that did not negotiate graceful restart get the NOTIFICATION and drop the
// routes. Without graceful restart enabled, graceful true is the same as
// false.
func (s *Speaker) Stop(graceful bool) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil
	}
	graceful = graceful && s.cfg.GracefulRestart.Enabled
	var errs []error
	if !graceful {
		for _, r := range s.routes {
			if err := s.withdrawLocked(r); err != nil {
				errs = append(errs, err)
				continue
			}
			s.withdrawals[ReasonStop]++
		}
	}
	s.stopped = true
	s.mu.Unlock()
	close(s.bfdStop)
	<-s.bfdDone

	if err := s.srv.StopBgp(context.Background(), &api.StopBgpRequest{AllowGracefulRestart: graceful}); err != nil {
		errs = append(errs, fmt.Errorf("bgp: stop: %w", err))
	}
	// Stop stops the BFD server too; its own StopBgp finds BGP stopped
	// already, which gobgpHandler keeps out of the log.
	s.closing.Store(true)
	s.srv.Stop()
	s.cancelWatch()
	s.log.Info("bgp speaker stopped", "graceful", graceful)
	return errors.Join(errs...)
}

// apiPath builds GoBGP's path for r, or its withdrawal.
func apiPath(r Route, withdraw bool) (*apiutil.Path, error) {
	nlri, err := gbgp.NewIPAddrPrefix(r.Prefix)
	if err != nil {
		return nil, err
	}
	family := gbgp.RF_IPv4_UC
	nh := netip.IPv4Unspecified()
	if r.Prefix.Addr().Is6() {
		family = gbgp.RF_IPv6_UC
		nh = netip.IPv6Unspecified()
	}
	if withdraw {
		return &apiutil.Path{Family: family, Nlri: nlri, Withdrawal: true}, nil
	}
	if r.NextHop.IsValid() {
		nh = r.NextHop
	}
	nhAttr, err := gbgp.NewPathAttributeNextHop(nh)
	if err != nil {
		return nil, err
	}
	attrs := []gbgp.PathAttributeInterface{gbgp.NewPathAttributeOrigin(gbgp.BGP_ORIGIN_ATTR_TYPE_IGP), nhAttr}
	if r.MED != nil {
		attrs = append(attrs, gbgp.NewPathAttributeMultiExitDisc(*r.MED))
	}
	if len(r.Communities) > 0 {
		attrs = append(attrs, gbgp.NewPathAttributeCommunities(slices.Clone(r.Communities)))
	}
	return &apiutil.Path{Family: family, Nlri: nlri, Attrs: attrs}, nil
}

func sessionState(s gbgp.FSMState) SessionState {
	switch s {
	case gbgp.BGP_FSM_IDLE:
		return StateIdle
	case gbgp.BGP_FSM_CONNECT:
		return StateConnect
	case gbgp.BGP_FSM_ACTIVE:
		return StateActive
	case gbgp.BGP_FSM_OPENSENT:
		return StateOpenSent
	case gbgp.BGP_FSM_OPENCONFIRM:
		return StateOpenConfirm
	case gbgp.BGP_FSM_ESTABLISHED:
		return StateEstablished
	}
	return StateUnknown
}

func apiSessionState(s api.PeerState_SessionState) SessionState {
	switch s {
	case api.PeerState_SESSION_STATE_IDLE:
		return StateIdle
	case api.PeerState_SESSION_STATE_CONNECT:
		return StateConnect
	case api.PeerState_SESSION_STATE_ACTIVE:
		return StateActive
	case api.PeerState_SESSION_STATE_OPENSENT:
		return StateOpenSent
	case api.PeerState_SESSION_STATE_OPENCONFIRM:
		return StateOpenConfirm
	case api.PeerState_SESSION_STATE_ESTABLISHED:
		return StateEstablished
	}
	return StateUnknown
}

func bfdState(s api.BfdSessionState) BFDState {
	switch s {
	case api.BfdSessionState_BFD_SESSION_STATE_UP:
		return BFDUp
	case api.BfdSessionState_BFD_SESSION_STATE_INIT:
		return BFDInit
	case api.BfdSessionState_BFD_SESSION_STATE_ADMIN_DOWN:
		return BFDAdminDown
	}
	return BFDDown
}

func nextHopString(a netip.Addr) string {
	if !a.IsValid() {
		return "self"
	}
	return a.String()
}

func communityStrings(cs []uint32) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = FormatCommunity(c)
	}
	return out
}

// gobgpHandler passes GoBGP's log records to the speaker's logger, at the
// level set in level, except the error GoBGP's Stop logs when it finds BGP
// already stopped by the speaker's own StopBgp.
type gobgpHandler struct {
	slog.Handler
	level   *slog.LevelVar
	closing *atomic.Bool
}

// Enabled reports whether GoBGP's record at level is wanted.
func (h *gobgpHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return level >= h.level.Level() && h.Handler.Enabled(ctx, level)
}

// Handle drops the expected stop error and passes everything else on.
func (h *gobgpHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "failed to stop BGP server" && h.closing.Load() {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs keeps the wrapper around the derived handler.
func (h *gobgpHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.Handler = h.Handler.WithAttrs(attrs)
	return &c
}

// WithGroup keeps the wrapper around the derived handler.
func (h *gobgpHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.Handler = h.Handler.WithGroup(name)
	return &c
}
