package realpath

import (
	"os"
	"path/filepath"
	"testing"
)

// TestResolve: ".." after a symbolic link goes to the parent of the link's
// target, as it does on disk, where filepath.Clean would drop the link
// from the text; a path that does not exist yet keeps its missing part.
func TestResolve(t *testing.T) {
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"real/inner", "other"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{
		"link":     filepath.Join(root, "real", "inner"), // absolute target
		"rel":      filepath.Join("real", "inner"),       // relative target
		"dangling": filepath.Join(root, "nowhere"),
		"loop":     filepath.Join(root, "loop"),
	} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, path, want string // want "" is an error
	}{
		{"existing directory", root + "/other", root + "/other"},
		{"trailing slash", root + "/other/", root + "/other"},
		{"missing directory", root + "/other/new/deeper", root + "/other/new/deeper"},
		{"link itself", root + "/link", root + "/real/inner"},
		{"through a link", root + "/link/new", root + "/real/inner/new"},
		{"dot-dot after a link", root + "/link/../b", root + "/real/b"},
		{"dot-dot after a relative link", root + "/rel/../b", root + "/real/b"},
		{"dot-dot twice after a link", root + "/link/../../other", root + "/other"},
		{"dot-dot into an existing sibling", root + "/link/../inner/x", root + "/real/inner/x"},
		{"dot-dot without a link", root + "/real/inner/../../other/x", root + "/other/x"},
		{"dot-dot after a missing directory", root + "/other/missing/../x", root + "/other/x"},
		{"dot and double slashes", root + "//other/./x", root + "/other/x"},
		{"root", "/", "/"},
		{"dangling link", root + "/dangling/x", ""},
		{"dangling link itself", root + "/dangling", ""},
		{"link loop", root + "/loop/x", ""},
		{"below a file", root + "/file/x", ""},
		{"relative", "other/x", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Resolve(tc.path)
			switch {
			case tc.want == "" && err == nil:
				t.Fatalf("Resolve(%q) = %q, want an error", tc.path, got)
			case tc.want != "" && err != nil:
				t.Fatalf("Resolve(%q): %v", tc.path, err)
			case got != tc.want:
				t.Fatalf("Resolve(%q) = %q, want %q", tc.path, got, tc.want)
			}
		})
	}
}
