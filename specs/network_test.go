package specs

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/qgakit/qgakit/harness/vm"
)

// netInterface is GuestNetworkInterface as the agent reports it.
type netInterface struct {
	Name            string         `json:"name"`
	HardwareAddress *string        `json:"hardware-address"`
	IPAddresses     []netIPAddress `json:"ip-addresses"`
	Statistics      *netStats      `json:"statistics"`
}

// netIPAddress is GuestIpAddress.
type netIPAddress struct {
	Address string `json:"ip-address"`
	Type    string `json:"ip-address-type"`
	Prefix  int    `json:"prefix"`
}

// netStats is GuestNetworkInterfaceStat; the fields are /proc/net/dev's columns.
type netStats struct {
	RxBytes   uint64 `json:"rx-bytes"`
	RxPackets uint64 `json:"rx-packets"`
	RxErrs    uint64 `json:"rx-errs"`
	RxDropped uint64 `json:"rx-dropped"`
	TxBytes   uint64 `json:"tx-bytes"`
	TxPackets uint64 `json:"tx-packets"`
	TxErrs    uint64 `json:"tx-errs"`
	TxDropped uint64 `json:"tx-dropped"`
}

// describeNetwork adds the specs of guest-network-get-interfaces (their guest is in
// time_test.go). Two user-mode NICs with MACs drawn per run are the oracle from QEMU's
// configuration; the console's ip and /proc/net/dev are the oracle for everything the guest
// changes. Both netdevs are restrict=on: the only traffic the specs make is a ping of
// 10.0.2.2, which slirp answers itself, and nothing can leave QEMU.
func describeNetwork(g *systemGuest) {
	Describe("guest-network-get-interfaces", cmdLabel("guest-network-get-interfaces"), func() {
		macs := &g.macs
		BeforeEach(func(ctx SpecContext) {
			By("waiting on the console until both NICs have their IPv6 link-local address (the kernel adds it when the link comes up)")
			Eventually(ctx, func() string {
				out, _, _ := g.Console().Run(ctx, "ip -o -6 addr show scope link")
				return out
			}).WithPolling(200 * time.Millisecond).Should(And(ContainSubstring(netLinkLocal(macs[0])), ContainSubstring(netLinkLocal(macs[1]))))
		}, NodeTimeout(time.Minute))

		It("reports the MACs of QEMU's -device lines, slirp's 10.0.2.15/24, lo, and exactly what the console lists", func(ctx SpecContext) {
			guest := g.VM
			ifaces := netCompareWithConsole(ctx, guest)

			By("QEMU's configuration: eth0 and eth1 have the MACs given with mac=, lo has none but zeros")
			Expect(netNames(ifaces)).To(HaveExactElements("lo", "eth0", "eth1"))
			Expect(ifaces[0].HardwareAddress).To(HaveValue(Equal("00:00:00:00:00:00")))
			Expect(ifaces[1].HardwareAddress).To(HaveValue(Equal(macs[0])))
			Expect(ifaces[2].HardwareAddress).To(HaveValue(Equal(macs[1])))

			By("lo has exactly 127.0.0.1/8 and ::1/128")
			Expect(ifaces[0].IPAddresses).To(ConsistOf(
				netIPAddress{"127.0.0.1", "ipv4", 8},
				netIPAddress{"::1", "ipv6", 128},
			))

			By("eth0 has slirp's 10.0.2.15/24 as its only IPv4 address, and the link-local address made from its MAC")
			Expect(netFamily(ifaces[1], "ipv4")).To(HaveExactElements(netIPAddress{"10.0.2.15", "ipv4", 24}))
			Expect(ifaces[1].IPAddresses).To(ContainElement(netIPAddress{netLinkLocal(macs[0]), "ipv6", 64}))

			By("eth1 has no IPv4 address, and the link-local address made from its MAC")
			Expect(netFamily(ifaces[2], "ipv4")).To(BeEmpty())
			Expect(ifaces[2].IPAddresses).To(ContainElement(netIPAddress{netLinkLocal(macs[1]), "ipv6", 64}))
		}, NodeTimeout(2*time.Minute))

		It("lists addresses the console adds in the next call, alias labels as interfaces of their own, and forgets them once deleted", func(ctx SpecContext) {
			guest := g.VM
			// Documentation prefixes (RFC 5737, RFC 3849): addresses that exist nowhere else.
			const (
				v4      = "198.51.100.7/25"
				v4Label = "198.51.100.77/26"
				v6      = "2001:db8:77::7/80"
			)
			console := guest.Console()
			DeferCleanup(func(ctx SpecContext) {
				_, _, err := console.Run(ctx, "ip addr del "+v4+" dev eth1; ip addr del "+v4Label+" dev eth1; ip addr del "+v6+" dev eth1")
				Expect(err).NotTo(HaveOccurred(), "console cleanup")
			}, NodeTimeout(time.Minute))

			By("ip addr add on the console: an IPv4 and an IPv6 address on eth1, and an IPv4 address labelled eth1:qga")
			_, err := console.RunOK(ctx, "ip addr add "+v4+" dev eth1 && ip addr add "+v6+" dev eth1 && ip addr add "+v4Label+" dev eth1 label eth1:qga")
			Expect(err).NotTo(HaveOccurred())

			ifaces := netCompareWithConsole(ctx, guest)
			eth1 := netFind(ifaces, "eth1")
			Expect(eth1.IPAddresses).To(ContainElements(
				netIPAddress{"198.51.100.7", "ipv4", 25},
				netIPAddress{"2001:db8:77::7", "ipv6", 80},
			))
			Expect(eth1.IPAddresses).NotTo(ContainElement(HaveField("Address", "198.51.100.77")))
			By("the labelled address is an interface eth1:qga of its own, after every link (getifaddrs' order), with eth1's MAC")
			Expect(netNames(ifaces)).To(HaveExactElements("lo", "eth0", "eth1", "eth1:qga"))
			alias := netFind(ifaces, "eth1:qga")
			Expect(alias.HardwareAddress).To(HaveValue(Equal(macs[1])))
			Expect(alias.IPAddresses).To(HaveExactElements(netIPAddress{"198.51.100.77", "ipv4", 26}))
			By("/proc/net/dev has no line for a label, so eth1:qga has no statistics")
			Expect(alias.Statistics).To(BeNil())

			By("ip addr del on the console: the next call no longer lists them")
			_, err = console.RunOK(ctx, "ip addr del "+v4+" dev eth1 && ip addr del "+v6+" dev eth1 && ip addr del "+v4Label+" dev eth1")
			Expect(err).NotTo(HaveOccurred())
			ifaces = netCompareWithConsole(ctx, guest)
			Expect(netNames(ifaces)).To(HaveExactElements("lo", "eth0", "eth1"))
			Expect(netFind(ifaces, "eth1").IPAddresses).NotTo(ContainElement(HaveField("Address", HavePrefix("198.51.100."))))
			Expect(netFind(ifaces, "eth1").IPAddresses).NotTo(ContainElement(HaveField("Address", "2001:db8:77::7")))
		}, NodeTimeout(2*time.Minute))

		It("lists an interface without addresses by name and MAC only, without ip-addresses or statistics", func(ctx SpecContext) {
			guest := g.VM
			console := guest.Console()
			DeferCleanup(func(ctx SpecContext) {
				_, _, err := console.Run(ctx, "sysctl -w net.ipv6.conf.eth1.disable_ipv6=0")
				Expect(err).NotTo(HaveOccurred(), "console cleanup")
			}, NodeTimeout(time.Minute))

			By("disabling IPv6 on eth1 from the console, which removes its only addresses")
			_, err := console.RunOK(ctx, "sysctl -w net.ipv6.conf.eth1.disable_ipv6=1")
			Expect(err).NotTo(HaveOccurred())

			ifaces := netCompareWithConsole(ctx, guest)
			eth1 := netFind(ifaces, "eth1")
			Expect(eth1.HardwareAddress).To(HaveValue(Equal(macs[1])))
			Expect(eth1.IPAddresses).To(BeNil(), "ip-addresses must be absent, not empty")
			// The reference fills statistics only for interfaces that have an address.
			Expect(eth1.Statistics).To(BeNil())

			By("re-enabling IPv6: the link-local address made from the MAC is back in the next call")
			_, err = console.RunOK(ctx, "sysctl -w net.ipv6.conf.eth1.disable_ipv6=0")
			Expect(err).NotTo(HaveOccurred())
			Eventually(ctx, func() []netIPAddress {
				var ifaces []netInterface
				Expect(guest.Agent().Call(ctx, "guest-network-get-interfaces", nil, &ifaces)).To(Succeed())
				return netFind(ifaces, "eth1").IPAddresses
			}).WithPolling(200 * time.Millisecond).Should(ContainElement(netIPAddress{netLinkLocal(macs[1]), "ipv6", 64}))
		}, NodeTimeout(2*time.Minute))

		It("reports the statistics /proc/net/dev has before and after the call, and they move with traffic the console makes", func(ctx SpecContext) {
			guest := g.VM
			before := netStatsBracketed(ctx, guest)
			By("every interface with an address has statistics")
			for _, name := range []string{"lo", "eth0", "eth1"} {
				Expect(before[name]).NotTo(BeNil(), "statistics of %s", name)
			}

			By("the console pings slirp's gateway 10.0.2.2 three times")
			_, err := guest.Console().RunOK(ctx, "busybox ping -c 3 -W 10 10.0.2.2")
			Expect(err).NotTo(HaveOccurred())

			after := netStatsBracketed(ctx, guest)
			Expect(after["eth0"]).NotTo(BeNil(), "statistics of eth0")
			By("eth0 counted at least 3 echo requests out and 3 replies in, of 98 bytes each (Ethernet, IPv4, ICMP, 56 data bytes)")
			Expect(after["eth0"].TxPackets - before["eth0"].TxPackets).To(BeNumerically(">=", 3))
			Expect(after["eth0"].RxPackets - before["eth0"].RxPackets).To(BeNumerically(">=", 3))
			Expect(after["eth0"].TxBytes - before["eth0"].TxBytes).To(BeNumerically(">=", 3*98))
			Expect(after["eth0"].RxBytes - before["eth0"].RxBytes).To(BeNumerically(">=", 3*98))
		}, NodeTimeout(2*time.Minute))
	})
}

// netRandomMACs are two different random MACs in QEMU's locally administered 52:54:00 range.
func netRandomMACs() [2]string {
	mac := func() string {
		return fmt.Sprintf("52:54:00:%02x:%02x:%02x", rand.IntN(256), rand.IntN(256), rand.IntN(256))
	}
	m := [2]string{mac(), mac()}
	for m[1] == m[0] {
		m[1] = mac()
	}
	return m
}

// netLinkLocal is the IPv6 link-local address the kernel makes from a MAC (modified EUI-64).
func netLinkLocal(mac string) string {
	hw, err := net.ParseMAC(mac)
	Expect(err).NotTo(HaveOccurred())
	a := [16]byte{0: 0xfe, 1: 0x80, 8: hw[0] ^ 0x02, 9: hw[1], 10: hw[2], 11: 0xff, 12: 0xfe, 13: hw[3], 14: hw[4], 15: hw[5]}
	return netip.AddrFrom16(a).String()
}

// netNames lists the interfaces' names in the agent's order.
func netNames(ifaces []netInterface) []string {
	names := make([]string, len(ifaces))
	for i, x := range ifaces {
		names[i] = x.Name
	}
	return names
}

// netFind returns the interface with this name; the spec fails when there is none.
func netFind(ifaces []netInterface, name string) netInterface {
	GinkgoHelper()
	i := slices.IndexFunc(ifaces, func(x netInterface) bool { return x.Name == name })
	Expect(i).NotTo(BeNumerically("<", 0), "no interface %s in %v", name, netNames(ifaces))
	return ifaces[i]
}

// netFamily is the interface's addresses of one ip-address-type.
func netFamily(x netInterface, typ string) []netIPAddress {
	var out []netIPAddress
	for _, a := range x.IPAddresses {
		if a.Type == typ {
			out = append(out, a)
		}
	}
	return out
}

// netView is what the console's ip shows: names in the order getifaddrs reports them (links by
// index, then IPv4 labels that are not link names), each name's MAC and its addresses.
type netView struct {
	Names []string
	MACs  map[string]string
	Addrs map[string][]string // "ipv4 10.0.2.15/24", sorted
}

var (
	netLinkRE = regexp.MustCompile(`^\d+: ([^:@ ]+)[:@].* link/\S+ ([0-9a-f:]{17})`)
	netAddrRE = regexp.MustCompile(`^\d+: (\S+)\s+(inet6?) (\S+)/(\d+) (.*)$`)
)

// netConsoleView reads ip -o link and ip -o addr on the console.
func netConsoleView(ctx context.Context, guest *vm.VM) netView {
	GinkgoHelper()
	out, err := guest.Console().RunOK(ctx, "ip -o link; echo --; ip -o addr")
	Expect(err).NotTo(HaveOccurred())
	links, addrs, ok := strings.Cut(out, "--\n")
	Expect(ok).To(BeTrue(), "console output %q", out)
	v := netView{MACs: map[string]string{}, Addrs: map[string][]string{}}
	for _, l := range strings.Split(strings.TrimSpace(links), "\n") {
		m := netLinkRE.FindStringSubmatch(l)
		Expect(m).NotTo(BeNil(), "ip -o link line %q", l)
		v.Names = append(v.Names, m[1])
		v.MACs[m[1]] = m[2]
	}
	for _, l := range strings.Split(strings.TrimSpace(addrs), "\n") {
		m := netAddrRE.FindStringSubmatch(l)
		Expect(m).NotTo(BeNil(), "ip -o addr line %q", l)
		name, typ := m[1], "ipv4"
		if m[2] == "inet6" {
			typ = "ipv6"
		} else if rest := strings.Fields(m[5]); len(rest) > 0 {
			// An IPv4 address's label ends the line before the "\" that joins the
			// continuation: "scope global eth1:qga\".
			for _, f := range rest {
				if label, ok := strings.CutSuffix(f, `\`); ok && label != "" {
					name = label
					break
				}
			}
		}
		if !slices.Contains(v.Names, name) {
			v.Names = append(v.Names, name)
		}
		v.Addrs[name] = append(v.Addrs[name], typ+" "+m[3]+"/"+m[4])
	}
	for _, a := range v.Addrs {
		slices.Sort(a)
	}
	return v
}

// netAgentView turns the agent's reply into a netView; a label gets its link's MAC.
func netAgentView(ifaces []netInterface) netView {
	v := netView{MACs: map[string]string{}, Addrs: map[string][]string{}}
	for _, x := range ifaces {
		v.Names = append(v.Names, x.Name)
		if x.HardwareAddress != nil {
			v.MACs[strings.SplitN(x.Name, ":", 2)[0]] = *x.HardwareAddress
		}
		for _, a := range x.IPAddresses {
			v.Addrs[x.Name] = append(v.Addrs[x.Name], a.Type+" "+a.Address+"/"+strconv.Itoa(a.Prefix))
		}
		slices.Sort(v.Addrs[x.Name])
	}
	return v
}

// netCompareWithConsole calls the agent between two console reads of ip until the two reads
// agree (an IPv6 address may come or finish DAD at any moment), and then requires the agent's
// view to be exactly that of the console: names in order, MACs and addresses.
func netCompareWithConsole(ctx context.Context, guest *vm.VM) []netInterface {
	GinkgoHelper()
	By("the agent's reply, between two console reads of ip -o link and ip -o addr that agree, is exactly what ip shows")
	var (
		ifaces []netInterface
		seen   netView
	)
	Eventually(ctx, func(g Gomega) {
		before := netConsoleView(ctx, guest)
		ifaces = nil
		g.Expect(guest.Agent().Call(ctx, "guest-network-get-interfaces", nil, &ifaces)).To(Succeed())
		after := netConsoleView(ctx, guest)
		g.Expect(after).To(Equal(before), "the console's view changed during the call")
		seen = before
	}).WithPolling(500 * time.Millisecond).Should(Succeed())
	Expect(netAgentView(ifaces)).To(Equal(seen))
	return ifaces
}

// netProcDev reads /proc/net/dev on the console.
func netProcDev(ctx context.Context, guest *vm.VM) map[string]netStats {
	GinkgoHelper()
	out, err := guest.Console().RunOK(ctx, "cat /proc/net/dev")
	Expect(err).NotTo(HaveOccurred())
	stats := map[string]netStats{}
	for _, l := range strings.Split(out, "\n") {
		name, rest, ok := strings.Cut(l, ":")
		if !ok || strings.Contains(name, "|") {
			continue
		}
		f := strings.Fields(rest)
		Expect(f).To(HaveLen(16), "/proc/net/dev line %q", l)
		n := make([]uint64, 16)
		for i := range f {
			n[i], err = strconv.ParseUint(f[i], 10, 64)
			Expect(err).NotTo(HaveOccurred(), "/proc/net/dev line %q", l)
		}
		stats[strings.TrimSpace(name)] = netStats{
			RxBytes: n[0], RxPackets: n[1], RxErrs: n[2], RxDropped: n[3],
			TxBytes: n[8], TxPackets: n[9], TxErrs: n[10], TxDropped: n[11],
		}
	}
	return stats
}

// netStatsBracketed calls the agent between two console reads of /proc/net/dev and requires
// every counter it reports to lie between the two reads (counters only grow). It returns the
// agent's statistics by interface name.
func netStatsBracketed(ctx context.Context, guest *vm.VM) map[string]*netStats {
	GinkgoHelper()
	By("every counter the agent reports lies between /proc/net/dev read on the console before and after the call")
	lo := netProcDev(ctx, guest)
	var ifaces []netInterface
	Expect(guest.Agent().Call(ctx, "guest-network-get-interfaces", nil, &ifaces)).To(Succeed())
	hi := netProcDev(ctx, guest)
	got := map[string]*netStats{}
	for _, x := range ifaces {
		if x.Statistics == nil {
			continue
		}
		got[x.Name] = x.Statistics
		l, ok := lo[x.Name]
		Expect(ok).To(BeTrue(), "%s has statistics but no line in /proc/net/dev", x.Name)
		h := hi[x.Name]
		s := *x.Statistics
		for _, c := range []struct {
			name    string
			l, v, h uint64
		}{
			{"rx-bytes", l.RxBytes, s.RxBytes, h.RxBytes},
			{"rx-packets", l.RxPackets, s.RxPackets, h.RxPackets},
			{"rx-errs", l.RxErrs, s.RxErrs, h.RxErrs},
			{"rx-dropped", l.RxDropped, s.RxDropped, h.RxDropped},
			{"tx-bytes", l.TxBytes, s.TxBytes, h.TxBytes},
			{"tx-packets", l.TxPackets, s.TxPackets, h.TxPackets},
			{"tx-errs", l.TxErrs, s.TxErrs, h.TxErrs},
			{"tx-dropped", l.TxDropped, s.TxDropped, h.TxDropped},
		} {
			Expect(c.v).To(SatisfyAll(BeNumerically(">=", c.l), BeNumerically("<=", c.h)),
				"%s %s: the console read %d before and %d after", x.Name, c.name, c.l, c.h)
		}
	}
	return got
}
