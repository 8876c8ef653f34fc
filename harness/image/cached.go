package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
)

// ErrNotCached is wrapped by CachedDebianCloud's error when the image is not in the cache.
var ErrNotCached = errors.New("not in the cache")

// CachedDebianCloud returns the debian-cloud image BuildDebianCloud would return, but only if
// it is in the cache already; otherwise its error wraps ErrNotCached. It is for callers that
// may use the image but must not spend minutes building it (make bench). It still resolves the
// inputs with apt, from the host's package lists. A found image is remembered as a built one
// is, so that a later BuildDebianCloud or Prepare in this process does not resolve them again.
func CachedDebianCloud(ctx context.Context) (*Cloud, error) {
	return cloudImages.get(ctx, nil, lookupCloudIn)
}

// lookupCloudIn loads the image of the current inputs from root, without building.
func lookupCloudIn(ctx context.Context, root string, progress io.Writer) (*Cloud, error) {
	in, err := resolveCloudInputs(ctx, root, progress)
	if err != nil {
		return nil, fmt.Errorf("look up the debian-cloud image: %w", err)
	}
	dir := filepath.Join(root, "debian-cloud-"+in.key())
	c, err := LoadDebianCloud(dir)
	if err != nil {
		// Whatever makes the directory unusable makes BuildDebianCloud build it anew.
		return nil, fmt.Errorf("debian-cloud image %s: %w: %w", dir, ErrNotCached, err)
	}
	return c, nil
}
