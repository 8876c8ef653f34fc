#!/bin/sh
# mdev helper: what udev's virtio rules do, /dev/virtio-ports/<name> -> ../vportNpM.
mkdir -p /dev/virtio-ports
case $ACTION in
remove)
	for l in /dev/virtio-ports/*; do
		[ "$(readlink "$l")" = "../$MDEV" ] && rm -f "$l"
	done
	;;
*)
	n=$(cat "/sys/class/virtio-ports/$MDEV/name" 2> /dev/null)
	[ -n "$n" ] && ln -sfn "../$MDEV" "/dev/virtio-ports/$n"
	;;
esac
exit 0
