package dispatch

import (
	"testing"
)

// An administrator's list entry with blanks or capitals still names its command: blocking it
// fails closed (the reference blocks nothing for " guest-file-open", and the command runs),
// and an allow list means what it says. The request's own name is still matched exactly.
func TestListEntriesWithBlanksAndCapitals(t *testing.T) {
	d, recs := newAll(t, Options{Blocked: []string{"guest-ping", " guest-file-open", "GUEST-GET-TIME\t"}})
	for _, name := range []string{"guest-ping", "guest-file-open", "guest-get-time"} {
		wantErr(t, d, `{"execute":"`+name+`","arguments":{"path":"/x"}}`, "CommandNotFound", "Command "+name+" has been disabled")
		if recs[name].calls.Load() != 0 {
			t.Fatalf("%s ran while blocked", name)
		}
	}
	for _, c := range d.Info() {
		if want := c.Name != "guest-ping" && c.Name != "guest-file-open" && c.Name != "guest-get-time"; c.Enabled != want {
			t.Errorf("guest-info: %s enabled %v, want %v", c.Name, c.Enabled, want)
		}
	}
	wantErr(t, d, `{"execute":"GUEST-PING"}`, "CommandNotFound", "The command GUEST-PING has not been found")
	wantErr(t, d, `{"execute":" guest-file-open"}`, "CommandNotFound", "The command  guest-file-open has not been found")

	d, recs = newAll(t, Options{Allowed: []string{"guest-ping", " Guest-Info "}})
	for _, name := range []string{"guest-ping", "guest-info"} {
		if resp, _ := dispatch(t, d, `{"execute":"`+name+`"}`); resp.Err != nil || recs[name].calls.Load() != 1 {
			t.Fatalf("%s: %+v, %d calls", name, resp.Err, recs[name].calls.Load())
		}
	}
	wantErr(t, d, `{"execute":"guest-get-time"}`, "CommandNotFound", "Command guest-get-time has been disabled")
}
