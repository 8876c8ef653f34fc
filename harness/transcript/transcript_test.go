package transcript

import (
	"bytes"
	"regexp"
	"strings"
	"sync"
	"testing"
)

func TestAddKeepsOrEscapes(t *testing.T) {
	raw, esc := &Transcript{}, NewEscaped()
	in := []byte("\xff{\"execute\":\"guest-ping\"}\n")
	raw.Add(DirSend, in)
	esc.Add(DirSend, in)
	if got := raw.Entries()[0].Data; got != string(in) {
		t.Errorf("zero value changed the data: %q", got)
	}
	if got, want := esc.Entries()[0].Data, `\xff{"execute":"guest-ping"}\x0a`; got != want {
		t.Errorf("escaped %q, want %q", got, want)
	}
}

func TestAddTruncatesHugeData(t *testing.T) {
	for _, tr := range []*Transcript{{}, NewEscaped()} {
		tr.Add(DirRecv, bytes.Repeat([]byte("a"), 3*maxEntry))
		got := tr.Entries()[0].Data
		if !strings.HasSuffix(got, "... (196608 bytes, truncated)") || len(got) > maxEntry+100 {
			t.Errorf("kept %d bytes ending %q; want %d and the original length", len(got), got[len(got)-40:], maxEntry)
		}
	}
	// The cut is made on the bytes, before escaping: an escaped entry keeps maxEntry bytes of
	// the original, four characters each.
	tr := NewEscaped()
	tr.Add(DirRecv, bytes.Repeat([]byte{0xff}, maxEntry+1))
	if got := strings.Count(tr.Entries()[0].Data, `\xff`); got != maxEntry {
		t.Errorf("escaped entry keeps %d bytes, want %d", got, maxEntry)
	}
}

func TestWriteToFormatAndCount(t *testing.T) {
	tr := &Transcript{}
	tr.Notef("connect %s", "sock")
	tr.Add(DirSend, []byte(`{"execute":"qmp_capabilities"}`))
	tr.Add("ev", []byte(`{"event":"RESET"}`))
	var buf bytes.Buffer
	n, err := tr.WriteTo(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Errorf("WriteTo says %d bytes, wrote %d", n, buf.Len())
	}
	line := regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{6} (\S\S) (.*)$`)
	var got []string
	for _, l := range strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n") {
		m := line.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("line %q is not <time> <dir> <data>", l)
		}
		got = append(got, m[1]+" "+m[2])
	}
	want := []string{"-- connect sock", `-> {"execute":"qmp_capabilities"}`, `ev {"event":"RESET"}`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("wrote\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestConcurrentAddsAreAllKept(t *testing.T) {
	tr := &Transcript{}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				tr.Notef("writer %d", i)
			}
		}()
	}
	wg.Wait()
	if got := len(tr.Entries()); got != 800 {
		t.Errorf("%d entries, want 800", got)
	}
}
