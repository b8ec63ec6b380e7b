//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/mux"
)

// An upgrade is mux's handoff (Server.HandOff, mux.Inherit) over the control
// socket: a new udpmux dials it and asks the one answering to hand over,
// sending its config file, which the running one validates first. The
// control socket itself goes to the successor with the listeners, so that
// it answers udpmux status and the next upgrade.

// handoff hands the server to the successor on uc.
func (c *control) handoff(uc *net.UnixConn) {
	ctl, err := c.ln.File()
	if err != nil {
		c.log.Warn("handoff refused: control socket", "err", err)
		return
	}
	defer ctl.Close()
	resume := c.pauseAccepts()
	st, err := c.srv.HandOff(context.Background(), uc, mux.HandoffConfig{
		Timeout: c.cfg.handoffTimeout, DrainTimeout: c.cfg.drainTimeout, Files: []*os.File{ctl},
		Check: func(meta []byte) error {
			if _, err := parseConfig(meta); err != nil {
				return fmt.Errorf("successor's config: %v", err)
			}
			return nil
		},
	})
	resume(err == nil)
	if err == nil && c.ann != nil {
		// The successor's speaker takes the routes over.
		go func() {
			c.ann.handOver(successorDialDelay)
			close(c.handedOver)
		}()
	}
	if err == nil && st.Retained > 0 {
		// The successor answers on the control socket now; this process
		// serves the sessions it kept until they end, then exits.
		c.drained.Store(true)
		c.ln.Close()
	}
}

// handBackendState answers a successor's TypeBackendState on conn with the
// run-time backend state, and serves the handoff it asks for next on the
// same connection. Backend commands wait until that handoff has ended, so
// that what the successor took is what this process had to the last.
func (c *control) handBackendState(conn *handoff.Conn, uc *net.UnixConn) {
	c.adminMu.Lock()
	defer c.adminMu.Unlock()
	b, _ := json.Marshal(c.backendState())
	c.reply(conn, b)
	if typ, err := conn.PeekType(); err == nil && typ == handoff.TypeHello {
		c.handoff(uc)
	}
}

// takeOver asks the udpmux answering on the control socket to hand over.
// It returns nil and no error when nobody answers: then this process starts
// cold. Otherwise the Inheritance carries the predecessor's control socket,
// which inheritControl adopts, and this process's proxies have the
// predecessor's run-time backend state (drained backends, weights).
func takeOver(cfg *config, log *slog.Logger) (*mux.Inheritance, error) {
	conn, err := handoff.Dial(cfg.controlSocket, time.Second)
	if err != nil {
		return nil, nil
	}
	st, err := askBackendState(conn, cfg.handoffTimeout)
	if err != nil {
		// A predecessor of a version without run-time backend state hangs
		// up on the question: hand over without it.
		log.Warn("the predecessor gave no backend state (a version without it?): its drained backends and run-time weights are not kept", "err", err)
		conn.Close()
		if conn, err = handoff.Dial(cfg.controlSocket, time.Second); err != nil {
			return nil, fmt.Errorf("control socket %s: the predecessor hung up: %w", cfg.controlSocket, err)
		}
	} else {
		applyBackendState(cfg, st, log)
	}
	inh, err := mux.Inherit(context.Background(), conn.UnixConn(), mux.InheritConfig{Meta: cfg.text, Timeout: cfg.handoffTimeout})
	if err != nil {
		return nil, err
	}
	return inh, nil
}

// askBackendState asks the predecessor on conn for its run-time backend
// state, within timeout.
func askBackendState(conn *handoff.Conn, timeout time.Duration) (backendState, error) {
	var st backendState
	conn.SetDeadline(time.Now().Add(timeout))
	defer conn.SetDeadline(time.Time{})
	if err := conn.Send(handoff.TypeBackendState, nil, nil); err != nil {
		return st, err
	}
	var b bytes.Buffer
	if err := readReply(conn, &b); err != nil {
		return st, err
	}
	if err := json.Unmarshal(b.Bytes(), &st); err != nil {
		return st, fmt.Errorf("backend state: %w", err)
	}
	return st, nil
}

// inheritControl adopts the control socket a predecessor handed over.
func inheritControl(inh *mux.Inheritance) (*net.UnixListener, error) {
	files := inh.Files()
	if len(files) != 1 {
		return nil, fmt.Errorf("the predecessor sent %d files, want its control socket", len(files))
	}
	defer files[0].Close()
	l, err := net.FileListener(files[0])
	if err != nil {
		return nil, fmt.Errorf("inherited control socket: %w", err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("inherited control socket is a %T", l)
	}
	ul.SetUnlinkOnClose(false)
	return ul, nil
}
