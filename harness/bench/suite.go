package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// RunSuite runs the conformance suite as `make e2e` does with the defaults, in dir (the
// repository), writing its output to logPath, and returns its wall time. A suite that fails
// still has a wall time: the run's exit code is in the SuiteRun, and the error is for a suite
// that could not run at all.
func RunSuite(ctx context.Context, dir, logPath string, args ...string) (time.Duration, SuiteRun, error) {
	run := SuiteRun{Ran: true, Command: strings.Join(append([]string{"make", "e2e"}, args...), " "), Log: logPath}
	log, err := os.Create(logPath)
	if err != nil {
		return 0, run, err
	}
	defer log.Close()
	cmd := exec.CommandContext(ctx, "make", append([]string{"-C", dir, "e2e"}, args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	// The suite is run as a user runs it, not as a sub-make of `make bench`.
	cmd.Env = withoutEnv(os.Environ(), "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
	t0 := time.Now()
	err = cmd.Run()
	d := time.Since(t0)
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		run.ExitCode = ee.ExitCode()
	case err != nil:
		return d, run, fmt.Errorf("run %s: %w", run.Command, err)
	}
	return d, run, nil
}

func withoutEnv(env []string, names ...string) []string {
	var out []string
next:
	for _, kv := range env {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

// RunGoBench runs the agent's `go test -bench` benchmarks in pkgs (in-process: no transport, no
// reference to compare with) and parses their results.
func RunGoBench(ctx context.Context, dir string, benchtime string, pkgs ...string) ([]GoBench, error) {
	args := append([]string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-benchtime", benchtime, "-count", "1"}, pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	res := ParseGoBench(strings.NewReader(string(out)))
	if err != nil {
		return res, fmt.Errorf("go %s: %w: %s", strings.Join(args, " "), err, tail(out, 2000))
	}
	return res, nil
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+)\s+(\d+)\s+([\d.]+) ns/op(.*)$`)

// ParseGoBench reads `go test -bench` output: "pkg:" lines name the package of the benchmark
// lines that follow.
func ParseGoBench(r io.Reader) []GoBench {
	var out []GoBench
	pkg := ""
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		b := GoBench{Package: pkg, Name: m[1]}
		b.Iterations, _ = strconv.ParseInt(m[2], 10, 64)
		b.NsPerOp, _ = strconv.ParseFloat(m[3], 64)
		f := strings.Fields(m[4])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "MB/s":
				b.MBPerS = &v
			case "B/op":
				b.BytesPerOp = &v
			case "allocs/op":
				b.AllocsPerOp = &v
			}
		}
		out = append(out, b)
	}
	return out
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
