//go:build linux

package main

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"

	"github.com/udpmux/udpmux/dissect/openvpn"
	"github.com/udpmux/udpmux/dissect/quic"
	"github.com/udpmux/udpmux/dissect/wireguard"
	"github.com/udpmux/udpmux/fastpath"
	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/proxy"
	"github.com/udpmux/udpmux/quiclb"
	"github.com/udpmux/udpmux/session"
)

// fileConfig is config.yaml as written: strings where udpmux parses the value
// itself, so that an error can name the key and say what is wrong with it.
type fileConfig struct {
	Workers     int              `mapstructure:"workers"`
	Batch       int              `mapstructure:"batch"`
	MaxDatagram int              `mapstructure:"max_datagram"`
	Socket      socketConfig     `mapstructure:"socket"`
	Listeners   []listenerConfig `mapstructure:"listeners"`
	Sessions    sessionsConfig   `mapstructure:"sessions"`
	Recovery    recoveryConfig   `mapstructure:"recovery"`
	Log         logConfig        `mapstructure:"log"`
	Control     controlConfig    `mapstructure:"control"`
	Metrics     metricsConfig    `mapstructure:"metrics"`
	BGP         bgpFileConfig    `mapstructure:"bgp"`
}

type metricsConfig struct {
	Address string `mapstructure:"address"`
}

type controlConfig struct {
	Socket         string `mapstructure:"socket"`
	HandoffTimeout string `mapstructure:"handoff_timeout"`
	DrainTimeout   string `mapstructure:"drain_timeout"`
}

type socketConfig struct {
	RecvBuffer int `mapstructure:"recv_buffer"`
	SendBuffer int `mapstructure:"send_buffer"`
	// The proxy's upstream sockets; 0 means as recv_buffer and send_buffer.
	UpstreamRecvBuffer int `mapstructure:"upstream_recv_buffer"`
	UpstreamSendBuffer int `mapstructure:"upstream_send_buffer"`
}

type listenerConfig struct {
	Name        string          `mapstructure:"name"`
	Address     string          `mapstructure:"address"`
	Handler     string          `mapstructure:"handler"`
	Dissector   string          `mapstructure:"dissector"`
	WireGuard   wireguardConfig `mapstructure:"wireguard"`
	QUIC        quicConfig      `mapstructure:"quic"`
	IdleTimeout string          `mapstructure:"idle_timeout"`
	Backends    []backendConfig `mapstructure:"backends"`
	Balance     string          `mapstructure:"balance"`
	// Source is where a proxy's upstream sockets send from: "udpmux" (this
	// host's address; empty means the same) or "client" (each session's
	// client address: a transparent proxy).
	Source   string          `mapstructure:"source"`
	Announce *announceConfig `mapstructure:"announce"`
	Health   healthConfig    `mapstructure:"health"`
	FastPath string          `mapstructure:"fast_path"`
	// checked are a proxy's backends once check has read them.
	checked backends
}

// backendConfig is one of a proxy's backends: "ip:port" in the file, or a
// map with its address, its weight and the QUIC-LB server ID of dissector:
// quic.
type backendConfig struct {
	Address string `mapstructure:"address"`
	// Weight is its share of new sessions, 1 when left out (nil).
	Weight *int `mapstructure:"weight"`
	// ServerID is what YAML made of the value: a string of hex digits, or
	// whatever else an unquoted value reads as (0102 is a number), which
	// check refuses rather than guess at.
	ServerID any `mapstructure:"server_id"`
}

// backendHook decodes a backend written as "ip:port" alone.
func backendHook(from, to reflect.Type, data any) (any, error) {
	if to == reflect.TypeFor[backendConfig]() && from.Kind() == reflect.String {
		return map[string]any{"address": data}, nil
	}
	return data, nil
}

// wireguardConfig tunes dissector: wireguard.
type wireguardConfig struct {
	// PrivateKey is the path of the backends' private key (`wg genkey`),
	// readable by udpmux's user only; empty keys handshakes by 4-tuple.
	PrivateKey string `mapstructure:"private_key"`
	// DecryptRate bounds the handshakes decrypted per second; 0 is the
	// dissector's default.
	DecryptRate int `mapstructure:"decrypt_rate"`
}

type sessionsConfig struct {
	Max                int `mapstructure:"max"`
	MaxPerSource       int `mapstructure:"max_per_source"`
	MaxUpstreamSockets int `mapstructure:"max_upstream_sockets"`
	MaxProbeSockets    int `mapstructure:"max_probe_sockets"`
}

// recoveryConfig rations the recovery of tunnel sessions that no process
// here has seen (a crash, another host): proxy listeners with dissector
// wireguard or openvpn ask their backends.
type recoveryConfig struct {
	Enabled       bool   `mapstructure:"enabled"`
	Rate          int    `mapstructure:"rate"`
	RatePerSource int    `mapstructure:"rate_per_source"`
	Fanout        int    `mapstructure:"fanout"`
	MaxSockets    int    `mapstructure:"max_sockets"`
	Timeout       string `mapstructure:"timeout"`
}

type logConfig struct {
	Level  string `mapstructure:"level"`
	Format string `mapstructure:"format"`
	// Sessions logs a line per ended session, at most SessionsRate a
	// second with bursts of SessionsBurst.
	Sessions      bool `mapstructure:"sessions"`
	SessionsRate  int  `mapstructure:"sessions_rate"`
	SessionsBurst int  `mapstructure:"sessions_burst"`
}

// defaults are the values of keys a config file leaves out. Every scalar key
// is listed so that viper knows it and a UDPMUX_ environment variable can
// override it (UDPMUX_SESSIONS_MAX for sessions.max).
var defaults = map[string]any{
	"workers":                       0,
	"batch":                         mux.DefaultBatch,
	"max_datagram":                  65535,
	"socket.recv_buffer":            mux.DefaultSocketBuf,
	"socket.send_buffer":            mux.DefaultSocketBuf,
	"socket.upstream_recv_buffer":   0,
	"socket.upstream_send_buffer":   0,
	"sessions.max":                  mux.DefaultMaxSessions,
	"sessions.max_per_source":       0,
	"sessions.max_upstream_sockets": 0,
	"sessions.max_probe_sockets":    proxy.DefaultProbes,
	"recovery.enabled":              true,
	"recovery.rate":                 proxy.DefaultRecoveryRate,
	"recovery.rate_per_source":      proxy.DefaultRecoveryRatePerSource,
	"recovery.fanout":               proxy.DefaultRecoveryFanout,
	"recovery.max_sockets":          proxy.DefaultRecoverySockets,
	"recovery.timeout":              proxy.DefaultRecoveryTimeout.String(),
	"log.level":                     "info",
	"log.format":                    "text",
	"log.sessions":                  false,
	"log.sessions_rate":             defaultSessionsRate,
	"log.sessions_burst":            defaultSessionsBurst,
	"control.socket":                defaultControlSocket,
	"control.handoff_timeout":       "10s",
	"control.drain_timeout":         "5m",
	"metrics.address":               "",
}

// loadConfig reads path with UDPMUX_ environment overrides and checks it.
func loadConfig(path string) (*config, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	cfg, err := parseConfig(text)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// parseConfig reads a config file's text with UDPMUX_ environment overrides
// and checks it. The text is kept: a successor process sends it to its
// predecessor, which checks it before it stops reading.
func parseConfig(text []byte) (*config, error) {
	v := viper.New()
	v.SetConfigType("yaml")
	for k, val := range defaults {
		v.SetDefault(k, val)
	}
	for k, val := range bgpDefaults {
		v.SetDefault(k, val)
	}
	v.SetEnvPrefix("UDPMUX")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	if err := v.ReadConfig(bytes.NewReader(text)); err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	var fc fileConfig
	hooks := func(c *mapstructure.DecoderConfig) {
		c.DecodeHook = mapstructure.ComposeDecodeHookFunc(backendHook, c.DecodeHook)
	}
	if err := v.UnmarshalExact(&fc, hooks); err != nil {
		return nil, cleanDecodeError(err)
	}
	cfg, err := fc.check()
	if err != nil {
		return nil, err
	}
	cfg.text = text
	return cfg, nil
}

// cleanDecodeError turns mapstructure's report into "key: problem" lines.
func cleanDecodeError(err error) error {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "decoding failed due to the following error(s):\n\n")
	msg = strings.ReplaceAll(msg, "'", "")
	return errors.New(msg)
}

// config is a checked configuration, ready for mux.
type config struct {
	mux      mux.Config
	logLevel string
	// logJSON is log.format: json.
	logJSON bool
	// sessionLog is the log.sessions settings, nil while off.
	sessionLog *sessionLogConfig
	// backends and balance per listener, for handlers that need them.
	listeners []listenerConfig
	limits    proxyLimits
	// upstreamSockets is sessions.max_upstream_sockets as configured: 0
	// leaves the bound to what the descriptor limit allows.
	upstreamSockets int
	// controlSocket is the control socket's path; handoffTimeout bounds how
	// long either side of a handoff waits for the other's next step, and
	// how long a predecessor stays paused for its successor.
	controlSocket  string
	handoffTimeout time.Duration
	// drainTimeout bounds how long a predecessor keeps the sessions it
	// could not hand over.
	drainTimeout   time.Duration
	metricsAddress string
	// fleet is the bgp section, nil without one.
	fleet *fleetConfig
	// fast are the listeners' fast paths (fast_path: nftables).
	fast *fastPaths
	text []byte
}

// proxyLimits are shared by every proxy listener: the bounds are per
// process, and so are the upstream sockets' buffer sizes.
type proxyLimits struct {
	sources                *proxy.SourceLimiter
	sockets, probes        *proxy.Budget
	recvBuffer, sendBuffer int
	// recovery is nil when recovery.enabled is false; its Sockets are
	// shared by every listener.
	recovery *proxy.RecoveryConfig
	// fast collects the listeners' fast paths.
	fast *fastPaths
}

// check validates every key and builds the engine's configuration; the first
// problem found is returned as "key: what is wrong".
func (fc *fileConfig) check() (*config, error) {
	c := &config{logLevel: fc.Log.Level, listeners: fc.Listeners}
	var err error
	if c.logJSON, c.sessionLog, err = fc.Log.check(); err != nil {
		return nil, err
	}
	if fc.Control.Socket == "" || !filepath.IsAbs(fc.Control.Socket) {
		return nil, fmt.Errorf("control.socket: %q is not an absolute path", fc.Control.Socket)
	}
	if len(fc.Control.Socket) > 107 {
		return nil, fmt.Errorf("control.socket: %d bytes is longer than a Unix socket path may be (107)", len(fc.Control.Socket))
	}
	c.controlSocket = fc.Control.Socket
	if c.handoffTimeout, err = positiveDuration("control.handoff_timeout", fc.Control.HandoffTimeout); err != nil {
		return nil, err
	}
	if c.drainTimeout, err = positiveDuration("control.drain_timeout", fc.Control.DrainTimeout); err != nil {
		return nil, err
	}
	if fc.Metrics.Address != "" {
		if _, err := parseAddress(fc.Metrics.Address); err != nil {
			return nil, fmt.Errorf("metrics.address: %w", err)
		}
	}
	c.metricsAddress = fc.Metrics.Address
	if fc.Sessions.Max < 1 {
		return nil, fmt.Errorf("sessions.max: %d must be at least 1", fc.Sessions.Max)
	}
	if fc.Sessions.MaxPerSource < 0 {
		return nil, fmt.Errorf("sessions.max_per_source: %d is negative (0 means unlimited)", fc.Sessions.MaxPerSource)
	}
	if fc.Sessions.MaxUpstreamSockets < 0 {
		return nil, fmt.Errorf("sessions.max_upstream_sockets: %d is negative (0 means as many as the descriptor limit leaves, at most sessions.max)", fc.Sessions.MaxUpstreamSockets)
	}
	if fc.Sessions.MaxProbeSockets < 1 {
		return nil, fmt.Errorf("sessions.max_probe_sockets: %d must be at least 1 (probes carry a roaming client's datagrams until its backend answers)", fc.Sessions.MaxProbeSockets)
	}
	if len(fc.Listeners) == 0 {
		return nil, errors.New("listeners: none configured")
	}
	sockets := fc.Sessions.MaxUpstreamSockets
	if sockets == 0 {
		sockets = fc.Sessions.Max // until serve knows the descriptor limit
	}
	c.upstreamSockets = fc.Sessions.MaxUpstreamSockets
	c.limits = proxyLimits{
		sources:    proxy.NewSourceLimiter(fc.Sessions.MaxPerSource),
		sockets:    proxy.NewBudget(sockets),
		probes:     proxy.NewBudget(fc.Sessions.MaxProbeSockets),
		recvBuffer: cmp.Or(fc.Socket.UpstreamRecvBuffer, fc.Socket.RecvBuffer),
		sendBuffer: cmp.Or(fc.Socket.UpstreamSendBuffer, fc.Socket.SendBuffer),
	}
	c.fast = new(fastPaths)
	c.limits.fast = c.fast
	if c.limits.recovery, err = fc.Recovery.check(); err != nil {
		return nil, err
	}
	for _, b := range []struct {
		key string
		n   int
	}{{"socket.upstream_recv_buffer", fc.Socket.UpstreamRecvBuffer}, {"socket.upstream_send_buffer", fc.Socket.UpstreamSendBuffer}} {
		if b.n < 0 || b.n > math.MaxInt32 {
			return nil, fmt.Errorf("%s: %d is not within 0..%d (0 means as the listeners' buffers)", b.key, b.n, math.MaxInt32)
		}
	}
	c.mux = mux.Config{
		Workers: fc.Workers, Batch: fc.Batch, MaxDatagram: fc.MaxDatagram,
		MaxSessions: fc.Sessions.Max,
		RecvBuffer:  fc.Socket.RecvBuffer, SendBuffer: fc.Socket.SendBuffer,
	}
	for i := range fc.Listeners {
		lc, err := fc.Listeners[i].check(i, c.limits)
		if err != nil {
			return nil, err
		}
		c.mux.Listeners = append(c.mux.Listeners, lc)
		if fc.Listeners[i].FastPath == "nftables" {
			c.fast.idle = max(c.fast.idle, lc.IdleTimeout)
			if c.fast.minIdle == 0 || lc.IdleTimeout < c.fast.minIdle {
				c.fast.minIdle = lc.IdleTimeout
			}
		}
	}
	var addrs []netip.AddrPort
	for _, lc := range c.mux.Listeners {
		addrs = append(addrs, lc.Address)
	}
	if c.fleet, err = fc.BGP.check(fc.Listeners, addrs); err != nil {
		return nil, err
	}
	// The engine's own rules: bounds that depend on the machine, listeners
	// that would share datagrams, handlers and dissectors that cannot work
	// together.
	if err := c.mux.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Defaults and bounds of the session log (log.sessions): a line is some
// 400 bytes, so the default rate writes at most 40 kB a second. The burst
// is also the queue's length, which it bounds for the memory's sake.
const (
	defaultSessionsRate  = 100
	defaultSessionsBurst = 200
	maxSessionsRate      = 100_000
	maxSessionsBurst     = 100_000
)

// check validates the log section: it returns whether the format is JSON,
// and the session log's settings, nil while log.sessions is off.
func (l *logConfig) check() (jsonFormat bool, sessions *sessionLogConfig, err error) {
	switch l.Level {
	case "debug", "info", "warn", "error":
	default:
		return false, nil, fmt.Errorf("log.level: %q is not one of debug, info, warn, error", l.Level)
	}
	switch l.Format {
	case "text", "json":
	default:
		return false, nil, fmt.Errorf("log.format: %q is not one of text, json", l.Format)
	}
	if l.SessionsRate < 1 || l.SessionsRate > maxSessionsRate {
		return false, nil, fmt.Errorf("log.sessions_rate: %d is not within 1..%d lines per second", l.SessionsRate, maxSessionsRate)
	}
	if l.SessionsBurst < 1 || l.SessionsBurst > maxSessionsBurst {
		return false, nil, fmt.Errorf("log.sessions_burst: %d is not within 1..%d lines", l.SessionsBurst, maxSessionsBurst)
	}
	if l.Sessions {
		// The lines are at level info; warn or error would drop every
		// one of them, silently.
		if l.Level != "debug" && l.Level != "info" {
			return false, nil, fmt.Errorf("log.sessions: the session lines are at level info, which log.level %s leaves out; set log.level to info", l.Level)
		}
		sessions = &sessionLogConfig{rate: l.SessionsRate, burst: l.SessionsBurst}
	}
	return l.Format == "json", sessions, nil
}

// check validates the recovery section and returns the proxies' recovery
// configuration, nil when disabled.
func (r *recoveryConfig) check() (*proxy.RecoveryConfig, error) {
	if !r.Enabled {
		return nil, nil
	}
	for _, k := range []struct {
		key string
		n   int
	}{{"recovery.rate", r.Rate}, {"recovery.rate_per_source", r.RatePerSource}, {"recovery.fanout", r.Fanout}, {"recovery.max_sockets", r.MaxSockets}} {
		if k.n < 1 {
			return nil, fmt.Errorf("%s: %d must be at least 1 (recovery.enabled: false turns recovery off)", k.key, k.n)
		}
	}
	if r.Fanout > maxRecoveryFanout {
		return nil, fmt.Errorf("recovery.fanout: %d asks more backends per datagram than %d", r.Fanout, maxRecoveryFanout)
	}
	if r.MaxSockets < r.Fanout {
		return nil, fmt.Errorf("recovery.max_sockets: %d is fewer than one recovery's recovery.fanout (%d)", r.MaxSockets, r.Fanout)
	}
	d, err := time.ParseDuration(r.Timeout)
	if err != nil || d < 100*time.Millisecond || d > time.Minute {
		return nil, fmt.Errorf("recovery.timeout: %q is not a duration from 100ms to 1m", r.Timeout)
	}
	return &proxy.RecoveryConfig{Rate: r.Rate, RatePerSource: r.RatePerSource, Fanout: r.Fanout,
		Sockets: proxy.NewBudget(r.MaxSockets), Timeout: d}, nil
}

// maxRecoveryFanout bounds recovery.fanout: the datagrams a recovering
// session sends to backends for each of its client's.
const maxRecoveryFanout = 64

func (l *listenerConfig) check(i int, limits proxyLimits) (mux.ListenerConfig, error) {
	key := func(k string) string { return fmt.Sprintf("listeners[%d].%s", i, k) }
	var lc mux.ListenerConfig
	addr, err := parseAddress(l.Address)
	if err != nil {
		return lc, fmt.Errorf("%s: %w", key("address"), err)
	}
	lc.Address = addr
	lc.Name = l.Name
	if lc.Name == "" {
		lc.Name = fmt.Sprintf("listener%d", i)
	}
	switch l.Handler {
	case "echo", "discard", "proxy":
	case "":
		return lc, fmt.Errorf("%s: missing (echo, discard, proxy)", key("handler"))
	default:
		return lc, fmt.Errorf("%s: %q is not one of echo, discard, proxy", key("handler"), l.Handler)
	}
	if l.Handler != "proxy" && len(l.Backends) > 0 {
		return lc, fmt.Errorf("%s: only the proxy handler has backends", key("backends"))
	}
	if l.Handler != "proxy" && l.Balance != "" {
		return lc, fmt.Errorf("%s: only the proxy handler balances", key("balance"))
	}
	fast, err := l.fastPathKind(key, addr)
	if err != nil {
		return lc, err
	}
	if l.Handler != "proxy" && l.Health != (healthConfig{}) {
		return lc, fmt.Errorf("%s: only the proxy handler has backends to check", key("health"))
	}
	var bs backends
	if l.Handler == "proxy" {
		if bs, err = l.backends(key); err != nil {
			return lc, err
		}
		l.checked = bs
	}
	if err := l.checkSource(key, addr, bs); err != nil {
		return lc, err
	}
	d, err := l.dissector(key, bs)
	if err != nil {
		return lc, err
	}
	lc.Dissector = d
	switch l.Handler {
	case "echo":
		lc.Handler = session.Echo{}
	case "discard":
		lc.Handler = session.Discard{}
	case "proxy":
		h, err := l.proxyHandler(key, limits, bs, d, fast)
		if err != nil {
			return lc, err
		}
		lc.Handler = h
	}
	lc.IdleTimeout = mux.DefaultIdleTimeout
	if l.IdleTimeout != "" {
		d, err := time.ParseDuration(l.IdleTimeout)
		if err != nil {
			return lc, fmt.Errorf("%s: %q is not a duration such as 60s or 5m", key("idle_timeout"), l.IdleTimeout)
		}
		if d < time.Second {
			return lc, fmt.Errorf("%s: %s is shorter than the 1s sweep resolution", key("idle_timeout"), d)
		}
		lc.IdleTimeout = d
	}
	return lc, nil
}

// dissector builds the listener's dissector; bs are a proxy's backends.
func (l *listenerConfig) dissector(key func(string) string, bs backends) (session.Dissector, error) {
	if l.Dissector != "wireguard" && l.WireGuard != (wireguardConfig{}) {
		return nil, fmt.Errorf("%s: only dissector: wireguard has these settings", key("wireguard"))
	}
	if l.Dissector != "quic" && !l.QUIC.isZero() {
		return nil, fmt.Errorf("%s: only dissector: quic has these settings", key("quic"))
	}
	switch l.Dissector {
	case "quic":
		return l.quicDissector(key, bs)
	case "flow", "":
		return session.Flow{}, nil
	case "noop":
		return session.Noop{}, nil
	case "openvpn":
		return &openvpn.Dissector{}, nil
	case "wireguard":
		cfg := wireguard.Config{DecryptRate: l.WireGuard.DecryptRate}
		if cfg.DecryptRate < 0 {
			return nil, fmt.Errorf("%s: %d is negative (0 means %d per second)", key("wireguard.decrypt_rate"), cfg.DecryptRate, wireguard.DefaultDecryptRate)
		}
		if path := l.WireGuard.PrivateKey; path != "" {
			k, err := wireguard.LoadPrivateKey(path)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", key("wireguard.private_key"), err)
			}
			cfg.PrivateKey = &k
		}
		d, err := wireguard.New(cfg)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key("wireguard"), err)
		}
		return d, nil
	}
	return nil, fmt.Errorf("%s: %q is not one of flow, noop, wireguard, openvpn, quic", key("dissector"), l.Dissector)
}

// parseAddress reads "ip:port" or "[ipv6]:port"; names are refused, since a
// listener binds one address and DNS has no place in that.
func parseAddress(s string) (netip.AddrPort, error) {
	if s == "" {
		return netip.AddrPort{}, errors.New("missing")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return netip.AddrPort{}, errors.New(ae.Err)
		}
		return netip.AddrPort{}, err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not an IP address", host)
	}
	if ip.Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("%q: zones are not supported", host)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q is not a number within 0..65535", port)
	}
	// One address, one spelling: an IPv4-mapped IPv6 address is the IPv4
	// address it maps, on which the socket binds anyway.
	return netip.AddrPortFrom(ip.Unmap(), uint16(n)), nil
}

// backends are a proxy listener's checked backends.
type backends struct {
	addrs []netip.AddrPort
	// weights are their weights, in the order of addrs.
	weights []int
	// sids are the backends' QUIC-LB server IDs, in the order of addrs, the
	// zero ServerID for a backend without one; nil when none has one.
	sids []quiclb.ServerID
}

// backends checks a proxy listener's backends: addresses, and server IDs
// only for dissector: quic.
func (l *listenerConfig) backends(key func(string) string) (backends, error) {
	var bs backends
	if len(l.Backends) == 0 {
		return bs, fmt.Errorf("%s: a proxy needs at least one backend", key("backends"))
	}
	seen := map[netip.AddrPort]int{}
	seenID := map[quiclb.ServerID]int{}
	for j, b := range l.Backends {
		bkey := func(k string) string { return key(fmt.Sprintf("backends[%d]%s", j, k)) }
		ap, err := parseAddress(b.Address)
		if err != nil {
			return bs, fmt.Errorf("%s: %w", bkey(""), err)
		}
		if ap.Port() == 0 || ap.Addr().IsUnspecified() {
			return bs, fmt.Errorf("%s: %s is not a backend address (needs a host and a port)", bkey(""), ap)
		}
		if k, dup := seen[ap]; dup {
			return bs, fmt.Errorf("%s: %s is already backends[%d]", bkey(""), ap, k)
		}
		seen[ap] = j
		bs.addrs = append(bs.addrs, ap)
		w := 1
		if b.Weight != nil {
			w = *b.Weight
		}
		if w < 0 || w > proxy.MaxWeight {
			return bs, fmt.Errorf("%s: %d is not within 0..%d (0 takes no new sessions, as a drained backend)", bkey(".weight"), w, proxy.MaxWeight)
		}
		bs.weights = append(bs.weights, w)
		if b.ServerID == nil {
			continue
		}
		if l.Dissector != "quic" {
			return bs, fmt.Errorf("%s: only dissector: quic routes by server IDs", bkey(".server_id"))
		}
		text, ok := b.ServerID.(string)
		if !ok {
			return bs, fmt.Errorf("%s: YAML read %v, not a string of hex digits; write server IDs in quotes (server_id: \"0102\")", bkey(".server_id"), b.ServerID)
		}
		id, err := quiclb.ParseServerID(text)
		if err != nil {
			return bs, fmt.Errorf("%s: %w", bkey(".server_id"), err)
		}
		if k, dup := seenID[id]; dup {
			return bs, fmt.Errorf("%s: %v is already the server ID of backends[%d]", bkey(".server_id"), id, k)
		}
		seenID[id] = j
		if bs.sids == nil {
			bs.sids = make([]quiclb.ServerID, len(l.Backends))
		}
		bs.sids[j] = id
	}
	if !slices.ContainsFunc(bs.weights, func(w int) bool { return w > 0 }) {
		return bs, fmt.Errorf("%s: every backend has weight 0: the listener could take no new session", key("backends"))
	}
	return bs, nil
}

// proxyHandler checks a proxy listener's balance policy and builds its
// handler for backends bs. A QUIC dissector d routes the proxy's new
// sessions too; a session.Tracker follows their protocol.
func (l *listenerConfig) proxyHandler(key func(string) string, limits proxyLimits, bs backends, d session.Dissector, fast *fastpath.Kind) (*proxy.Handler, error) {
	policy, err := proxy.ParsePolicy(l.Balance)
	if err != nil {
		return nil, fmt.Errorf("%s: %q is not one of maglev, least-sessions, round-robin", key("balance"), l.Balance)
	}
	cfg := proxy.Config{
		Backends: bs.addrs, Weights: bs.weights, Balance: policy, Sources: limits.sources, Sockets: limits.sockets, Probes: limits.probes,
		RecvBuffer: limits.recvBuffer, SendBuffer: limits.sendBuffer, ClientSource: l.Source == sourceClient,
	}
	if cfg.Check, cfg.Health, err = l.Health.check(key, l); err != nil {
		return nil, err
	}
	cfg.Tracker, _ = d.(session.Tracker)
	if cfg.Tracker != nil && limits.recovery != nil {
		if policy != proxy.PolicyMaglev {
			return nil, fmt.Errorf("%s: %s picks a new session's backend by what this process has seen, which another udpmux, or this one after a crash, cannot pick again: a client's handshake or control packet would land on another backend than its session's; use maglev, or set recovery.enabled: false",
				key("balance"), l.Balance)
		}
		cfg.Recovery = limits.recovery
	}
	if fast != nil {
		cfg.FastPath = &proxy.FastPath{Kind: *fast}
		if limits.fast.key == "" {
			limits.fast.key = key("fast_path")
		}
		limits.fast.paths = append(limits.fast.paths, cfg.FastPath)
	}
	if router, ok := d.(*quic.Dissector); ok {
		cfg.Router = router
		for _, id := range bs.sids {
			cfg.ServerIDs = append(cfg.ServerIDs, id.Bytes())
		}
	}
	h, err := proxy.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key("backends"), err)
	}
	return h, nil
}

// The values of listeners[].source.
const (
	sourceUdpmux = "udpmux"
	sourceClient = "client"
)

// canBindTransparent reports whether the process may send from its
// clients' addresses; tests replace it.
var canBindTransparent = udpsys.CanBindTransparent

// checkSource checks listeners[].source: "client" needs a proxy whose
// sessions are sessions (not dissector: noop), the capability that
// IP_TRANSPARENT needs, and backends of the family of every client the
// listener at addr takes, since a client can be the source of datagrams
// to a backend of its own family only.
func (l *listenerConfig) checkSource(key func(string) string, addr netip.AddrPort, bs backends) error {
	switch l.Source {
	case "", sourceUdpmux:
		return nil
	case sourceClient:
	default:
		return fmt.Errorf("%s: %q is not one of udpmux, client", key("source"), l.Source)
	}
	if l.Handler != "proxy" {
		return fmt.Errorf("%s: client: only the proxy handler sends to backends", key("source"))
	}
	if l.Dissector == "noop" {
		return fmt.Errorf("%s: client sends each session's datagrams from its client's address, and dissector: noop makes no sessions", key("source"))
	}
	ok, err := canBindTransparent()
	if err != nil {
		return fmt.Errorf("%s: client: %w", key("source"), err)
	}
	if !ok {
		return fmt.Errorf("%s: client sends from clients' addresses (IP_TRANSPARENT), which needs CAP_NET_ADMIN (or CAP_NET_RAW), and this process has neither in its effective set", key("source"))
	}
	if a := addr.Addr(); a.Is6() && a.IsUnspecified() {
		return fmt.Errorf("%s: client on %s, which takes IPv4 and IPv6 clients alike: a client can send only to backends of its own family; listen on an address of the backends' family", key("source"), addr)
	}
	for j, b := range bs.addrs {
		if b.Addr().Is4() != addr.Addr().Is4() {
			return fmt.Errorf("%s: %s: with source: client, a backend must be of the family of the clients of %s, which it is sent from", key(fmt.Sprintf("backends[%d]", j)), b, addr)
		}
	}
	return nil
}
