package check

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Nonce is what a generic probe's request and expectations write for the
// attempt's random nonce: 16 hex digits, new for each attempt.
const Nonce = "{nonce}"

// GenericConfig configures a generic probe.
type GenericConfig struct {
	// Send is the request; each Nonce in it is replaced by the attempt's
	// nonce. It must not be empty.
	Send string
	// Prefix, if not empty, is what the answer must begin with; Nonce in
	// it stands for the attempt's nonce.
	Prefix string
	// Regexp, if not empty, is a regular expression (Go's syntax) the
	// answer must match; Nonce in it stands for the attempt's nonce. With
	// neither Prefix nor Regexp, any datagram from the backend is its
	// answer.
	Regexp string
}

// generic is a generic probe.
type generic struct {
	cfg GenericConfig
	// re is Regexp compiled, when it names no nonce.
	re *regexp.Regexp
}

// NewGeneric returns a probe that sends cfg.Send and accepts answers as
// cfg says. Only an answer that must echo the request's nonce proves that
// the backend read the request; without one, an attacker who guesses the
// probe's port (one of some 28 000) within the timeout can answer for the
// backend.
func NewGeneric(cfg GenericConfig) (Probe, error) {
	if cfg.Send == "" {
		return nil, fmt.Errorf("check: generic probe: nothing to send")
	}
	g := &generic{cfg: cfg}
	// Compiled once with a sample nonce, so that a bad expression is
	// refused here rather than at each attempt.
	re, err := regexp.Compile(strings.ReplaceAll(cfg.Regexp, Nonce, "0123456789abcdef"))
	if err != nil {
		return nil, fmt.Errorf("check: generic probe: %w", err)
	}
	if !strings.Contains(cfg.Regexp, Nonce) {
		g.re = re
	}
	return g, nil
}

type genericAttempt struct {
	req, prefix []byte
	re          *regexp.Regexp
}

// Start makes the request with a fresh nonce, and the expectations that
// name it.
func (g *generic) Start(time.Time) (Attempt, error) {
	var n [8]byte
	random(n[:])
	nonce := hex.EncodeToString(n[:])
	a := &genericAttempt{
		req:    []byte(strings.ReplaceAll(g.cfg.Send, Nonce, nonce)),
		prefix: []byte(strings.ReplaceAll(g.cfg.Prefix, Nonce, nonce)),
		re:     g.re,
	}
	if g.cfg.Regexp != "" && a.re == nil {
		var err error
		if a.re, err = regexp.Compile(strings.ReplaceAll(g.cfg.Regexp, Nonce, nonce)); err != nil {
			return nil, fmt.Errorf("check: generic probe: %w", err)
		}
	}
	return a, nil
}

func (a *genericAttempt) Request() []byte { return a.req }

// Check accepts an answer with the expected prefix that matches the
// expected expression.
func (a *genericAttempt) Check(p []byte) error {
	if !bytes.HasPrefix(p, a.prefix) {
		return notAnswer("generic: does not begin with the expected prefix")
	}
	if a.re != nil && a.re.String() != "" && !a.re.Match(p) {
		return notAnswer("generic: does not match the expected expression")
	}
	return nil
}
