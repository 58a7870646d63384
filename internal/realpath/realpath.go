// Package realpath resolves a directory argument the way the kernel will
// when it is used, so that a check made on the path is made on the place
// the operation then writes to.
package realpath

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Resolve returns the absolute path that path names on disk now. Every
// symbolic link of the part that exists is resolved, and each ".." goes to
// the parent of the real directory before it, as the kernel does; the
// text is not cleaned first (filepath.Clean reads "/a/link/../b" as
// "/a/b", where the kernel goes to the parent of link's target). The rest,
// which does not exist yet, is appended cleaned: it holds no links, and
// once created it is made of real directories. path must be absolute.
//
// A link that points nowhere, a component that is not a directory, a
// loop of links and a directory that cannot be searched are errors: the
// path names no place a directory could be created at.
func Resolve(path string) (string, error) {
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("%q is not an absolute path", path)
	}
	sep := string(filepath.Separator)
	parts := strings.Split(path, sep)
	// The longest leading part of path, as written, that exists.
	for i := len(parts); i > 1; i-- {
		prefix := strings.Join(parts[:i], sep)
		real, err := filepath.EvalSymlinks(prefix)
		if err == nil {
			return filepath.Join(append([]string{real}, parts[i:]...)...), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		if _, lerr := os.Lstat(prefix); lerr == nil {
			// It is there, yet does not resolve: a link to nothing.
			return "", &fs.PathError{Op: "resolve", Path: prefix, Err: errors.New("symbolic link to a path that does not exist")}
		}
	}
	return filepath.Clean(path), nil
}
