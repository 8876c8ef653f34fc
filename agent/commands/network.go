package commands

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/qgakit/qgakit/agent/dispatch"
	"github.com/qgakit/qgakit/agent/internal/errtext"
	"github.com/qgakit/qgakit/agent/protocol"
)

// networkInterface is GuestNetworkInterface.
type networkInterface struct {
	Name            string       `json:"name"`
	HardwareAddress string       `json:"hardware-address,omitempty"`
	IPAddresses     []ipAddress  `json:"ip-addresses,omitempty"`
	Statistics      *networkStat `json:"statistics,omitempty"`
}

// ipAddress is GuestIpAddress.
type ipAddress struct {
	IPAddress string `json:"ip-address"`
	Type      string `json:"ip-address-type"`
	Prefix    int64  `json:"prefix"`
}

// networkStat is GuestNetworkInterfaceStat, from /proc/net/dev.
type networkStat struct {
	RxBytes   uint64 `json:"rx-bytes"`
	RxPackets uint64 `json:"rx-packets"`
	RxErrs    uint64 `json:"rx-errs"`
	RxDropped uint64 `json:"rx-dropped"`
	TxBytes   uint64 `json:"tx-bytes"`
	TxPackets uint64 `json:"tx-packets"`
	TxErrs    uint64 `json:"tx-errs"`
	TxDropped uint64 `json:"tx-dropped"`
}

const procNetDev = "/proc/net/dev"

func init() {
	groups = append(groups, func(d *dispatch.Dispatcher, env *Env) {
		d.Register("guest-network-get-interfaces", func(ctx context.Context, args dispatch.Args) (any, error) {
			return guestNetworkGetInterfaces(env)
		})
	})
}

// ifaddr is one entry of getifaddrs(3): a link (no address) or one address of a link.
type ifaddr struct {
	name   string
	addr   netip.Addr // invalid for links and for addresses of other families
	prefix int
}

// guestNetworkGetInterfaces follows the reference over getifaddrs: one interface per name in
// order of first appearance (links in kernel order, then IPv4 alias labels), addresses in
// getifaddrs order, the MAC from SIOCGIFHWADDR (none when that fails), and statistics only
// for interfaces with at least one address.
func guestNetworkGetInterfaces(env *Env) ([]networkInterface, error) {
	entries, err := getifaddrs()
	if err != nil {
		return nil, protocol.Errorf("getifaddrs failed: %s", errtext.Strerror(err))
	}
	ifaces := []networkInterface{}
	index := map[string]int{}
	hwSock := -1
	defer func() {
		if hwSock >= 0 {
			unix.Close(hwSock)
		}
	}()
	for _, e := range entries {
		i, ok := index[e.name]
		if !ok {
			i = len(ifaces)
			index[e.name] = i
			ifaces = append(ifaces, networkInterface{Name: e.name})
		}
		info := &ifaces[i]
		if info.HardwareAddress == "" {
			if hwSock < 0 {
				if hwSock, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
					return nil, protocol.Errorf("failed to create socket: %s", errtext.Strerror(err))
				}
			}
			info.HardwareAddress = hardwareAddress(hwSock, e.name)
		}
		if !e.addr.IsValid() {
			continue
		}
		typ := "ipv4"
		if e.addr.Is6() {
			typ = "ipv6"
		}
		info.IPAddresses = append(info.IPAddresses, ipAddress{IPAddress: inetNtop(e.addr), Type: typ, Prefix: int64(e.prefix)})
		if info.Statistics == nil {
			info.Statistics = networkStats(env, info.Name)
		}
	}
	return ifaces, nil
}

// ifreqHwaddr is struct ifreq with the ifr_hwaddr member of its union.
type ifreqHwaddr struct {
	Name   [unix.IFNAMSIZ]byte
	Family uint16
	Data   [14]byte
	_      [8]byte
}

// hardwareAddress returns the MAC as the reference prints it, or "" when the kernel has none
// to give (which the reference only logs).
func hardwareAddress(sock int, name string) string {
	var req ifreqHwaddr
	copy(req.Name[:unix.IFNAMSIZ-1], name)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(sock), unix.SIOCGIFHWADDR, uintptr(unsafe.Pointer(&req))); errno != 0 {
		return ""
	}
	d := req.Data
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", d[0], d[1], d[2], d[3], d[4], d[5])
}

// networkStats reads the interface's counters from /proc/net/dev, or nil when it is not
// listed there (an alias label such as eth0:1, or a missing /proc).
func networkStats(env *Env, name string) *networkStat {
	lines, err := readLines(hostPath(env, procNetDev))
	if err != nil {
		return nil
	}
	for _, line := range lines {
		line = strings.TrimLeft(line, " \t\n\v\f\r")
		before, after, ok := strings.Cut(line, ":")
		if !ok || before != name {
			continue
		}
		f := strings.Fields(after)
		if len(f) < 16 {
			continue // the reference needs all 16 counters and tries the next line
		}
		v := make([]uint64, 16)
		good := true
		for i := range v {
			if v[i], ok = parseCounter(f[i]); !ok {
				good = false
				break
			}
		}
		if !good {
			continue
		}
		return &networkStat{
			RxBytes: v[0], RxPackets: v[1], RxErrs: v[2], RxDropped: v[3],
			TxBytes: v[8], TxPackets: v[9], TxErrs: v[10], TxDropped: v[11],
		}
	}
	return nil
}

// parseCounter reads a counter as the reference's %lld does: values past the int64 range
// saturate.
func parseCounter(s string) (uint64, bool) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			if strings.HasPrefix(s, "-") {
				return uint64(1) << 63, true // LLONG_MIN stored into a uint64
			}
			return math.MaxInt64, true
		}
		return 0, false
	}
	return uint64(n), true
}

// getifaddrs does what glibc's getifaddrs does with the kernel's netlink dumps: every link
// (RTM_GETLINK, in kernel order), then every address (RTM_GETADDR: IPv4, then IPv6). An
// address is named by its IFA_LABEL when it has one (IPv4 aliases, "eth0:1"), by its link
// otherwise; it is IFA_LOCAL when present (the peer is IFA_ADDRESS on point-to-point links),
// IFA_ADDRESS otherwise.
func getifaddrs() ([]ifaddr, error) {
	linkRIB, err := syscall.NetlinkRIB(syscall.RTM_GETLINK, syscall.AF_UNSPEC)
	if err != nil {
		return nil, err
	}
	linkMsgs, err := syscall.ParseNetlinkMessage(linkRIB)
	if err != nil {
		return nil, err
	}
	var entries []ifaddr
	names := map[int32]string{}
	for _, m := range linkMsgs {
		if m.Header.Type != syscall.RTM_NEWLINK || len(m.Data) < syscall.SizeofIfInfomsg {
			continue
		}
		info := (*syscall.IfInfomsg)(unsafe.Pointer(&m.Data[0]))
		attrs, err := syscall.ParseNetlinkRouteAttr(&m)
		if err != nil {
			return nil, err
		}
		for _, a := range attrs {
			if a.Attr.Type == syscall.IFLA_IFNAME {
				name := cString(a.Value)
				names[info.Index] = name
				entries = append(entries, ifaddr{name: name})
			}
		}
	}

	addrRIB, err := syscall.NetlinkRIB(syscall.RTM_GETADDR, syscall.AF_UNSPEC)
	if err != nil {
		return nil, err
	}
	addrMsgs, err := syscall.ParseNetlinkMessage(addrRIB)
	if err != nil {
		return nil, err
	}
	for _, m := range addrMsgs {
		if m.Header.Type != syscall.RTM_NEWADDR || len(m.Data) < syscall.SizeofIfAddrmsg {
			continue
		}
		am := (*syscall.IfAddrmsg)(unsafe.Pointer(&m.Data[0]))
		attrs, err := syscall.ParseNetlinkRouteAttr(&m)
		if err != nil {
			return nil, err
		}
		var local, address []byte
		label := ""
		for _, a := range attrs {
			switch a.Attr.Type {
			case syscall.IFA_LOCAL:
				local = a.Value
			case syscall.IFA_ADDRESS:
				address = a.Value
			case syscall.IFA_LABEL:
				label = cString(a.Value)
			}
		}
		e := ifaddr{name: label}
		if e.name == "" {
			name, ok := names[int32(am.Index)]
			if !ok {
				continue // the link vanished between the two dumps
			}
			e.name = name
		}
		raw := address
		if local != nil {
			raw = local
		}
		switch {
		case am.Family == syscall.AF_INET && len(raw) == 4:
			e.addr = netip.AddrFrom4([4]byte(raw))
			e.prefix = min(int(am.Prefixlen), 32)
		case am.Family == syscall.AF_INET6 && len(raw) == 16:
			e.addr = netip.AddrFrom16([16]byte(raw))
			e.prefix = min(int(am.Prefixlen), 128)
		}
		entries = append(entries, e)
	}
	return entries, nil
}

// inetNtop formats an address as glibc's inet_ntop does. It differs from netip only for the
// deprecated IPv4-compatible IPv6 addresses (::a.b.c.d), which glibc prints dotted.
func inetNtop(a netip.Addr) string {
	if a.Is6() && !a.Is4In6() {
		b := a.As16()
		if [12]byte(b[:12]) == [12]byte{} && (b[12] != 0 || b[13] != 0) {
			return "::" + netip.AddrFrom4([4]byte(b[12:])).String()
		}
	}
	return a.String()
}

// cString is a NUL-terminated netlink string attribute.
func cString(b []byte) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}
