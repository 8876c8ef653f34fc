package bench

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// hostAgent is an agent running on the host with a unix socket it got by systemd socket
// activation: the socket listens before the agent starts, so a client can connect and send its
// first request before the exec, and nothing has to poll for the socket file.
type hostAgent struct {
	cmd    *exec.Cmd
	c      *Agent
	exited chan struct{}
	stderr *strings.Builder
}

// startHostAgent starts bin in dir with a listening socket on fd 3, connects to it, writes a
// sync request and returns the agent with the time from its start to the sync's answer.
func startHostAgent(ctx context.Context, bin, dir string) (*hostAgent, time.Duration, error) {
	sock := filepath.Join(dir, "qga.sock")
	_ = os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		return nil, 0, err
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	lf, err := ul.File()
	l.Close() // the agent's copy is the only listener left
	if err != nil {
		return nil, 0, err
	}
	defer lf.Close()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, 0, err
	}
	c := NewAgent(conn)
	id, err := sendSync(ctx, c)
	if err != nil {
		c.Close()
		return nil, 0, err
	}
	// LISTEN_PID must be the agent's own pid: a shell sets it and execs the agent, so the time
	// includes one small shell start, alike for both agents.
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`, bin,
		"-m", "unix-listen", "-p", sock, "-t", dir, "-l", filepath.Join(dir, "qga.log"))
	cmd.Env = os.Environ()
	cmd.ExtraFiles = []*os.File{lf}
	stderr := &strings.Builder{}
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		c.Close()
		return nil, 0, fmt.Errorf("start %s: %w", bin, err)
	}
	a := &hostAgent{cmd: cmd, c: c, exited: make(chan struct{}), stderr: stderr}
	go func() { _ = cmd.Wait(); close(a.exited) }()
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	at, err := awaitSync(actx, c, id)
	if err != nil {
		a.stop()
		return nil, 0, fmt.Errorf("%s: %w (stderr: %s)", bin, err, stderr.String())
	}
	return a, at.Sub(t0), nil
}

// stop ends the agent (SIGTERM, as systemd would) and waits for it.
func (a *hostAgent) stop() {
	a.c.Close()
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.exited
	}
}

// HostBench measures bin on the host: firstSyncs starts (exec to first answered sync), then on
// the last one pings guest-pings, fileReads reads of a 64 MiB file, and the memory after them.
func HostBench(ctx context.Context, bin string, o AgentOptions) (*AgentResult, error) {
	dir, err := os.MkdirTemp("", "qgabench-host-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	res := &AgentResult{Binary: bin}
	file := filepath.Join(dir, "data.bin")
	sum, err := writeRandomFile(file, BenchFileSize)
	if err != nil {
		return nil, err
	}

	var syncs []float64
	var a *hostAgent
	for i := range max(o.FirstSyncs, 1) {
		if a != nil {
			a.stop()
		}
		var d time.Duration
		if a, d, err = startHostAgent(ctx, bin, dir); err != nil {
			return res, err
		}
		if i < o.FirstSyncs {
			syncs = append(syncs, float64(d)/float64(time.Millisecond))
		}
	}
	defer a.stop()
	if len(syncs) > 0 {
		res.FirstSyncMs = Num(Median(syncs), 2)
	}
	var info struct {
		Version string `json:"version"`
	}
	if err := a.c.Call(ctx, "guest-info", nil, &info); err != nil {
		return res, fmt.Errorf("guest-info: %w", err)
	}
	res.Version = info.Version
	if _, err := Ping(ctx, a.c, 10); err != nil {
		return res, err
	}
	pings, err := Ping(ctx, a.c, o.Pings)
	if err != nil {
		return res, err
	}
	ms := Millis(pings)
	res.PingCount = len(ms)
	if len(ms) > 0 {
		res.PingMedianMs, res.PingP90Ms = Num(Median(ms), 4), Num(Quantile(ms, 0.9), 4)
	}
	var reads []float64
	for range o.FileReads {
		d, err := FileRead(ctx, a.c, file, BenchFileSize, sum)
		if err != nil {
			return res, err
		}
		reads = append(reads, MBps(BenchFileSize, d))
	}
	if len(reads) > 0 {
		res.FileReadMBps = Num(Median(reads), 1)
	}
	rss, hwm, err := procMemory(a.cmd.Process.Pid)
	if err != nil {
		return res, err
	}
	res.RSSKB, res.HWMKB = &rss, &hwm
	return res, nil
}

// writeRandomFile fills a new file with size random bytes and returns their sha256.
func writeRandomFile(path string, size int) ([32]byte, error) {
	data := make([]byte, size)
	_, _ = rand.Read(data)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(data), nil
}

// procMemory reads VmRSS and VmHWM (kB) of a host process.
func procMemory(pid int) (rss, hwm int64, err error) {
	p := "/proc/" + strconv.Itoa(pid) + "/status"
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, 0, err
	}
	rss, hwm = parseProcMemory(string(b))
	if rss == 0 || hwm == 0 {
		return 0, 0, errors.New("no VmRSS/VmHWM in " + p)
	}
	return rss, hwm, nil
}

// parseProcMemory picks VmRSS and VmHWM (kB) out of a /proc/<pid>/status, the host's or the
// guest's; a value it does not find is 0.
func parseProcMemory(status string) (rss, hwm int64) {
	for _, line := range strings.Split(status, "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[2] != "kB" {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rss = n
		case "VmHWM:":
			hwm = n
		}
	}
	return rss, hwm
}
