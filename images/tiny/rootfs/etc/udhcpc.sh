#!/bin/sh
# udhcpc's script for tiny.dhcp=1: apply the lease to the interface.
case $1 in
bound | renew)
	ip addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" dev "$interface"
	[ -n "$router" ] && ip route add default via "${router%% *}"
	;;
esac
exit 0
