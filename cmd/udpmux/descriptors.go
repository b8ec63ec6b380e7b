//go:build linux

package main

import (
	"fmt"
	"log/slog"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/proxy"
)

// Descriptors udpmux needs besides the proxy's upstream sockets, which the
// socket budget bounds, and its probe sockets, which sessions.max_probe_sockets
// bounds, and its health probe sockets (one per checked backend): the
// standard streams, the control socket and a few
// of its connections, the metrics listener and its connections, and the
// descriptors of one handoff message in flight; per loop its epoll and
// eventfd, its socket of each listener and, during a handoff, a relay pair.
const (
	fixedDescriptors   = 64 + handoff.MaxFDsPerMessage
	perLoopDescriptors = 4
)

// reserveDescriptors makes the upstream, probe and recovery socket budgets
// fit the process's descriptor limit (RLIMIT_NOFILE, which the Go runtime
// raises to the hard limit), so that opening an upstream socket can never
// take the last descriptors from the control socket or a handoff. Probes
// and recoveries get at most a quarter each of what udpmux's own needs
// leave. An explicit
// sessions.max_upstream_sockets that does not fit is an error; without one
// the budget is what the limit leaves, at most sessions.max.
func reserveDescriptors(cfg *config, workers int, log *slog.Logger) error {
	var budget *proxy.Budget
	checks := 0 // health probe sockets, at most one per checked backend
	for _, lc := range cfg.mux.Listeners {
		if h, ok := lc.Handler.(*proxy.Handler); ok {
			budget = cfg.limits.sockets
			checks += h.CheckSockets()
		}
	}
	if budget == nil {
		return nil // no proxy listener: no upstream sockets
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Errorf("descriptor limit: %w", err)
	}
	limit := int(min(rl.Cur, 1<<31-1))
	reserve := fixedDescriptors + workers*(perLoopDescriptors+len(cfg.mux.Listeners)) + checks
	// Probes and recoveries take at most a quarter each of what is left.
	quarter := max((limit-reserve)/4, 1)
	bounded := map[string]*proxy.Budget{"sessions.max_probe_sockets": cfg.limits.probes}
	if r := cfg.limits.recovery; r != nil {
		bounded["recovery.max_sockets"] = r.Sockets
	}
	for key, b := range bounded {
		if b.Max() > quarter {
			b.SetMax(quarter)
			log.Info("sockets bounded by the descriptor limit", key, quarter, "rlimit_nofile", limit)
		}
		reserve += b.Max()
	}
	left := limit - reserve
	if n := cfg.upstreamSockets; n > 0 {
		if n > left {
			return fmt.Errorf("sessions.max_upstream_sockets: %d upstream sockets and the %d descriptors udpmux needs besides exceed the descriptor limit of %d (RLIMIT_NOFILE): raise the limit (LimitNOFILE= in the systemd unit, ulimit -n) or lower the key to %d",
				n, reserve, limit, max(left, 0))
		}
		return nil
	}
	if left < 1 {
		return fmt.Errorf("descriptor limit: %d (RLIMIT_NOFILE) leaves no room for upstream sockets beside the %d descriptors udpmux needs; raise it (LimitNOFILE= in the systemd unit, ulimit -n)",
			limit, reserve)
	}
	if left < cfg.mux.MaxSessions {
		budget.SetMax(left)
		log.Info("upstream sockets bounded by the descriptor limit", "max_upstream_sockets", left,
			"rlimit_nofile", limit, "reserved", reserve, "sessions_max", cfg.mux.MaxSessions)
	}
	return nil
}
