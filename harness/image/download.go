package image

// Downloaded images (IMAGE=url:<URL> with IMAGE_SHA256=<hex>) live in a content-addressed
// cache: <cache>/downloads/sha256-<hex>. A file gets there only by a rename after its digest
// was checked, so anything found there is trusted without hashing it again. An interrupted
// download stays as sha256-<hex>.part and the next attempt asks the server for the rest (an
// HTTP Range request); a server that ignores Range sends the whole file, which replaces the
// partial one.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// FetchOptions say what to download and how.
type FetchOptions struct {
	// URL is the image's address (http or https).
	URL string
	// SHA256 is the hex digest the file must have; it names the file in the cache.
	SHA256 string
	// Offline forbids the network: only the cache is used.
	Offline bool
	// CacheDir is where downloads are kept; empty means <CacheRoot>/downloads.
	CacheDir string
	// Client makes the requests; nil means http.DefaultClient (which honours the proxy
	// environment variables).
	Client *http.Client
	// Progress gets a line when the download starts or resumes, about every 2 s or 10 % while
	// it runs, and when it ends. Nil discards them.
	Progress io.Writer
}

// FetchImage returns the path of the cached file with digest o.SHA256, downloading o.URL into
// the cache first (or the rest of it, after an interrupted attempt) unless it is there.
// Concurrent callers for one digest share one download through a lock file.
func FetchImage(ctx context.Context, o FetchOptions) (string, error) {
	want := strings.ToLower(strings.TrimSpace(o.SHA256))
	if want == "" {
		return "", fmt.Errorf("IMAGE=url:%s needs IMAGE_SHA256=<the sha256 of the image file> (sha256sum prints it)", o.URL)
	}
	if b, err := hex.DecodeString(want); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("IMAGE_SHA256=%s is not a sha256 digest (64 hex digits)", o.SHA256)
	}
	progress := o.Progress
	if progress == nil {
		progress = io.Discard
	}
	dir := o.CacheDir
	if dir == "" {
		root, err := CacheRoot()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(root, "downloads")
	}
	final := filepath.Join(dir, "sha256-"+want)
	if _, err := os.Stat(final); err == nil {
		return final, nil
	}
	if o.Offline {
		return "", fmt.Errorf("IMAGE=url:%s (sha256 %s) is not in the cache (%s) and OFFLINE=1 forbids downloading it: "+
			"run once without OFFLINE=1, copy the file to that path, or boot a local file with IMAGE=file:<path>", o.URL, want, final)
	}
	if o.URL == "" {
		return "", fmt.Errorf("no URL to download sha256 %s from", want)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create download cache: %w", err)
	}
	unlock, err := lockFile(ctx, final+".lock", progress)
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(final); err == nil {
		return final, nil // another process downloaded it while we waited
	}
	client := o.Client
	if client == nil {
		client = http.DefaultClient
	}
	part := final + ".part"
	err = download(ctx, client, o.URL, part, want, progress)
	var bad *digestError
	if errors.As(err, &bad) && bad.resumed {
		// The partial file came from an earlier attempt, maybe of a file that has changed on
		// the server since: one fresh attempt settles it.
		fmt.Fprintf(progress, "download: %v; starting over\n", err)
		err = download(ctx, client, o.URL, part, want, progress)
	}
	if err != nil {
		return "", err
	}
	if err := os.Chmod(part, 0o444); err != nil {
		return "", fmt.Errorf("download: %w", err)
	}
	if err := os.Rename(part, final); err != nil {
		return "", fmt.Errorf("download: install %s: %w", final, err)
	}
	return final, nil
}

// digestError is a complete download whose digest is wrong; the partial file is gone.
type digestError struct {
	url, got, want string
	resumed        bool
}

func (e *digestError) Error() string {
	return fmt.Sprintf("download %s: its sha256 is %s, but IMAGE_SHA256 says %s", e.url, e.got, e.want)
}

// download fetches url into part, resuming from part's current size, and checks the whole
// file's digest. On a network error part keeps what arrived.
func download(ctx context.Context, client *http.Client, url, part, want string, progress io.Writer) error {
	f, err := os.OpenFile(part, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	have, err := io.Copy(h, f) // the digest covers the bytes already there
	if err != nil {
		return fmt.Errorf("download: read partial file: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	if have > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", have))
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("download %s: %w", url, err)
	}
	defer resp.Body.Close()
	resumed := false
	var total int64 // every case that goes on sets it
	switch {
	case resp.StatusCode == http.StatusPartialContent && have > 0:
		start, size, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || start != have {
			return fmt.Errorf("download %s: asked for bytes from %d, got Content-Range %q", url, have, resp.Header.Get("Content-Range"))
		}
		resumed, total = true, size
		fmt.Fprintf(progress, "download: resuming %s at %s\n", url, mb(have))
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && have > 0:
		// Asked for bytes past the end: the partial file may already be whole.
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			f.Close()
			os.Remove(part)
			return &digestError{url: url, got: got, want: want, resumed: true}
		}
		fmt.Fprintf(progress, "download: %s was already complete (%s)\n", url, mb(have))
		return nil
	case resp.StatusCode == http.StatusOK:
		if have > 0 {
			fmt.Fprintf(progress, "download: %s does not resume (HTTP 200 to a Range request): starting over\n", url)
		}
		if err := f.Truncate(0); err != nil {
			return fmt.Errorf("download: %w", err)
		}
		have = 0
		h.Reset()
		total = resp.ContentLength
		fmt.Fprintf(progress, "download: %s (%s)\n", url, mb(total))
	default:
		return fmt.Errorf("download %s: HTTP %s", url, resp.Status)
	}
	if _, err := f.Seek(have, io.SeekStart); err != nil {
		return fmt.Errorf("download: %w", err)
	}
	pw := &progressWriter{w: progress, done: have, total: total, start: time.Now(), startAt: have}
	n, err := io.Copy(io.MultiWriter(f, h, pw), resp.Body)
	if err != nil {
		return fmt.Errorf("download %s: interrupted after %s (run again to resume): %w", url, mb(have+n), err)
	}
	if total >= 0 && have+n != total {
		return fmt.Errorf("download %s: got %d of %d bytes (run again to resume)", url, have+n, total)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("download: %w", err)
	}
	pw.finish()
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		f.Close()
		os.Remove(part)
		return &digestError{url: url, got: got, want: want, resumed: resumed}
	}
	return nil
}

// parseContentRange reads "bytes START-END/SIZE" (SIZE may be "*", giving -1).
func parseContentRange(v string) (start, size int64, err error) {
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, 0, fmt.Errorf("content range %q", v)
	}
	rng, sz, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, fmt.Errorf("content range %q", v)
	}
	s, _, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, fmt.Errorf("content range %q", v)
	}
	if start, err = strconv.ParseInt(s, 10, 64); err != nil {
		return 0, 0, fmt.Errorf("content range %q: %w", v, err)
	}
	size = -1
	if sz != "*" {
		if size, err = strconv.ParseInt(sz, 10, 64); err != nil {
			return 0, 0, fmt.Errorf("content range %q: %w", v, err)
		}
	}
	return start, size, nil
}

func mb(n int64) string {
	if n < 0 {
		return "size unknown"
	}
	return fmt.Sprintf("%.1f MB", float64(n)/1e6)
}

// progressWriter prints the download's progress: often enough to show it moves, rarely enough
// not to flood a test log.
type progressWriter struct {
	w             io.Writer
	done, total   int64
	start         time.Time
	startAt       int64 // bytes there before this attempt, for the rate
	lastT         time.Time
	lastPct       int64
	ratePerSecond float64
}

func (p *progressWriter) Write(b []byte) (int, error) {
	p.done += int64(len(b))
	now := time.Now()
	pct := int64(-1)
	if p.total > 0 {
		pct = p.done * 100 / p.total
	}
	if now.Sub(p.lastT) >= 2*time.Second || (pct >= 0 && pct/10 > p.lastPct/10) {
		p.lastT, p.lastPct = now, pct
		p.line(now)
	}
	return len(b), nil
}

func (p *progressWriter) line(now time.Time) {
	if el := now.Sub(p.start).Seconds(); el > 0 {
		p.ratePerSecond = float64(p.done-p.startAt) / el
	}
	if p.total > 0 {
		fmt.Fprintf(p.w, "download: %s of %s (%d%%), %.1f MB/s\n", mb(p.done), mb(p.total), p.done*100/p.total, p.ratePerSecond/1e6)
		return
	}
	fmt.Fprintf(p.w, "download: %s, %.1f MB/s\n", mb(p.done), p.ratePerSecond/1e6)
}

func (p *progressWriter) finish() {
	p.line(time.Now())
	fmt.Fprintf(p.w, "download: done in %.1fs\n", time.Since(p.start).Seconds())
}
