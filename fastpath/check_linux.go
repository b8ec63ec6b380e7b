package fastpath

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// Check reports why this process, in its network namespace, cannot run
// the fast path: it lacks CAP_NET_ADMIN, the kernel has no nf_tables
// (CONFIG_NF_TABLES, the nf_tables module), or IPv4 forwarding is off
// (net.ipv4.ip_forward: the kernel routes an offloaded datagram on to its
// backend or client, as a router). It changes nothing.
func Check() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("fastpath: capabilities: %w", err)
	}
	if data[0].Effective&(1<<unix.CAP_NET_ADMIN) == 0 {
		return errors.New("needs CAP_NET_ADMIN (run as root, or grant the capability: AmbientCapabilities=CAP_NET_ADMIN in the systemd unit)")
	}
	cc, err := nftables.New()
	if err != nil {
		return fmt.Errorf("needs nf_tables in the kernel: %w", err)
	}
	if _, err := cc.ListTablesOfFamily(nftables.TableFamilyIPv4); err != nil {
		return fmt.Errorf("needs nf_tables in the kernel (CONFIG_NF_TABLES, CONFIG_NF_TABLES_IPV4; modprobe nf_tables): %w", err)
	}
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return fmt.Errorf("fastpath: %w", err)
	}
	if strings.TrimSpace(string(b)) != "1" {
		return errors.New("needs IPv4 forwarding: the kernel routes offloaded datagrams on (sysctl net.ipv4.ip_forward=1)")
	}
	return nil
}
