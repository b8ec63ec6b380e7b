//go:build linux

// Package udpsys is udpmux's one door to the operating system: batches for
// recvmmsg and sendmmsg that decode addresses straight into netip values,
// control messages (packet info, receive-queue overflow), socket setup with
// feature detection, the Poller an event loop waits on (epoll, an eventfd
// to wake it, a timerfd that ticks), and the few calls on descriptors and
// CPUs the engine makes. Package mux reaches the kernel through here alone,
// one file per concern. Nothing here allocates per datagram.
package udpsys
