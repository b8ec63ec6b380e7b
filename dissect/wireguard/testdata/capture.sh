#!/bin/sh
# Records capture.pcap: the UDP traffic between two wireguard-go processes,
# a server and a client, each in a network namespace of its own, joined by a
# veth pair (198.18.90.0/24; tunnel addresses 198.19.90.0/24). Nothing leaves
# the two namespaces. Needs root, wireguard-go, wireguard-tools (wg),
# iproute2 and tcpdump (apt-get install -y wireguard-go wireguard-tools
# tcpdump). Run it from anywhere; it writes next to itself:
#
#	sudo sh dissect/wireguard/testdata/capture.sh
#
# The keys are throwaway keys made for this capture and kept here, so that
# the test can decrypt it: server.key, client.key (and their .pub). The
# script makes them with `wg genkey` only if they are missing.
#
# What it records, in order (capture.txt lists the datagrams):
#  1. client (port 40001) pings the server: initiation, response, transport;
#  2. the server restarts, knowing the client's endpoint, and pings the
#     client: the server initiates, the client responds;
#  3. the client moves to port 40002 (as NAT rebinding would) and pings on
#     the session it has, with persistent keepalives for a while;
#  4. the client restarts on port 40002 and pings: a new initiation with
#     the same static key from the new port.
set -eu

dir=$(cd "$(dirname "$0")" && pwd)
cd "$dir"

tag=udpmux-wgcap-$$
ns_s=$tag-s
ns_c=$tag-c
if_s=wgcs$$ # interface names: the control sockets share /var/run/wireguard
if_c=wgcc$$
veth_s=vwgcs$$
veth_c=vwgcc$$
addr_s=198.18.90.1
addr_c=198.18.90.2
tun_s=198.19.90.1
tun_c=198.19.90.2
port_s=51820
port_c=40001
port_c2=40002

pids=""
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	for p in $pids; do wait "$p" 2>/dev/null || true; done
	ip netns del "$ns_s" 2>/dev/null || true
	ip netns del "$ns_c" 2>/dev/null || true
	rm -f "/var/run/wireguard/$if_s.sock" "/var/run/wireguard/$if_c.sock"
}
trap cleanup EXIT INT TERM

umask 077
for k in server client; do
	if [ ! -s $k.key ]; then wg genkey >$k.key; fi
	wg pubkey <$k.key >$k.pub
done
chmod 600 server.key client.key
chmod 644 server.pub client.pub

ip netns add "$ns_s"
ip netns add "$ns_c"
ip link add "$veth_s" netns "$ns_s" type veth peer name "$veth_c" netns "$ns_c"
ip -n "$ns_s" addr add $addr_s/24 dev "$veth_s"
ip -n "$ns_c" addr add $addr_c/24 dev "$veth_c"
for ns in "$ns_s" "$ns_c"; do ip -n "$ns" link set lo up; done
ip -n "$ns_s" link set "$veth_s" up
ip -n "$ns_c" link set "$veth_c" up

rm -f capture.pcap
ip netns exec "$ns_s" tcpdump -q -i "$veth_s" -U -w capture.pcap "udp port $port_s" 2>/dev/null &
tcpdump_pid=$!
pids="$tcpdump_pid"

# wg_start NS IF: starts wireguard-go in NS and waits for its socket; sets $wg_pid.
wg_start() {
	ip netns exec "$1" env WG_PROCESS_FOREGROUND=1 wireguard-go "$2" >/dev/null 2>&1 &
	wg_pid=$!
	pids="$pids $wg_pid"
	i=0
	while [ ! -S "/var/run/wireguard/$2.sock" ]; do
		i=$((i + 1))
		[ $i -lt 100 ] || { echo "wireguard-go $2 did not start" >&2; exit 1; }
		sleep 0.05
	done
}

# wg_stop PID IF: stops a wireguard-go and waits for it to remove its socket.
wg_stop() {
	kill "$1"
	wait "$1" 2>/dev/null || true
	rm -f "/var/run/wireguard/$2.sock"
}

server_up() { # $1: extra peer options
	wg_start "$ns_s" "$if_s"
	server_pid=$wg_pid
	ip netns exec "$ns_s" wg set "$if_s" private-key server.key listen-port $port_s \
		peer "$(cat client.pub)" allowed-ips $tun_c/32 $1
	ip -n "$ns_s" addr add $tun_s/24 dev "$if_s"
	ip -n "$ns_s" link set "$if_s" up
}

client_up() { # $1: listen port
	wg_start "$ns_c" "$if_c"
	client_pid=$wg_pid
	ip netns exec "$ns_c" wg set "$if_c" private-key client.key listen-port "$1" \
		peer "$(cat server.pub)" allowed-ips $tun_s/32 endpoint $addr_s:$port_s
	ip -n "$ns_c" addr add $tun_c/24 dev "$if_c"
	ip -n "$ns_c" link set "$if_c" up
}

sleep 0.5 # let tcpdump start

# 1. The client initiates.
server_up ""
client_up $port_c
ip netns exec "$ns_c" ping -q -c 3 -i 0.2 -W 2 $tun_s >/dev/null

# 2. The server restarts and initiates.
wg_stop "$server_pid" "$if_s"
server_up "endpoint $addr_c:$port_c"
ip netns exec "$ns_s" ping -q -c 3 -i 0.2 -W 2 $tun_c >/dev/null

# 3. The client's port changes under its session.
ip netns exec "$ns_c" wg set "$if_c" listen-port $port_c2
ip netns exec "$ns_c" ping -q -c 2 -i 0.2 -W 2 $tun_s >/dev/null
ip netns exec "$ns_c" wg set "$if_c" peer "$(cat server.pub)" persistent-keepalive 1
sleep 2.5
ip netns exec "$ns_c" wg set "$if_c" peer "$(cat server.pub)" persistent-keepalive 0

# 4. The client restarts on its new port and initiates again.
wg_stop "$client_pid" "$if_c"
client_up $port_c2
ip netns exec "$ns_c" ping -q -c 2 -i 0.2 -W 2 $tun_s >/dev/null

sleep 0.5
kill -INT "$tcpdump_pid"
wait "$tcpdump_pid" 2>/dev/null || true
chmod 644 capture.pcap
tcpdump -nr capture.pcap 2>/dev/null | sed 's/^[0-9:.]* //' >capture.txt
chmod 644 capture.txt
echo "capture.pcap: $(wc -l <capture.txt) datagrams" >&2
