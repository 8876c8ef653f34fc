package image

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// imageServer serves one file, honouring Range like a real web server (http.ServeContent),
// and records what it was asked and how many body bytes it sent.
type imageServer struct {
	*httptest.Server
	mu       sync.Mutex
	data     []byte
	requests int
	ranges   []string
	sent     int64
	// ignoreRange answers every request with the whole file (200), as some servers do.
	ignoreRange bool
	// cutAfter, when > 0, makes the next response end (connection closed) after that many
	// body bytes: an interrupted download.
	cutAfter int
}

func newImageServer(t *testing.T, data []byte) *imageServer {
	s := &imageServer{data: data}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *imageServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests++
	s.ranges = append(s.ranges, r.Header.Get("Range"))
	cut := s.cutAfter
	s.cutAfter = 0
	data := s.data
	if s.ignoreRange {
		r.Header.Del("Range")
	}
	s.mu.Unlock()
	cw := &countingWriter{ResponseWriter: w, s: s, limit: cut}
	http.ServeContent(cw, r, "image.qcow2", time.Unix(1700000000, 0), bytes.NewReader(data))
	if cut > 0 {
		// Drop the connection with the body unfinished.
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close()
			}
		}
	}
}

type countingWriter struct {
	http.ResponseWriter
	s       *imageServer
	limit   int
	written int
}

func (c *countingWriter) Write(b []byte) (int, error) {
	if c.limit > 0 {
		if c.written >= c.limit {
			return 0, http.ErrHandlerTimeout
		}
		if c.written+len(b) > c.limit {
			b = b[:c.limit-c.written]
		}
	}
	n, err := c.ResponseWriter.Write(b)
	c.written += n
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
	c.s.mu.Lock()
	c.s.sent += int64(n)
	c.s.mu.Unlock()
	if c.limit > 0 && c.written >= c.limit {
		return n, http.ErrHandlerTimeout
	}
	return n, err
}

func (s *imageServer) stats() (requests int, ranges []string, sent int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests, append([]string(nil), s.ranges...), s.sent
}

func randomImage(t *testing.T, n int) ([]byte, string) {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

func fetchOpts(s *imageServer, cache, sum string, progress *bytes.Buffer) FetchOptions {
	o := FetchOptions{URL: s.URL + "/image.qcow2", SHA256: sum, CacheDir: cache, Client: s.Client()}
	if progress != nil { // a nil *bytes.Buffer in the interface would not be a nil writer
		o.Progress = progress
	}
	return o
}

func TestFetchImageGoodDigest(t *testing.T) {
	data, sum := randomImage(t, 3<<20+17)
	s := newImageServer(t, data)
	cache := t.TempDir()
	var progress bytes.Buffer
	path, err := FetchImage(context.Background(), fetchOpts(s, cache, strings.ToUpper(sum), &progress))
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(cache, "sha256-"+sum); path != want {
		t.Errorf("path %s, want the content address %s", path, want)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("cached file differs from the served one (%d vs %d bytes)", len(got), len(data))
	}
	if _, err := os.Stat(path + ".part"); !os.IsNotExist(err) {
		t.Errorf("partial file left behind: %v", err)
	}
	if !strings.Contains(progress.String(), "(100%)") {
		t.Errorf("progress never reached 100%%:\n%s", progress.String())
	}
	// A second fetch is served from the cache: the server is not asked again.
	if _, err := FetchImage(context.Background(), fetchOpts(s, cache, sum, nil)); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := s.stats(); n != 1 {
		t.Errorf("server got %d requests, want 1 (the second fetch must come from the cache)", n)
	}
}

func TestFetchImageBadDigest(t *testing.T) {
	data, _ := randomImage(t, 100000)
	_, other := randomImage(t, 10)
	s := newImageServer(t, data)
	cache := t.TempDir()
	_, err := FetchImage(context.Background(), fetchOpts(s, cache, other, nil))
	if err == nil {
		t.Fatal("a file with another digest was accepted")
	}
	actual := sha256.Sum256(data)
	for _, want := range []string{other, hex.EncodeToString(actual[:]), "IMAGE_SHA256"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	ents, _ := os.ReadDir(cache)
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".lock") {
			t.Errorf("cache holds %s after a failed download", e.Name())
		}
	}
}

func TestFetchImageResumes(t *testing.T) {
	data, sum := randomImage(t, 2<<20)
	s := newImageServer(t, data)
	cache := t.TempDir()
	part := filepath.Join(cache, "sha256-"+sum+".part")
	have := 700001
	if err := os.WriteFile(part, data[:have], 0o644); err != nil {
		t.Fatal(err)
	}
	var progress bytes.Buffer
	path, err := FetchImage(context.Background(), fetchOpts(s, cache, sum, &progress))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if !bytes.Equal(got, data) {
		t.Fatal("resumed file differs from the served one")
	}
	n, ranges, sent := s.stats()
	if n != 1 || ranges[0] != "bytes=700001-" {
		t.Errorf("requests %d with ranges %q, want one asking for bytes=700001-", n, ranges)
	}
	if want := int64(len(data) - have); sent != want {
		t.Errorf("server sent %d bytes, want only the missing %d", sent, want)
	}
	if !strings.Contains(progress.String(), "resuming") {
		t.Errorf("progress does not say it resumed:\n%s", progress.String())
	}
}

func TestFetchImageResumesAfterInterruption(t *testing.T) {
	data, sum := randomImage(t, 1<<20)
	s := newImageServer(t, data)
	s.cutAfter = 300000
	cache := t.TempDir()
	_, err := FetchImage(context.Background(), fetchOpts(s, cache, sum, nil))
	if err == nil {
		t.Fatal("a cut-off download succeeded")
	}
	st, serr := os.Stat(filepath.Join(cache, "sha256-"+sum+".part"))
	if serr != nil || st.Size() != 300000 {
		t.Fatalf("partial file after the cut: %v %v, want 300000 bytes kept (error was %v)", st, serr, err)
	}
	path, err := FetchImage(context.Background(), fetchOpts(s, cache, sum, nil))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Fatal("file differs after resuming")
	}
	if _, ranges, _ := s.stats(); len(ranges) != 2 || ranges[1] != "bytes=300000-" {
		t.Errorf("ranges %q, want the second request to resume at 300000", ranges)
	}
}

func TestFetchImageServerWithoutRange(t *testing.T) {
	data, sum := randomImage(t, 500000)
	s := newImageServer(t, data)
	s.ignoreRange = true
	cache := t.TempDir()
	// A partial file whose bytes are wrong: if the 200 answer were appended to it, or its
	// bytes kept, the digest could not match.
	if err := os.WriteFile(filepath.Join(cache, "sha256-"+sum+".part"), bytes.Repeat([]byte{1}, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	path, err := FetchImage(context.Background(), fetchOpts(s, cache, sum, nil))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Fatal("file differs")
	}
}

func TestFetchImageStartsOverWhenResumedDigestIsWrong(t *testing.T) {
	data, sum := randomImage(t, 400000)
	s := newImageServer(t, data)
	cache := t.TempDir()
	// The first 1000 bytes of an older file: resuming yields the wrong digest, and only a
	// fresh download can tell whether the server's file is the right one.
	if err := os.WriteFile(filepath.Join(cache, "sha256-"+sum+".part"), bytes.Repeat([]byte{7}, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	path, err := FetchImage(context.Background(), fetchOpts(s, cache, sum, nil))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Fatal("file differs")
	}
	if _, ranges, _ := s.stats(); len(ranges) != 2 || ranges[0] != "bytes=1000-" || ranges[1] != "" {
		t.Errorf("ranges %q, want a resume then a full download", ranges)
	}
}

func TestFetchImageOffline(t *testing.T) {
	data, sum := randomImage(t, 65536)
	s := newImageServer(t, data)
	cache := t.TempDir()
	o := fetchOpts(s, cache, sum, nil)
	o.Offline = true

	_, err := FetchImage(context.Background(), o)
	if err == nil {
		t.Fatal("offline fetch of an image not in the cache succeeded")
	}
	for _, want := range []string{"OFFLINE=1", filepath.Join(cache, "sha256-"+sum), "IMAGE=file:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if n, _, _ := s.stats(); n != 0 {
		t.Errorf("offline fetch made %d requests", n)
	}

	o.Offline = false
	if _, err := FetchImage(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	s.Close() // from here on any request would fail
	o.Offline = true
	path, err := FetchImage(context.Background(), o)
	if err != nil {
		t.Fatalf("offline fetch with the image in the cache: %v", err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Fatal("cached file differs")
	}
}

func TestFetchImageNeedsDigest(t *testing.T) {
	for _, sum := range []string{"", "abc", strings.Repeat("g", 64)} {
		_, err := FetchImage(context.Background(), FetchOptions{URL: "http://127.0.0.1:1/x", SHA256: sum, CacheDir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), "IMAGE_SHA256") {
			t.Errorf("SHA256=%q: error %v, want one naming IMAGE_SHA256", sum, err)
		}
	}
}

func TestParseContentRange(t *testing.T) {
	for _, c := range []struct {
		in          string
		start, size int64
		ok          bool
	}{
		{"bytes 100-199/200", 100, 200, true},
		{"bytes 0-9/*", 0, -1, true},
		{"bytes */200", 0, 0, false},
		{"items 1-2/3", 0, 0, false},
	} {
		start, size, err := parseContentRange(c.in)
		if (err == nil) != c.ok || (c.ok && (start != c.start || size != c.size)) {
			t.Errorf("parseContentRange(%q) = %d, %d, %v", c.in, start, size, err)
		}
	}
}
