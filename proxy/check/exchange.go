package check

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// Exchange sends the attempt's request on conn, a socket connected to the
// backend, and reads until a datagram passes the attempt's Check (it
// returns nil) or deadline passes. buf receives the datagrams; a longer
// one is cut and fails Check.
//
// Neither a refusal (ICMP port unreachable, which anyone can forge) nor a
// datagram that fails Check ends the attempt early: only the backend's
// answer does, or the deadline. The error then says what was seen, most
// telling first: a datagram that was not the answer, a refusal, or
// nothing (ErrTimeout).
func Exchange(conn *net.UDPConn, a Attempt, deadline time.Time, buf []byte) error {
	if err := conn.SetDeadline(deadline); err != nil {
		return fmt.Errorf("check: %w", err)
	}
	// conn is the attempt's own: no earlier datagram's refusal can be
	// pending on it.
	if _, err := conn.Write(a.Request()); err != nil {
		return fmt.Errorf("check: send: %w", err)
	}
	var refused bool
	var wrong error
	for {
		n, err := conn.Read(buf)
		switch {
		case err == nil:
			if err := a.Check(buf[:n]); err == nil {
				return nil
			} else {
				wrong = err
			}
		case errors.Is(err, syscall.ECONNREFUSED):
			refused = true
		case errors.Is(err, os.ErrDeadlineExceeded):
			switch {
			case wrong != nil:
				return wrong
			case refused:
				return ErrRefused
			}
			return ErrTimeout
		default:
			return fmt.Errorf("check: receive: %w", err)
		}
	}
}

// Errors of Exchange when no answer came.
var (
	// ErrTimeout: nothing came back before the deadline.
	ErrTimeout = errors.New("check: no answer (timeout)")
	// ErrRefused: the request was refused (ICMP port unreachable) and
	// nothing else came back before the deadline.
	ErrRefused = errors.New("check: refused (ICMP port unreachable) and no answer")
)
