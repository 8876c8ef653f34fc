package commands

import (
	"bufio"
	"bytes"
	"encoding/json"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
)

// sysReferenceAgent is /usr/sbin/qemu-ga, the reference, when this host has it.
const sysReferenceAgent = "/usr/sbin/qemu-ga"

// sysReference starts the reference agent on a unix socket and returns a function that sends
// one request and returns the reply's "return" value, decoded with json.Number for numbers.
// The test is skipped on a host without the reference. The socket is created here and handed
// over by systemd socket activation, so the first connection needs no waiting.
func sysReference(t *testing.T) func(request string) any {
	t.Helper()
	if _, err := os.Stat(sysReferenceAgent); err != nil {
		t.Skipf("no reference agent: %v", err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	lf, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(dir, "state")
	sysMkdir(t, stateDir)
	cmd := exec.Command("/bin/sh", "-c", `export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" -m unix-listen -p "$1" -t "$2"`,
		sysReferenceAgent, sock, stateDir)
	cmd.ExtraFiles = []*os.File{lf}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lf.Close()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		l.Close()
		if t.Failed() {
			t.Logf("reference stderr: %s", stderr.String())
		}
	})
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	r := bufio.NewReader(conn)
	return func(request string) any {
		t.Helper()
		if _, err := conn.Write([]byte(request + "\n")); err != nil {
			t.Fatal(err)
		}
		line, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatalf("reading the reference's reply: %v", err)
		}
		var reply struct {
			Return any `json:"return"`
			Error  any `json:"error"`
		}
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.UseNumber()
		if err := dec.Decode(&reply); err != nil || reply.Error != nil {
			t.Fatalf("reference replied %s (%v)", line, err)
		}
		return reply.Return
	}
}

// sysJSON renders a handler's result the way the wire does and decodes it back, so it can be
// compared with the reference's reply.
func sysJSON(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestNetworkInterfacesMatchTheReference(t *testing.T) {
	call := sysReference(t)
	ref := call(`{"execute":"guest-network-get-interfaces"}`).([]any)
	got, err := guestNetworkGetInterfaces(&Env{})
	if err != nil {
		t.Fatal(err)
	}
	ours := sysJSON(t, got).([]any)
	if len(ours) != len(ref) {
		t.Fatalf("%d interfaces, the reference has %d:\n ours %v\n  ref %v", len(ours), len(ref), ours, ref)
	}
	sawLoopback := false
	for i := range ref {
		r, o := ref[i].(map[string]any), ours[i].(map[string]any)
		rs, rHas := r["statistics"].(map[string]any)
		ostats, oHas := o["statistics"].(map[string]any)
		delete(r, "statistics")
		delete(o, "statistics")
		if !reflect.DeepEqual(o, r) {
			t.Errorf("interface %d:\n ours %v\n  ref %v", i, o, r)
		}
		if rHas != oHas {
			t.Errorf("interface %v: statistics present %v, reference %v", r["name"], oHas, rHas)
			continue
		}
		// Counters only grow, and ours were read after the reference's.
		for k, rv := range rs {
			rn, _ := strconv.ParseUint(string(rv.(json.Number)), 10, 64)
			on, err := strconv.ParseUint(string(ostats[k].(json.Number)), 10, 64)
			if err != nil || on < rn {
				t.Errorf("interface %v: %s = %v, reference %v", r["name"], k, ostats[k], rv)
			}
		}
		if len(ostats) != len(rs) {
			t.Errorf("interface %v: statistics %v, reference %v", r["name"], ostats, rs)
		}
		if r["name"] == "lo" {
			sawLoopback = true
			if o["hardware-address"] != "00:00:00:00:00:00" {
				t.Errorf("lo hardware-address = %v", o["hardware-address"])
			}
		}
	}
	if !sawLoopback {
		t.Error("no lo interface: the comparison proved little")
	}
}

func TestNetworkStatisticsFromProcNetDev(t *testing.T) {
	root := t.TempDir()
	dev := `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0
  eth0: 1 2 3 4 5 6 7
  eth0:283028001    9550    1    2    5     6          7         8   508089    5327    3    4    9     10       11          12
 eth0:1: 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9
  big: 99999999999999999999 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1
`
	sysWriteFile(t, filepath.Join(root, "proc/net/dev"), dev, 0o644)
	env := &Env{Root: root}
	cases := map[string]*networkStat{
		// The short line is skipped and the next line of the same name is used.
		"eth0": {RxBytes: 283028001, RxPackets: 9550, RxErrs: 1, RxDropped: 2, TxBytes: 508089, TxPackets: 5327, TxErrs: 3, TxDropped: 4},
		"lo":   {RxBytes: 3193, RxPackets: 29, TxBytes: 3193, TxPackets: 29},
		// The first colon ends the name, so an alias label never matches, as in the reference.
		"eth0:1": nil,
		"eth":    nil,
		// %lld saturates.
		"big": {RxBytes: 1<<63 - 1, RxPackets: 1, RxErrs: 1, RxDropped: 1, TxBytes: 1, TxPackets: 1, TxErrs: 1, TxDropped: 1},
	}
	for name, want := range cases {
		if got := networkStats(env, name); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got %+v, want %+v", name, got, want)
		}
	}
}

// Interfaces come from the kernel, statistics through Root: without /proc/net/dev there, an
// interface with addresses has none.
func TestNetworkStatisticsNeedProcNetDev(t *testing.T) {
	got, err := guestNetworkGetInterfaces(&Env{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range got {
		if i.Statistics != nil {
			t.Errorf("%s has statistics without /proc/net/dev", i.Name)
		}
		if i.Name == "lo" && len(i.IPAddresses) == 0 {
			t.Error("lo has no addresses: the test proves nothing")
		}
	}
}

func TestInetNtopMatchesGlibc(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":              "192.0.2.1",
		"::1":                    "::1",
		"::":                     "::",
		"fe80::fc:ff:fe00:1":     "fe80::fc:ff:fe00:1",
		"::ffff:192.0.2.1":       "::ffff:192.0.2.1",
		"::192.0.2.1":            "::192.0.2.1", // IPv4-compatible: glibc prints it dotted
		"::0.0.0.2":              "::2",         // a longer zero run is not dotted
		"2001:db8:0:0:1:0:0:1":   "2001:db8::1:0:0:1",
		"2001:db8:0:1:0:0:0:0":   "2001:db8:0:1::",
		"2001:db8:1:1:1:1:0:1":   "2001:db8:1:1:1:1:0:1",
		"2001:0db8:0:0:0:0:2:01": "2001:db8::2:1",
	} {
		if got := inetNtop(netip.MustParseAddr(in)); got != want {
			t.Errorf("inetNtop(%s) = %s, want %s", in, got, want)
		}
	}
}

func jsonNumber(s string) json.Number { return json.Number(s) }

// The reference reads /proc/net/dev with %lld: out-of-range counters saturate, and a field
// that is not a number makes the line unusable.
func TestParseCounterSaturates(t *testing.T) {
	cases := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"12", 12, true},
		{"99999999999999999999", math.MaxInt64, true},
		{"-99999999999999999999", 1 << 63, true},
		{"x", 0, false},
	}
	for _, c := range cases {
		if got, ok := parseCounter(c.in); got != c.want || ok != c.ok {
			t.Errorf("parseCounter(%q) = %d, %v; want %d, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}
