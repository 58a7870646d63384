package layering

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/singularity-ng/singularity-edge/"

// allowed is the table of docs/ARCHITECTURE.md: the module packages each
// package may import (test files excepted).
var allowed = map[string][]string{
	"cluster":                   {},
	"internal/fielderr":         {},
	"internal/layering":         {},
	"internal/ratelog":          {},
	"internal/atomicfile":       {},
	"internal/realpath":         {},
	"internal/osslsign":         {},
	"internal/tunnelloop":       {},
	"internal/nettest":          {},
	"storage":                   {"storage/internal/bgerror", "storage/internal/memhint"},
	"storage/internal/bgerror":  {"storage/internal/rocksabi"},
	"storage/internal/memhint":  {"storage/internal/rocksabi"},
	"storage/internal/rocksabi": {},
	"apitypes":                  {"cluster"},
	"discovery":                 {"cluster", "internal/atomicfile"},
	"replication":               {"cluster", "storage"},
	"certs":                     {"internal/fielderr", "internal/osslsign", "storage"},
	"pools":                     {"internal/fielderr", "internal/ratelog", "storage"},
	"proxy":                     {"internal/ratelog", "internal/tunnelloop", "pools"},
	"admin":                     {"apitypes", "certs", "internal/fielderr", "internal/realpath", "pools", "storage"},
	"agent":                     {"admin", "apitypes", "certs", "cluster", "discovery", "internal/atomicfile", "pools", "proxy", "replication", "storage"},
	"cmd/singularity-edge":      {"agent", "apitypes", "internal/realpath", "storage"},
	"scripts/benchscale":        {"storage"},
	"scripts/benchcluster":      nil,
}

func TestImportRules(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); strings.HasPrefix(name, ".") || name == "testdata" || name == "test" || name == "bench" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		rel = filepath.ToSlash(rel)
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		rules, known := allowed[rel]
		if !known {
			t.Errorf("package %s is not in the import rules (docs/ARCHITECTURE.md and this table)", rel)
			return nil
		}
		seen[rel] = true
		for _, imp := range f.Imports {
			p := strings.Trim(imp.Path.Value, `"`)
			dep, ok := strings.CutPrefix(p, module)
			if !ok {
				continue
			}
			if !contains(rules, dep) {
				t.Errorf("%s imports %s, which the import rules do not allow (%s)", rel, dep, filepath.Base(path))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for p := range allowed {
		if !seen[p] {
			missing = append(missing, p)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("packages in the rules but not found: %v", missing)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
