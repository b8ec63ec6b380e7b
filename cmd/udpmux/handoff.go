//go:build linux

package main

import (
	"context"
	"fmt"
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
	st, err := c.srv.HandOff(context.Background(), uc, mux.HandoffConfig{
		Timeout: c.cfg.handoffTimeout, DrainTimeout: c.cfg.drainTimeout, Files: []*os.File{ctl},
		Check: func(meta []byte) error {
			if _, err := parseConfig(meta); err != nil {
				return fmt.Errorf("successor's config: %v", err)
			}
			return nil
		},
	})
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

// takeOver asks the udpmux answering on the control socket to hand over.
// It returns nil and no error when nobody answers: then this process starts
// cold. Otherwise the Inheritance carries the predecessor's control socket,
// which inheritControl adopts.
func takeOver(cfg *config) (*mux.Inheritance, error) {
	conn, err := handoff.Dial(cfg.controlSocket, time.Second)
	if err != nil {
		return nil, nil
	}
	inh, err := mux.Inherit(context.Background(), conn.UnixConn(), mux.InheritConfig{Meta: cfg.text, Timeout: cfg.handoffTimeout})
	if err != nil {
		return nil, err
	}
	return inh, nil
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
