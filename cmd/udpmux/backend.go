//go:build linux

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/udpmux/udpmux/proxy"
	"github.com/udpmux/udpmux/session"
)

// `udpmux backend drain|enable|weight` changes a proxy backend at run time
// over the control socket: drained, a backend takes no new session and
// keeps its live ones until they idle out (or, with -sessions close, ends
// them); its weight sets its share of new sessions. An upgrade keeps what
// was changed: the successor asks its predecessor for it on the handoff's
// connection, before its Hello, and the predecessor holds every backend
// command until that handoff has ended (see takeBackendState), so that
// none is lost between the two.

// backendActions are the actions of `udpmux backend`.
var backendActions = []string{"drain", "enable", "weight"}

// backendRequest is a TypeBackend message's payload, JSON.
type backendRequest struct {
	Action   string `json:"action"` // one of backendActions
	Listener string `json:"listener"`
	Backend  string `json:"backend"`
	// Weight is the new weight, for weight.
	Weight int `json:"weight,omitempty"`
	// CloseSessions ends the backend's sessions, for drain.
	CloseSessions bool `json:"close_sessions,omitempty"`
}

// parseBackendArgs reads `udpmux backend ACTION [flags] LISTENER BACKEND
// [WEIGHT]`'s action and positional arguments; sessions is -sessions'
// value.
func parseBackendArgs(action string, args []string, sessions string) (backendRequest, error) {
	req := backendRequest{Action: action}
	if !slices.Contains(backendActions, action) {
		return req, fmt.Errorf("ACTION %q is not one of %s", action, strings.Join(backendActions, ", "))
	}
	want := 2
	if action == "weight" {
		want = 3
	}
	if len(args) != want {
		return req, fmt.Errorf("%s takes %s, got %d arguments", action, backendUsage(action), len(args))
	}
	req.Listener, req.Backend = args[0], args[1]
	if _, err := parseAddress(req.Backend); err != nil {
		return req, fmt.Errorf("BACKEND %q: %v", req.Backend, err)
	}
	if action == "weight" {
		w, err := strconv.Atoi(args[2])
		if err != nil || w < 0 || w > proxy.MaxWeight {
			return req, fmt.Errorf("WEIGHT %q is not a number within 0..%d", args[2], proxy.MaxWeight)
		}
		req.Weight = w
	}
	switch {
	case sessions == "close" && action != "drain":
		return req, fmt.Errorf("-sessions close goes with drain only")
	case sessions == "close":
		req.CloseSessions = true
	case sessions != "keep":
		return req, fmt.Errorf("-sessions %q is not keep or close", sessions)
	}
	return req, nil
}

// backendUsage returns an action's positional arguments.
func backendUsage(action string) string {
	if action == "weight" {
		return "LISTENER BACKEND WEIGHT"
	}
	return "LISTENER BACKEND"
}

// check refuses a request that cfg, the config of the udpmux it goes to,
// cannot serve, naming the argument.
func (req backendRequest) check(cfg *config) error {
	_, err := cfg.proxyBackend(req.Listener, req.Backend)
	return err
}

// proxyBackend finds the proxy listener name and its backend addr in cfg.
func (cfg *config) proxyBackend(name, addr string) (*proxy.Handler, error) {
	var names []string
	for i, lc := range cfg.mux.Listeners {
		h, ok := lc.Handler.(*proxy.Handler)
		if ok {
			names = append(names, lc.Name)
		}
		if lc.Name != name {
			continue
		}
		if !ok {
			return nil, fmt.Errorf("LISTENER %q is not a proxy: it has no backends", name)
		}
		ap, err := parseAddress(addr)
		if err != nil {
			return nil, fmt.Errorf("BACKEND %q: %v", addr, err)
		}
		if !slices.Contains(cfg.listeners[i].checked.addrs, ap) {
			return nil, fmt.Errorf("BACKEND %s is not one of listener %s's backends (%s)", ap, name, joinAddrs(cfg.listeners[i].checked.addrs))
		}
		return h, nil
	}
	return nil, fmt.Errorf("LISTENER %q: no such proxy listener (the proxies are: %s)", name, strings.Join(names, ", "))
}

func joinAddrs(addrs []netip.AddrPort) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

// backend serves a TypeBackend request and returns the reply, or why it
// failed.
func (c *control) backend(payload []byte, pid int32) ([]byte, error) {
	var req backendRequest
	if err := json.Unmarshal(payload, &req); err != nil {
		return nil, fmt.Errorf("unreadable request: %w", err)
	}
	c.adminMu.Lock()
	defer c.adminMu.Unlock()
	if c.handedOff.Load() {
		// The successor took the state as it was before this request.
		return nil, errors.New("this udpmux has just handed over to its successor (an upgrade): run the command again")
	}
	h, err := c.cfg.proxyBackend(req.Listener, req.Backend)
	if err != nil {
		return nil, err
	}
	addr, _ := parseAddress(req.Backend)
	log := c.log.With("listener", req.Listener, "backend", addr, "peer_pid", pid)
	var b []byte
	switch req.Action {
	case "drain":
		if changed, _ := h.Drain(addr); changed {
			log.Info("backend drained: no new sessions")
		}
		if req.CloseSessions {
			n := c.closeSessions(h, addr)
			log.Info("backend drained: its sessions closed", "sessions", n)
			b = fmt.Appendf(b, "listener %s: backend %s drained: no new sessions; %d sessions closed\n", req.Listener, addr, n)
		} else {
			b = fmt.Appendf(b, "listener %s: backend %s drained: no new sessions; its %d live sessions stay until they idle out\n",
				req.Listener, addr, backendStatus(h, addr).Sessions)
		}
	case "enable":
		if changed, _ := h.Enable(addr); changed {
			log.Info("backend enabled: takes new sessions again")
		}
		st := backendStatus(h, addr)
		b = fmt.Appendf(b, "listener %s: backend %s enabled (weight %d)", req.Listener, addr, st.Weight)
		switch {
		case st.Weight == 0:
			b = append(b, ": weight 0 takes no new sessions; set a weight with udpmux backend weight"...)
		case !st.Healthy:
			b = append(b, ": down (refused its sessions' datagrams); new sessions once its back-off ends"...)
		}
		b = append(b, '\n')
	case "weight":
		if err := h.SetWeight(addr, req.Weight); err != nil {
			return nil, err
		}
		log.Info("backend weight set", "weight", req.Weight)
		b = fmt.Appendf(b, "listener %s: backend %s weight %d\n", req.Listener, addr, req.Weight)
	default:
		return nil, fmt.Errorf("ACTION %q is not one of %s", req.Action, strings.Join(backendActions, ", "))
	}
	return b, nil
}

// backendStatus returns the status of h's backend addr.
func backendStatus(h *proxy.Handler, addr netip.AddrPort) proxy.BackendStatus {
	for _, st := range h.Stats().Backends {
		if st.Addr == addr {
			return st
		}
	}
	return proxy.BackendStatus{}
}

// closeSessions ends the sessions of h on backend addr and returns how many
// it ended. A tunnel's client goes on sending: its next datagram opens a
// session anew, or recovers it, on the backend that proves it has the
// tunnel, which a drained backend still does until it forgets the client.
func (c *control) closeSessions(h *proxy.Handler, addr netip.AddrPort) int {
	n := 0
	c.srv.Sessions(func(s session.Session) bool {
		if info, ok := h.Session(s); ok && info.Backend == addr {
			s.Close()
			n++
		}
		return true
	})
	return n
}

// backendState is the run-time state of a process's proxy backends that
// differs from its config file, by listener name: what a successor takes
// over (TypeBackendState).
type backendState struct {
	Listeners map[string][]backendChange `json:"listeners"`
}

// backendChange is one backend's run-time state.
type backendChange struct {
	Address string `json:"address"`
	Drained bool   `json:"drained,omitempty"`
	Weight  int    `json:"weight"`
	// ConfigWeight is the weight the config file gave: a successor whose
	// file gives another has been given a new weight on purpose, which
	// wins over the one set at run time.
	ConfigWeight int `json:"config_weight"`
}

// backendState returns the run-time state to hand to a successor.
func (c *control) backendState() backendState {
	st := backendState{Listeners: map[string][]backendChange{}}
	for i, lc := range c.cfg.mux.Listeners {
		h, ok := lc.Handler.(*proxy.Handler)
		if !ok {
			continue
		}
		checked := c.cfg.listeners[i].checked
		for j, b := range h.Stats().Backends[:len(checked.addrs)] { // retired ones travel with their sessions
			if b.Drained || b.Weight != checked.weights[j] {
				st.Listeners[lc.Name] = append(st.Listeners[lc.Name], backendChange{
					Address: b.Addr.String(), Drained: b.Drained, Weight: b.Weight, ConfigWeight: checked.weights[j]})
			}
		}
	}
	return st
}

// applyBackendState gives cfg's proxies the run-time state a predecessor
// had: its drained backends stay drained, and a weight set at run time
// stays unless cfg's file changed that backend's weight. A backend or
// listener cfg no longer has is passed over.
func applyBackendState(cfg *config, st backendState, log *slog.Logger) {
	for name, changes := range st.Listeners {
		for _, ch := range changes {
			h, err := cfg.proxyBackend(name, ch.Address)
			if err != nil {
				log.Info("predecessor's backend state passed over: no longer configured", "listener", name, "backend", ch.Address)
				continue
			}
			addr, _ := parseAddress(ch.Address)
			if ch.Drained {
				h.Drain(addr)
				log.Info("backend stays drained, as the predecessor had it", "listener", name, "backend", addr)
			}
			if ch.Weight == ch.ConfigWeight {
				continue
			}
			if w := cfg.configWeight(name, addr); w != ch.ConfigWeight {
				log.Info("the config file changed the weight the predecessor had set at run time: the file's holds",
					"listener", name, "backend", addr, "weight", w, "run_time_weight", ch.Weight)
				continue
			}
			if err := h.SetWeight(addr, ch.Weight); err == nil {
				log.Info("backend keeps the weight set at run time", "listener", name, "backend", addr, "weight", ch.Weight)
			}
		}
	}
}

// configWeight returns the weight cfg's file gives backend addr of
// listener name.
func (cfg *config) configWeight(name string, addr netip.AddrPort) int {
	for i, lc := range cfg.mux.Listeners {
		if lc.Name == name {
			b := cfg.listeners[i].checked
			if j := slices.Index(b.addrs, addr); j >= 0 {
				return b.weights[j]
			}
		}
	}
	return -1
}
