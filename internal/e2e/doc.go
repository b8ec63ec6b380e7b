// Package e2e holds end-to-end tests that run the udpmux daemon against real
// programs (OpenVPN servers and clients) in network namespaces built with
// internal/netlab. The tests need root, iproute2 and, for the OpenVPN tests,
// /usr/sbin/openvpn; they skip with a clear message otherwise.
//
// Run them with: go test -race -v ./internal/e2e
package e2e
