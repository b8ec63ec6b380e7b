//go:build linux

// Package mux is udpmux's engine: one event loop per core, each with its own
// socket in every listener's SO_REUSEPORT group, reading with recvmmsg and
// writing with sendmmsg, routing datagrams through a dissector and the shared
// flow table to their sessions' handlers (package session).
//
// It runs on Linux only: it is built on epoll, SO_REUSEPORT groups steered by
// SO_INCOMING_CPU, recvmmsg and sendmmsg, UDP segmentation offload and
// SCM_RIGHTS, and on other systems its files are excluded by a build
// constraint.
//
// The surface:
//
//   - Server, made by New from a Config with one ListenerConfig per served
//     address, runs with Serve; Sessions and Stats look at it from outside.
//   - Restarts: Server.HandOff gives a serving server, sockets, sessions and
//     all, to a successor process, which passes the Inheritance from Inherit
//     to New (see HandOff's example).
//   - ListenConfig, Listener and Conn give UDP TCP's shape for a program that
//     wants a net.Conn per peer rather than a session.Handler.
//   - Sockets from elsewhere: ListenerConfig.Sockets and ListenConfig.Sockets
//     serve bound sockets the caller has, such as those of systemd's socket
//     activation (ActivationSockets); Control sets options on the sockets
//     the server opens itself.
//
// Handlers run on the loops: a handler's callbacks for one loop never
// overlap, so a session's own state needs no lock, and the datagram a
// callback gets belongs to the loop (see package session).
package mux
