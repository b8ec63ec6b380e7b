//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/bgp"
	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/proxy"
)

// collector exposes the engine's and the proxies' counters, read at scrape
// time: the packet path keeps its own counters and knows nothing of this.
type collector struct {
	srv      *mux.Server
	proxies  map[string]*proxy.Handler
	ann      *announcer  // nil without a bgp section
	sessions *sessionLog // nil while log.sessions is off
}

var (
	descRx         = prometheus.NewDesc("udpmux_datagrams_received_total", "Datagrams read from a listener's sockets.", []string{"listener"}, nil)
	descTx         = prometheus.NewDesc("udpmux_datagrams_sent_total", "Datagrams sent to clients.", []string{"listener"}, nil)
	descRxBytes    = prometheus.NewDesc("udpmux_received_bytes_total", "Payload bytes read from a listener's sockets.", []string{"listener"}, nil)
	descTxBytes    = prometheus.NewDesc("udpmux_sent_bytes_total", "Payload bytes sent to clients.", []string{"listener"}, nil)
	descDropped    = prometheus.NewDesc("udpmux_datagrams_dropped_total", "Datagrams dropped, by reason.", []string{"listener", "reason"}, nil)
	descOpened     = prometheus.NewDesc("udpmux_sessions_opened_total", "Sessions created.", []string{"listener"}, nil)
	descRefused    = prometheus.NewDesc("udpmux_sessions_refused_total", "New sessions refused, by reason.", []string{"listener", "reason"}, nil)
	descClosed     = prometheus.NewDesc("udpmux_sessions_closed_total", "Sessions ended, by reason.", []string{"listener", "reason"}, nil)
	descForwarded  = prometheus.NewDesc("udpmux_datagrams_forwarded_total", "Datagrams passed to the loop owning their session.", []string{"listener"}, nil)
	descUpRx       = prometheus.NewDesc("udpmux_upstream_datagrams_received_total", "Datagrams read from sessions' own sockets (a proxy's backend replies).", []string{"listener"}, nil)
	descUpTx       = prometheus.NewDesc("udpmux_upstream_datagrams_sent_total", "Datagrams sent on sessions' own sockets (a proxy's to its backends).", []string{"listener"}, nil)
	descCoalesced  = prometheus.NewDesc("udpmux_datagrams_coalesced_total", "Datagrams that arrived coalesced with others of their flow (UDP GRO), from clients or from sessions' own sockets.", []string{"listener", "from"}, nil)
	descRelayed    = prometheus.NewDesc("udpmux_datagrams_relayed_total", "Datagrams of sessions a predecessor kept, relayed to it after a restart.", []string{"listener"}, nil)
	descSessions   = prometheus.NewDesc("udpmux_sessions", "Live sessions.", nil, nil)
	descCapacity   = prometheus.NewDesc("udpmux_sessions_capacity", "The session table's bound (sessions.max).", nil, nil)
	descPanics     = prometheus.NewDesc("udpmux_handler_panics_total", "Handler callbacks that panicked; each ended its session.", nil, nil)
	descKeys       = prometheus.NewDesc("udpmux_session_keys", "Keys the live sessions are filed under; sessions.max bounds them.", nil, nil)
	descMoved      = prometheus.NewDesc("udpmux_sessions_moved_total", "Sessions that followed their client to a new address.", []string{"listener"}, nil)
	descRoamed     = prometheus.NewDesc("udpmux_datagrams_roaming_total", "Datagrams of a session from an address other than its client's, handed to its handler to decide.", []string{"listener"}, nil)
	descMovesRef   = prometheus.NewDesc("udpmux_proxy_moves_refused_total", "New client addresses a proxy session gave no probe, or whose move a limit refused.", []string{"listener"}, nil)
	descMovesPend  = prometheus.NewDesc("udpmux_proxy_moves_pending", "New client addresses waiting for their backend to answer (pending probes).", []string{"listener"}, nil)
	descRoamDrops  = prometheus.NewDesc("udpmux_proxy_roam_drops_total", "Datagrams of a roaming client dropped: impossible for the session's client (implausible), on a probe without the backend's proof (unvouched), or from the address a session just left (late).", []string{"listener", "reason"}, nil)
	descEvicted    = prometheus.NewDesc("udpmux_proxy_probes_evicted_total", "Pending probes closed for a newer client address.", []string{"listener"}, nil)
	descProbes     = prometheus.NewDesc("udpmux_proxy_probe_sockets", "Probe sockets open, pending or confirmed.", []string{"listener"}, nil)
	descRecovery   = prometheus.NewDesc("udpmux_proxy_recoveries_total", "Sessions nobody here had seen (a crash, another host): adopted where a backend proved them (recovered), not begun for the rates or sockets (refused), or proved by no backend in time (failed).", []string{"listener", "result"}, nil)
	descRecProbes  = prometheus.NewDesc("udpmux_proxy_recovery_probes_total", "Datagrams sent to backends to ask whether they have a recovering session.", []string{"listener"}, nil)
	descRecovering = prometheus.NewDesc("udpmux_proxy_recovering", "Sessions recovering now, and the sockets they hold (sockets).", []string{"listener", "what"}, nil)
	descBackendUp  = prometheus.NewDesc("udpmux_proxy_backend_up", "1 if the backend is healthy (it takes new sessions unless drained or of weight 0), 0 while it is backing off or fails its health checks.", []string{"listener", "backend"}, nil)
	descBackendDr  = prometheus.NewDesc("udpmux_proxy_backend_drained", "1 while the backend takes no new sessions by the operator's word (udpmux backend drain), or for good once the configuration no longer lists it (retired) while sessions live on it.", []string{"listener", "backend"}, nil)
	descBackendW   = prometheus.NewDesc("udpmux_proxy_backend_weight", "The backend's weight: its share of new sessions among the backends that take them (0 takes none).", []string{"listener", "backend"}, nil)
	descCheckUp    = prometheus.NewDesc("udpmux_proxy_backend_check_up", "1 if the backend passes its active health checks, 0 if not (listeners with health.probe only).", []string{"listener", "backend"}, nil)
	descCheckProbe = prometheus.NewDesc("udpmux_proxy_health_probes_total", "Active health probes, by result: answered (ok) or not (failed).", []string{"listener", "backend", "result"}, nil)
	descCheckFail  = prometheus.NewDesc("udpmux_proxy_backend_check_failure_timestamp_seconds", "When the backend's latest failed health probe was sent, by why it failed: timeout, refused (ICMP port unreachable), unproven (answers that did not prove the backend) or error.", []string{"listener", "backend", "reason"}, nil)
	descBackendS   = prometheus.NewDesc("udpmux_proxy_backend_sessions", "Live sessions on the backend.", []string{"listener", "backend"}, nil)
	descBackendD   = prometheus.NewDesc("udpmux_proxy_backend_down_total", "Times the backend was taken out of new picks (ICMP port unreachable, or failed health checks).", []string{"listener", "backend"}, nil)
	descUpstreams  = prometheus.NewDesc("udpmux_proxy_upstream_sockets", "Open upstream sockets.", []string{"listener"}, nil)
	descProxyErr   = prometheus.NewDesc("udpmux_proxy_upstream_errors_total", "Upstream failures, by kind.", []string{"listener", "kind"}, nil)
	descBGPPeer    = prometheus.NewDesc("udpmux_bgp_peer_established", "1 while the BGP session with the peer is established.", []string{"peer"}, nil)
	descBGPBFD     = prometheus.NewDesc("udpmux_bgp_peer_bfd_up", "1 while the BFD session with the peer is up (peers with bfd only).", []string{"peer"}, nil)
	descBGPRoutes  = prometheus.NewDesc("udpmux_bgp_prefixes_announced", "Prefixes (VIPs) announced now.", nil, nil)
	descBGPWithdr  = prometheus.NewDesc("udpmux_bgp_withdrawals_total", "Routes withdrawn, by reason: backends_down, drain, shutdown, stop.", []string{"reason"}, nil)
	descLogLines   = prometheus.NewDesc("udpmux_session_log_lines_total", "Session-ended lines written (log.sessions).", nil, nil)
	descLogDropped = prometheus.NewDesc("udpmux_session_log_dropped_total", "Session-ended lines dropped, by reason: rate (log.sessions_rate), queue_full (the log's writer fell behind).", []string{"reason"}, nil)
	descRouted     = prometheus.NewDesc("udpmux_proxy_sessions_routed_total", "New sessions whose first datagram named a backend's server ID (dissector quic): sent to it (server_id), or balanced by the hash because none healthy has it (fallback).", []string{"listener", "route"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	st := c.srv.Stats()
	gauge(descSessions, float64(st.Sessions))
	gauge(descCapacity, float64(st.Capacity))
	counter(descPanics, st.HandlerPanics)
	gauge(descKeys, float64(st.Keys))
	for _, l := range st.Listeners {
		n := l.Name
		counter(descRx, l.RxDatagrams, n)
		counter(descTx, l.TxDatagrams, n)
		counter(descRxBytes, l.RxBytes, n)
		counter(descTxBytes, l.TxBytes, n)
		counter(descOpened, l.SessionsOpened, n)
		counter(descForwarded, l.Forwarded, n)
		counter(descUpRx, l.UpstreamRx, n)
		counter(descUpTx, l.UpstreamTx, n)
		counter(descCoalesced, l.RxCoalesced, n, "client")
		counter(descCoalesced, l.UpstreamCoalesced, n, "upstream")
		counter(descRelayed, l.Relayed, n)
		counter(descMoved, l.Moved, n)
		counter(descRoamed, l.Roamed, n)
		for _, d := range drops(&l) {
			counter(descDropped, d.n, n, d.reason)
		}
		counter(descRefused, l.RefusedFull, n, "table_full")
		counter(descRefused, l.RefusedOpen, n, "handler")
		for reason, v := range l.SessionsClosed {
			counter(descClosed, v, n, reason)
		}
	}
	for name, h := range c.proxies {
		ps := h.Stats()
		gauge(descUpstreams, float64(ps.UpstreamSockets), name)
		counter(descProxyErr, ps.NoBackend, name, "no_backend")
		counter(descProxyErr, ps.SourceLimited, name, "source_limited")
		counter(descProxyErr, ps.SocketLimited, name, "socket_limited")
		counter(descProxyErr, ps.DialErrors, name, "dial")
		counter(descProxyErr, ps.UpstreamErrors, name, "io")
		counter(descProxyErr, ps.RefusedByBackend, name, "port_unreachable")
		counter(descProxyErr, ps.IgnoredRefusals, name, "port_unreachable_ignored")
		counter(descProxyErr, ps.Abandoned, name, "abandoned")
		counter(descMovesRef, ps.MovesRefused, name)
		counter(descRouted, ps.Routed, name, "server_id")
		counter(descRouted, ps.RouteFallbacks, name, "fallback")
		gauge(descMovesPend, float64(ps.MovesPending), name)
		counter(descRoamDrops, ps.MovesImplausible, name, "implausible")
		counter(descRoamDrops, ps.UnvouchedAnswers, name, "unvouched")
		counter(descRoamDrops, ps.LateDatagrams, name, "late")
		counter(descEvicted, ps.ProbesEvicted, name)
		gauge(descProbes, float64(ps.ProbeSockets), name)
		counter(descRecovery, ps.Recovered, name, "recovered")
		counter(descRecovery, ps.RecoveryRefused, name, "refused")
		counter(descRecovery, ps.RecoveryFailed, name, "failed")
		counter(descRecProbes, ps.RecoveryProbes, name)
		gauge(descRecovering, float64(ps.Recovering), name, "sessions")
		gauge(descRecovering, float64(ps.RecoverySockets), name, "sockets")
		for _, b := range ps.Backends {
			up := 0.0
			if b.Healthy {
				up = 1
			}
			addr := b.Addr.String()
			gauge(descBackendUp, up, name, addr)
			drained := 0.0
			if b.Drained {
				drained = 1
			}
			gauge(descBackendDr, drained, name, addr)
			gauge(descBackendW, float64(b.Weight), name, addr)
			gauge(descBackendS, float64(b.Sessions), name, addr)
			counter(descBackendD, b.Downs, name, addr)
			collectChecks(ch, name, b)
		}
	}
	if c.ann != nil {
		c.collectBGP(ch)
	}
	if c.sessions != nil {
		st := c.sessions.status()
		counter(descLogLines, st.Lines)
		for reason, v := range st.Dropped {
			counter(descLogDropped, v, reason)
		}
	}
}

// drop is a count of a listener's datagrams dropped for one reason.
type drop struct {
	reason string
	n      uint64
}

// drops returns l's dropped datagrams by reason, as the metric
// udpmux_datagrams_dropped_total labels them and `udpmux status` sums
// them up.
func drops(l *mux.ListenerStats) []drop {
	return []drop{
		{"truncated", l.Truncated}, {"malformed", l.Malformed}, {"unknown_flow", l.UnknownFlow},
		{"unknown_id", l.UnknownID}, {"stateless_unserved", l.StatelessDrops}, {"roam_refused", l.RoamRefused},
		{"kernel_queue_full", l.KernelDrops}, {"loop_inbox_full", l.ForwardDrops},
		{"send_buffer_full", l.SendDrops}, {"send_error", l.SendErrors}, {"too_large", l.TooLarge},
		{"relay_full", l.RelayDrops},
		{"upstream_kernel_queue_full", l.UpstreamKernelDrops}, {"upstream_send_buffer_full", l.UpstreamSendDrops},
		{"upstream_send_error", l.UpstreamSendErrors},
	}
}

// collectChecks reports the active health checks of backend b of the
// proxy listener name, if it has any.
func collectChecks(ch chan<- prometheus.Metric, name string, b proxy.BackendStatus) {
	if b.Check == "" {
		return
	}
	addr := b.Addr.String()
	up := 0.0
	if b.Check == "up" {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(descCheckUp, prometheus.GaugeValue, up, name, addr)
	ch <- prometheus.MustNewConstMetric(descCheckProbe, prometheus.CounterValue, float64(b.ProbesOK), name, addr, "ok")
	ch <- prometheus.MustNewConstMetric(descCheckProbe, prometheus.CounterValue, float64(b.ProbesFailed), name, addr, "failed")
	if f := b.LastFailure; f != nil {
		ch <- prometheus.MustNewConstMetric(descCheckFail, prometheus.GaugeValue, float64(f.At.UnixNano())/1e9, name, addr, f.Kind)
	}
}

// collectBGP reports the announcer's peers and announcements.
func (c *collector) collectBGP(ch chan<- prometheus.Metric) {
	st := c.ann.status()
	bit := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	for _, p := range st.Peers {
		ch <- prometheus.MustNewConstMetric(descBGPPeer, prometheus.GaugeValue, bit(p.State == "established"), p.Address)
		if p.BFD != "" {
			ch <- prometheus.MustNewConstMetric(descBGPBFD, prometheus.GaugeValue, bit(p.BFD == "up"), p.Address)
		}
	}
	ch <- prometheus.MustNewConstMetric(descBGPRoutes, prometheus.GaugeValue, float64(len(st.Announced)))
	for _, r := range []string{reasonBackendsDown, reasonDrain, reasonShutdown, bgp.ReasonStop} {
		ch <- prometheus.MustNewConstMetric(descBGPWithdr, prometheus.CounterValue, float64(st.Withdrawals[r]), r)
	}
}

// metricsIdleTimeout closes a keep-alive connection of the metrics server
// that has had no request for this long: each holds a descriptor. It is
// longer than Prometheus's default scrape interval (1m), so that a scraper
// keeps its connection from one scrape to the next.
const metricsIdleTimeout = 90 * time.Second

// metricsServer returns the metrics server for h. A scrape is one small GET
// and a response gathered in memory, so every phase of a connection is
// bounded: reading a request, writing its response, and waiting idle for
// the next request (idle; without it a keep-alive connection that a client
// abandons stays open for as long as the daemon runs).
func metricsServer(h http.Handler, idle time.Duration) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       idle,
	}
}

// serveMetrics serves /metrics on addr until ctx ends. The socket has
// SO_REUSEPORT so that a successor can bind it while this process still
// does during a handoff.
func serveMetrics(ctx context.Context, addr string, cfg *config, srv *mux.Server, ann *announcer, sessions *sessionLog, log *slog.Logger) error {
	c := &collector{srv: srv, proxies: map[string]*proxy.Handler{}, ann: ann, sessions: sessions}
	for _, lc := range cfg.mux.Listeners {
		if h, ok := lc.Handler.(*proxy.Handler); ok {
			c.proxies[lc.Name] = h
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return serr
	}}
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics.address: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	hs := metricsServer(mux, metricsIdleTimeout)
	go func() {
		<-ctx.Done()
		hs.Close()
	}()
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("metrics", "address", ln.Addr().String())
	return nil
}
