#!/usr/bin/env bash
# lab.sh up|down|status — the three-namespace benchmark lab.
#
#   bc (client)  vc 198.18.0.1/24 (+ .11-.14 for flows beyond 50 000 ports)
#        |  veth
#   bs (server)  vs 198.18.0.2/24     vsb 198.19.0.1/24
#                                        |  veth
#   bb (backend)                      vb 198.19.0.2/24
#
# Receive steering (RPS) stands in for a NIC's interrupt affinity, so that each
# side's kernel receive path runs on a known core instead of on the sender's:
#   vc  (client rx)         -> CPU 0, beside the load generator (taskset -c 0)
#   vs  (server rx, client side)  -> CPU 1, the server's core (taskset -c 1)
#   vsb (server rx, backend side) -> CPU 1: all of the server's work on its core
#   vb  (backend rx)        -> CPU 0: with two cores, CPU 1 belongs to the
#        server under test alone; the backends share CPU 0 with the generator.
# Addresses are from 198.18.0.0/15 (RFC 2544) and exist only inside these
# namespaces. Idempotent: `up` rebuilds from scratch, `down` ignores absent parts.
set -euo pipefail

NS_C=bc NS_S=bs NS_B=bb

down() {
	for ns in "$NS_C" "$NS_S" "$NS_B"; do
		ip netns del "$ns" 2>/dev/null || true
	done
}

up() {
	down
	for ns in "$NS_C" "$NS_S" "$NS_B"; do
		ip netns add "$ns"
		ip -n "$ns" link set lo up
		# No IPv6 chatter (router solicitations, MLD) in the measured links.
		ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
	done
	ip link add vc netns "$NS_C" type veth peer name vs netns "$NS_S"
	ip link add vsb netns "$NS_S" type veth peer name vb netns "$NS_B"

	ip -n "$NS_C" addr add 198.18.0.1/24 dev vc
	for a in 11 12 13 14; do
		ip -n "$NS_C" addr add "198.18.0.$a/24" dev vc
	done
	ip -n "$NS_S" addr add 198.18.0.2/24 dev vs
	ip -n "$NS_S" addr add 198.19.0.1/24 dev vsb
	ip -n "$NS_B" addr add 198.19.0.2/24 dev vb
	for l in "$NS_C:vc" "$NS_S:vs" "$NS_S:vsb" "$NS_B:vb"; do
		ip -n "${l%%:*}" link set "${l#*:}" up
	done
	# The server is not a router (proxies terminate both legs); the routes only
	# let either end reach the far network through it when forwarding is on.
	ip -n "$NS_C" route add 198.19.0.0/24 via 198.18.0.2
	ip -n "$NS_B" route add 198.18.0.0/24 via 198.19.0.1

	rps "$NS_C" vc 1
	rps "$NS_S" vs 2
	rps "$NS_S" vsb 2
	rps "$NS_B" vb 1
	# Many flows need many local ports and descriptors on the client side.
	ip netns exec "$NS_C" sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
}

# rps NS DEV MASK: steer DEV's receive processing to the CPUs in hex MASK.
rps() {
	ip netns exec "$1" sh -c "echo $3 > /sys/class/net/$2/queues/rx-0/rps_cpus"
}

status() {
	for ns in "$NS_C" "$NS_S" "$NS_B"; do
		if ip netns list | grep -qw "$ns"; then
			echo "== $ns"
			ip -n "$ns" -br addr
			ip netns exec "$ns" sh -c 'for d in /sys/class/net/v*/queues/rx-0/rps_cpus; do echo "$d $(cat "$d")"; done'
		else
			echo "== $ns absent"
		fi
	done
}

[[ $EUID -eq 0 ]] || { echo "lab.sh: needs root" >&2; exit 1; }
case "${1:-}" in
up) up ;;
down) down ;;
status) status ;;
*) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
