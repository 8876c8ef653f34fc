package commands

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/qgakit/qgakit/agent/dispatch"
	"github.com/qgakit/qgakit/agent/protocol"
	"github.com/qgakit/qgakit/schema"
)

func TestGetVCPUsMatchesTheReference(t *testing.T) {
	call := sysReference(t)
	ref := call(`{"execute":"guest-get-vcpus"}`)
	got, err := guestGetVCPUs(&Env{})
	if err != nil {
		t.Fatal(err)
	}
	// Same processors in the same (directory, not numeric) order.
	if ours := sysJSON(t, got); !reflect.DeepEqual(ours, ref) {
		t.Errorf("get-vcpus:\n ours %v\n  ref %v", ours, ref)
	}
}

// sysCPUTree is a fake /sys/devices/system/cpu: cpu0 without an online file, cpu1 online,
// cpu2 offline, and the entries that are no processors.
func sysCPUTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	cpu := filepath.Join(root, "sys/devices/system/cpu")
	sysMkdir(t, filepath.Join(cpu, "cpu0"), filepath.Join(cpu, "cpufreq"), filepath.Join(cpu, "cpuidle"))
	sysWriteFile(t, filepath.Join(cpu, "cpu1/online"), "1\n", 0o644)
	sysWriteFile(t, filepath.Join(cpu, "cpu2/online"), "0\n", 0o644)
	sysWriteFile(t, filepath.Join(cpu, "online"), "0-1\n", 0o444)
	sysWriteFile(t, filepath.Join(cpu, "possible"), "0-2\n", 0o444)
	return root
}

func TestGetVCPUsFromSysfs(t *testing.T) {
	root := sysCPUTree(t)
	got, err := guestGetVCPUs(&Env{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	byID := map[int64]logicalProcessor{}
	for _, v := range got {
		byID[v.LogicalID] = v
	}
	want := map[int64]logicalProcessor{
		0: {LogicalID: 0, Online: true, CanOffline: false},
		1: {LogicalID: 1, Online: true, CanOffline: true},
		2: {LogicalID: 2, Online: false, CanOffline: true},
	}
	if len(got) != 3 || !reflect.DeepEqual(byID, want) {
		t.Errorf("vcpus = %+v, want %+v", got, want)
	}
	// can-offline is always on the wire, false included.
	if js := sysJSON(t, byID[0]); !reflect.DeepEqual(js, map[string]any{"logical-id": jsonNumber("0"), "online": true, "can-offline": false}) {
		t.Errorf("cpu0 on the wire: %v", js)
	}
}

func TestGetVCPUsErrors(t *testing.T) {
	cpuPath := func(root string) string { return filepath.Join(root, "sys/devices/system/cpu") }
	cases := []struct {
		name  string
		setup func(root string)
		desc  string
	}{
		{"no cpu directory", func(root string) { os.RemoveAll(cpuPath(root)) },
			"failed to list entries: /sys/devices/system/cpu: No such file or directory"},
		{"empty online file", func(root string) { sysWriteFile(t, filepath.Join(cpuPath(root), "cpu1/online"), "", 0o644) },
			`pread("/sys/devices/system/cpu/cpu1//online"): unexpected EOF`},
		{"online is a directory", func(root string) {
			os.Remove(filepath.Join(cpuPath(root), "cpu2/online"))
			sysMkdir(t, filepath.Join(cpuPath(root), "cpu2/online"))
		}, `pread("/sys/devices/system/cpu/cpu2//online"): Is a directory`},
		{"processor is a file", func(root string) { sysWriteFile(t, filepath.Join(cpuPath(root), "cpu7"), "", 0o644) },
			`open("/sys/devices/system/cpu/cpu7/"): Not a directory`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := sysCPUTree(t)
			c.setup(root)
			_, err := guestGetVCPUs(&Env{Root: root})
			sysWantError(t, err, c.desc)
		})
	}
}

func TestParseCPUNameIsSscanf(t *testing.T) {
	for name, want := range map[string]int64{"cpu0": 0, "cpu17": 17, "cpu3abc": 3, "cpu-1": -1, "cpu+2": 2} {
		if got, ok := parseCPUName(name); !ok || got != want {
			t.Errorf("parseCPUName(%q) = %d, %v; want %d", name, got, ok, want)
		}
	}
	for _, name := range []string{"cpufreq", "cpuidle", "cpu", "online", "xcpu1", "cpu-"} {
		if _, ok := parseCPUName(name); ok {
			t.Errorf("parseCPUName(%q) matched", name)
		}
	}
}

func sysVCPUs(items ...dispatch.Args) dispatch.Args {
	list := make([]any, len(items))
	for i, it := range items {
		list[i] = it
	}
	return dispatch.Args{"vcpus": list}
}

func sysVCPU(id int64, online bool) dispatch.Args {
	return dispatch.Args{"logical-id": id, "online": online}
}

func TestSetVCPUs(t *testing.T) {
	online := func(root string, id string) string {
		b, err := os.ReadFile(filepath.Join(root, "sys/devices/system/cpu/cpu"+id+"/online"))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	t.Run("changes only what differs", func(t *testing.T) {
		root := sysCPUTree(t)
		// An old mtime shows whether cpu2 (already offline) was written.
		old := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
		cpu2 := filepath.Join(root, "sys/devices/system/cpu/cpu2/online")
		if err := os.Chtimes(cpu2, old, old); err != nil {
			t.Fatal(err)
		}
		n, err := guestSetVCPUs(&Env{Root: root}, sysVCPUs(sysVCPU(1, false), sysVCPU(2, false), sysVCPU(0, true)))
		if err != nil || n != 3 {
			t.Fatalf("set-vcpus = %d, %v; want 3", n, err)
		}
		if got := online(root, "1"); got != "0\n" {
			t.Errorf("cpu1/online = %q, want 0", got)
		}
		if st, _ := os.Stat(cpu2); !st.ModTime().Equal(old) {
			t.Error("cpu2/online was written although it was already offline")
		}
		if n, err := guestSetVCPUs(&Env{Root: root}, sysVCPUs(sysVCPU(2, true))); err != nil || n != 1 || online(root, "2") != "1\n" {
			t.Errorf("onlining cpu2 = %d, %v, file %q", n, err, online(root, "2"))
		}
	})
	t.Run("first failure is the error", func(t *testing.T) {
		root := sysCPUTree(t)
		_, err := guestSetVCPUs(&Env{Root: root}, sysVCPUs(sysVCPU(0, false), sysVCPU(1, false)))
		sysWantError(t, err, "logical processor #0 can't be offlined")
		if got := online(root, "1"); got != "1\n" {
			t.Errorf("cpu1 was processed after the failure: %q", got)
		}
		_, err = guestSetVCPUs(&Env{Root: root}, sysVCPUs(sysVCPU(7, true)))
		sysWantError(t, err, `open("/sys/devices/system/cpu/cpu7/"): No such file or directory`)
	})
	t.Run("later failure stops and counts", func(t *testing.T) {
		root := sysCPUTree(t)
		n, err := guestSetVCPUs(&Env{Root: root}, sysVCPUs(sysVCPU(1, false), sysVCPU(7, false), sysVCPU(2, true)))
		if err != nil || n != 1 {
			t.Fatalf("set-vcpus = %d, %v; want 1 and no error", n, err)
		}
		if got := online(root, "2"); got != "0\n" {
			t.Errorf("cpu2 was processed after the failure: %q", got)
		}
	})
	t.Run("empty list", func(t *testing.T) {
		if n, err := guestSetVCPUs(&Env{Root: sysCPUTree(t)}, sysVCPUs()); err != nil || n != 0 {
			t.Errorf("set-vcpus [] = %d, %v", n, err)
		}
	})
	t.Run("write error", func(t *testing.T) {
		root := sysCPUTree(t)
		// A directory named online cannot even be opened for writing.
		os.Remove(filepath.Join(root, "sys/devices/system/cpu/cpu1/online"))
		sysMkdir(t, filepath.Join(root, "sys/devices/system/cpu/cpu1/online"))
		_, err := guestSetVCPUs(&Env{Root: root}, sysVCPUs(sysVCPU(1, false)))
		sysWantError(t, err, `open("/sys/devices/system/cpu/cpu1//online"): Is a directory`)
	})
}

// sysDispatch sends one request, given as JSON, through a dispatcher that has every command
// registered, the way the server does, and returns the encoded reply ("" when there is none).
func sysDispatch(t *testing.T, d *dispatch.Dispatcher, request string) string {
	t.Helper()
	var msgs []protocol.Message
	protocol.NewDecoder().Feed([]byte(request), func(m protocol.Message) { msgs = append(msgs, m) })
	if len(msgs) != 1 {
		t.Fatalf("%s decodes to %d messages", request, len(msgs))
	}
	resp, reply := d.Dispatch(context.Background(), msgs[0])
	if !reply {
		return ""
	}
	return strings.TrimSuffix(string(protocol.AppendResponse(nil, &resp)), "\n")
}

// The system commands are registered under their schema names and take the dispatcher's
// argument values (set-vcpus' list of structs included); the no-reply commands send nothing
// on success; the frozen state disables a second freeze.
func TestSystemCommandsThroughTheDispatcher(t *testing.T) {
	root := sysCPUTree(t)
	sysMountinfo(t, root)
	sysWriteFile(t, filepath.Join(root, "sbin/poweroff"), "#!/bin/sh\nexit 0\n", 0o755)
	env := sysEnv(t, root)
	d := dispatch.New(schema.MustLoad(), dispatch.Options{Frozen: env.State.Frozen})
	Register(d, env)

	for _, c := range []struct{ request, reply string }{
		{`{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":1,"online":false},{"logical-id":0,"online":true,"can-offline":false}]}}`, `{"return": 2}`},
		{`{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":0,"online":false}]}}`, `{"error": {"class": "GenericError", "desc": "logical processor #0 can't be offlined"}}`},
		{`{"execute":"guest-shutdown"}`, ``},
		{`{"execute":"guest-shutdown","arguments":{"mode":"off"}}`, `{"error": {"class": "GenericError", "desc": "mode is invalid (valid values are: halt|powerdown|reboot"}}`},
		{`{"execute":"guest-suspend-ram"}`, `{"error": {"class": "GenericError", "desc": "the requested suspend mode is not supported by the guest"}}`},
		{`{"execute":"guest-fsfreeze-status"}`, `{"return": "thawed"}`},
		{`{"execute":"guest-fstrim","arguments":{"minimum":4096}}`, `{"return": {"paths": []}}`},
		{`{"execute":"guest-fsfreeze-freeze"}`, `{"return": 0}`},
		{`{"execute":"guest-fsfreeze-thaw"}`, `{"return": 0}`},
		{`{"execute":"guest-set-time"}`, `{"error": {"class": "GenericError", "desc": "this feature or command is not currently supported"}}`},
	} {
		if got := sysDispatch(t, d, c.request); got != c.reply {
			t.Errorf("%s\n got %s\nwant %s", c.request, got, c.reply)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(root, "sys/devices/system/cpu/cpu1/online")); string(b) != "0\n" {
		t.Errorf("cpu1/online = %q after set-vcpus", b)
	}
	for _, name := range []string{"guest-get-time", "guest-network-get-interfaces", "guest-get-vcpus"} {
		if got := sysDispatch(t, d, `{"execute":"`+name+`"}`); !strings.HasPrefix(got, `{"return": `) {
			t.Errorf("%s: %s", name, got)
		}
	}

	if err := env.State.SetFrozen(true); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ request, reply string }{
		{`{"execute":"guest-fsfreeze-freeze"}`, `{"error": {"class": "CommandNotFound", "desc": "Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state"}}`},
		{`{"execute":"guest-fsfreeze-status"}`, `{"return": "frozen"}`},
		{`{"execute":"guest-fsfreeze-thaw"}`, `{"return": 0}`},
		{`{"execute":"guest-fsfreeze-status"}`, `{"return": "thawed"}`},
	} {
		if got := sysDispatch(t, d, c.request); got != c.reply {
			t.Errorf("frozen: %s\n got %s\nwant %s", c.request, got, c.reply)
		}
	}
}
