package vm

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

// exiting tells a live process from one that died and is not reaped yet, which Artifacts
// waits for so that a crashed QEMU's status says how it ended.
func TestExiting(t *testing.T) {
	if exiting(os.Getpid()) {
		t.Fatal("this test process counts as exiting")
	}
	cmd := exec.Command("sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if exiting(pid) {
		t.Fatal("a running sleep counts as exiting")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	// Not reaped: it turns into a zombie.
	deadline := time.Now().Add(10 * time.Second)
	for !exiting(pid) {
		if time.Now().After(deadline) {
			t.Fatal("a killed, unreaped sleep never counted as exiting")
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = cmd.Wait()
	if !exiting(pid) {
		t.Fatal("a reaped process counts as running")
	}
}
