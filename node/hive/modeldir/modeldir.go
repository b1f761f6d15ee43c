// Package modeldir holds what the code that fills a hive's models folder
// (pulls from a hub, copies from peers) shares: which paths a hub or a peer
// may name in it, how they go into a URL, the folder's free space, and how
// sizes read in messages.
package modeldir

import (
	"fmt"
	"net/url"
	"path"
	"strings"
	"syscall"
)

// SafePath accepts a relative slash path that stays inside its folder and
// names no hidden file: what a hub's or a peer's listing may hold.
func SafePath(p string) error {
	if p == "" || strings.ContainsAny(p, "\\\x00") || path.IsAbs(p) || path.Clean(p) != p {
		return fmt.Errorf("file path %q is not a plain relative path", p)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." || strings.HasPrefix(part, ".") {
			return fmt.Errorf("file path %q leaves its folder or names a hidden file", p)
		}
	}
	return nil
}

// EscapePath escapes each element of a slash path for a URL.
func EscapePath(p string) string {
	parts := strings.Split(p, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return strings.Join(parts, "/")
}

// Free is the space left to an unprivileged writer in dir's file system.
func Free(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// Size writes a byte count in binary units: "512 B", "4.7 GiB".
func Size(n int64) string {
	const unit = 1 << 10
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
