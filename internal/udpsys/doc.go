//go:build linux

// Package udpsys is udpmux's thin layer over the Linux UDP socket API: batches
// for recvmmsg and sendmmsg that decode addresses straight into netip values,
// control messages (packet info, receive-queue overflow), and socket setup with
// feature detection. Nothing here allocates per datagram.
package udpsys
