package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/admin"
	"github.com/singularity-ng/singularity-edge/storage"
)

// The db commands run in-process against real stores in temp dirs.

const dbTestKeyHex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

// secretKeyPEM is the private key seeded into the store; no command output
// may contain it.
const secretKeyPEM = "-----BEGIN PRIVATE KEY-----\nTUlJRXZRSUJBREFOQmdrcWhraUc5dzBCQVFFRkFBU0NCS2N3Z2dTakFnRUFBb0lCQVFD\n-----END PRIVATE KEY-----\n"

// dbEnv clears the environment the db commands read and sets the
// encryption key the seeded stores use.
func dbEnv(t *testing.T) {
	t.Helper()
	t.Setenv("EDGE_API", "")
	t.Setenv("EDGE_DATA_DIR", "")
	t.Setenv("EDGE_ADMIN_TOKEN", "")
	t.Setenv("EDGE_ENCRYPTION_KEY", dbTestKeyHex)
}

func dbTestKey(t *testing.T) []byte {
	t.Helper()
	key, err := hex.DecodeString(dbTestKeyHex)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func openTestStore(t *testing.T, dir string) *storage.Store {
	t.Helper()
	cfg := storage.DefaultConfig()
	cfg.Dir, cfg.EncryptionKey, cfg.SyncWAL = dir, dbTestKey(t), false
	st, err := storage.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// seedStore creates a store in dir with pools, backends, a certificate with
// a private key, an observation and a tombstone, and returns its node id.
func seedStore(t *testing.T, dir string, backends int) string {
	t.Helper()
	st := openTestStore(t, dir)
	defer st.Close()
	ctx := context.Background()
	_, err := st.Update(ctx, func(tx *storage.Tx) error {
		for _, name := range []string{"web", "api", "old"} {
			p := storage.Pool{Name: name, Algorithm: "round_robin", SSLMode: "off"}
			if err := tx.PutPool(&p); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Backends in transactions within the change-set bound.
	for lo := 0; lo < backends; lo += storage.MaxChangeSetRows {
		if _, err := st.Update(ctx, func(tx *storage.Tx) error {
			for i := lo; i < min(backends, lo+storage.MaxChangeSetRows); i++ {
				b := storage.Backend{ID: fmt.Sprintf("be-%04d", i), PoolName: []string{"web", "api"}[i%2],
					Host: fmt.Sprintf("10.0.0.%d", i%250+1), Port: 8080, Scheme: "http", Weight: 1}
				if err := tx.PutBackend(&b); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = st.Update(ctx, func(tx *storage.Tx) error {
		c := storage.Certificate{ID: "cert-1", Domain: "www.example.com", Names: []string{"www.example.com"},
			CertificatePEM: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", PrivateKeyPEM: secretKeyPEM,
			ExpiresAt: time.Now().Add(60 * 24 * time.Hour).UTC().Truncate(time.Second), Provider: "upload"}
		if err := tx.PutCertificate(&c); err != nil {
			return err
		}
		return tx.PutObservation(&storage.Observation{BackendID: "be-0000", PoolName: "web", Healthy: true, TotalRequests: 42})
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Update(ctx, func(tx *storage.Tx) error { return tx.DeletePool("old") }); err != nil {
		t.Fatal(err)
	}
	return st.NodeID()
}

// rowsOf exports the store in dir and returns its row lines (without the
// header, which names the node and the time), sorted: two stores with the
// same rows and versions give the same lines.
func rowsOf(t *testing.T, dir string) []string {
	t.Helper()
	st := openTestStore(t, dir)
	defer st.Close()
	return rowsOfStore(t, st)
}

func rowsOfStore(t *testing.T, st *storage.Store) []string {
	t.Helper()
	var buf bytes.Buffer
	if _, err := st.Export(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")[1:]
	sort.Strings(lines)
	return lines
}

func wantCode(t *testing.T, what string, got, want int, stderr string) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: exit code %d, want %d; stderr: %s", what, got, want, stderr)
	}
}

func noSecret(t *testing.T, outputs ...string) {
	t.Helper()
	for _, o := range outputs {
		if strings.Contains(o, "TUlJRXZRSUJBREFOQmdrcWhraUc5dzBCQVFFRkFBU0NCS2N3Z2dTakFnRUFBb0lCQVFD") {
			t.Fatalf("output contains the private key in clear:\n%s", o)
		}
	}
}

func TestDBInfoAndTables(t *testing.T) {
	dbEnv(t)
	dir := filepath.Join(t.TempDir(), "data")
	node := seedStore(t, dir, 20)

	out, errOut, code := runCLI(t, "", "db", "info", "--data-dir", dir)
	wantCode(t, "db info", code, 0, errOut)
	for _, want := range []string{node, dir, "certificates, pools, backends, observations", "data directory (agent stopped)"} {
		if !strings.Contains(out, want) {
			t.Errorf("db info output lacks %q:\n%s", want, out)
		}
	}

	// EDGE_DATA_DIR is the default of --data-dir.
	t.Setenv("EDGE_DATA_DIR", dir)
	out, errOut, code = runCLI(t, "", "db", "info", "-o", "json")
	wantCode(t, "db info -o json", code, 0, errOut)
	var info admin.DBInfoResponse
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("db info -o json: %v\n%s", err, out)
	}
	if info.NodeID != node || info.Dir != dir || info.LastIndex != 4 || info.Watermarks[node] != 4 || info.Ready != "yes" || info.HLC == 0 {
		t.Errorf("db info -o json = %+v, want node %s, dir %s, last index 4 (seedStore commits 4 times)", info, node, dir)
	}

	out, errOut, code = runCLI(t, "", "db", "tables")
	wantCode(t, "db tables", code, 0, errOut)
	for _, want := range []string{"NAME", "backends", "changelog", "internal", "Block cache (shared)"} {
		if !strings.Contains(out, want) {
			t.Errorf("db tables output lacks %q:\n%s", want, out)
		}
	}
	out, errOut, code = runCLI(t, "", "db", "tables", "-o", "json")
	wantCode(t, "db tables -o json", code, 0, errOut)
	var tables admin.DBTablesResponse
	if err := json.Unmarshal([]byte(out), &tables); err != nil {
		t.Fatalf("db tables -o json: %v\n%s", err, out)
	}
	names := map[string]admin.DBTableStats{}
	for _, tb := range tables.Tables {
		names[tb.Name] = tb
	}
	if len(names) != len(storage.TableNames())+4 || names["backends"].Internal || !names["index"].Internal || names["backends"].EstimatedKeys == 0 {
		t.Errorf("db tables -o json = %+v", tables)
	}
	if tables.BlockCache.CapacityBytes != 64<<20 {
		t.Errorf("block cache capacity %d, want 64 MiB", tables.BlockCache.CapacityBytes)
	}
}

func TestDBMissingStoreIsNotCreated(t *testing.T) {
	dbEnv(t)
	dir := filepath.Join(t.TempDir(), "nothing-here")
	for _, args := range [][]string{
		{"db", "info", "--data-dir", dir},
		{"db", "tables", "--data-dir", dir},
		{"db", "compact", "pools", "--data-dir", dir},
		{"db", "export", "--data-dir", dir},
	} {
		_, errOut, code := runCLI(t, "", args...)
		wantCode(t, strings.Join(args, " "), code, exitNotFound, errOut)
		if !strings.Contains(errOut, "no store in "+dir) {
			t.Errorf("%v: stderr %q does not say there is no store", args, errOut)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the data directory was created: %v", err)
	}
}

func TestDBStatsAndCompact(t *testing.T) {
	dbEnv(t)
	dir := filepath.Join(t.TempDir(), "data")
	seedStore(t, dir, 10)

	out, errOut, code := runCLI(t, "", "db", "stats", "backends", "--data-dir", dir)
	wantCode(t, "db stats backends", code, 0, errOut)
	if !strings.Contains(out, "Compaction Stats") {
		t.Errorf("db stats backends does not look like RocksDB statistics:\n%s", out)
	}
	out, errOut, code = runCLI(t, "", "db", "stats", "feed", "--data-dir", dir, "-o", "json")
	wantCode(t, "db stats feed -o json", code, 0, errOut)
	var stats admin.DBStatsResponse
	if err := json.Unmarshal([]byte(out), &stats); err != nil || stats.Table != "feed" || stats.Stats == "" {
		t.Errorf("db stats feed -o json = %+v (%v)", stats, err)
	}

	out, errOut, code = runCLI(t, "", "db", "compact", "pools", "--data-dir", dir)
	wantCode(t, "db compact pools", code, 0, errOut)
	if !strings.HasPrefix(out, "Compacted pools in ") {
		t.Errorf("db compact pools printed %q", out)
	}

	before := rowsOf(t, dir)
	for _, cmd := range []string{"stats", "compact"} {
		_, errOut, code = runCLI(t, "", "db", cmd, "nope", "--data-dir", dir)
		wantCode(t, "db "+cmd+" nope", code, exitInvalid, errOut)
		want := `unknown table "nope": the tables are ` + strings.Join(storage.TableNames(), ", ") + ` (internal column families: index, changelog, feed, meta)`
		if !strings.Contains(errOut, want) {
			t.Errorf("db %s nope: stderr %q lacks %q", cmd, errOut, want)
		}
	}
	if after := rowsOf(t, dir); strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Error("a failed command changed the rows")
	}

	_, errOut, code = runCLI(t, "", "db", "stats", "--data-dir", dir)
	wantCode(t, "db stats without a table", code, exitUsage, errOut)
}

func TestDBExportImport(t *testing.T) {
	dbEnv(t)
	root := t.TempDir()
	src := filepath.Join(root, "src")
	seedStore(t, src, 2500) // more than one import batch
	want := rowsOf(t, src)

	file := filepath.Join(root, "export.jsonl")
	out, errOut, code := runCLI(t, "", "db", "export", file, "--data-dir", src)
	wantCode(t, "db export FILE", code, 0, errOut)
	rows := len(want)
	if !strings.Contains(out, "Exported "+strconv.Itoa(rows)+" rows") {
		t.Errorf("db export printed %q, want %d rows", out, rows)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	noSecret(t, string(data), out, errOut)

	// An existing file is kept unless --force.
	_, errOut, code = runCLI(t, "", "db", "export", file, "--data-dir", src)
	wantCode(t, "db export to an existing file", code, exitConflict, errOut)
	if after, _ := os.ReadFile(file); !bytes.Equal(after, data) {
		t.Error("a refused export changed the existing file")
	}
	_, errOut, code = runCLI(t, "", "db", "export", file, "--force", "--data-dir", src)
	wantCode(t, "db export --force", code, 0, errOut)

	// To stdout: the export is the only thing on stdout.
	stdout, errOut, code := runCLI(t, "", "db", "export", "--data-dir", src)
	wantCode(t, "db export -", code, 0, errOut)
	if lines := strings.Count(stdout, "\n"); lines != rows+1 {
		t.Errorf("db export to stdout wrote %d lines, want %d", lines, rows+1)
	}
	if !strings.Contains(errOut, "Exported "+strconv.Itoa(rows)+" rows") {
		t.Errorf("db export - summary %q", errOut)
	}
	noSecret(t, stdout)

	// Import from a file into a new directory, and from stdin into another.
	dst := filepath.Join(root, "dst")
	out, errOut, code = runCLI(t, "", "db", "import", file, "--data-dir", dst)
	wantCode(t, "db import FILE", code, 0, errOut)
	if !strings.Contains(out, "Imported "+strconv.Itoa(rows)+" rows into "+dst) {
		t.Errorf("db import printed %q", out)
	}
	if got := rowsOf(t, dst); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("imported rows differ from the exported store:\n got %d rows\nwant %d rows", len(got), len(want))
	}
	st := openTestStore(t, dst)
	c, err := st.GetCertificate(context.Background(), "cert-1")
	st.Close()
	if err != nil || c.PrivateKeyPEM != secretKeyPEM {
		t.Errorf("imported certificate: key restored %v, err %v", c.PrivateKeyPEM == secretKeyPEM, err)
	}

	dst2 := filepath.Join(root, "dst2")
	out, errOut, code = runCLI(t, stdout, "db", "import", "-", "--data-dir", dst2, "-o", "json")
	wantCode(t, "db import -", code, 0, errOut)
	var res dbTransferJSON
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Rows != rows || res.File != "-" || res.DataDir != dst2 {
		t.Errorf("db import - -o json = %+v (%v)", res, err)
	}

	// Importing again changes nothing.
	out, errOut, code = runCLI(t, "", "db", "import", file, "--data-dir", dst)
	wantCode(t, "db import twice", code, 0, errOut)
	if !strings.Contains(out, "Imported 0 rows") {
		t.Errorf("second import printed %q", out)
	}
}

func TestDBImportBadInputChangesNothing(t *testing.T) {
	dbEnv(t)
	root := t.TempDir()
	src := filepath.Join(root, "src")
	seedStore(t, src, 1500)
	export, errOut, code := runCLI(t, "", "db", "export", "--data-dir", src)
	wantCode(t, "db export", code, 0, errOut)
	lines := strings.Split(strings.TrimSpace(export), "\n")
	// A bad line after the first import batch: storage would keep the
	// batch before it; the CLI's check must stop before that.
	bad := strings.Join(append(append(append([]string{}, lines[:1200]...), `{"table":"pools","key":`), lines[1200:]...), "\n")

	tests := []struct {
		name  string
		input string
		want  string
	}{
		{"broken line", bad, "import line 1201"},
		{"unknown table", lines[0] + "\n" + `{"table":"nope","key":"x","version":{"hlc":1,"origin":"n","seq":1},"row":{}}`, `"nope"`},
		{"no header", strings.Join(lines[1:], "\n"), "line 1 is not a singularity-edge-export header"},
		{"empty", "", "empty input"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			existing := filepath.Join(t.TempDir(), "existing")
			seedStore(t, existing, 3)
			before := rowsOf(t, existing)
			_, errOut, code := runCLI(t, tc.input, "db", "import", "--data-dir", existing)
			wantCode(t, "db import", code, exitInvalid, errOut)
			if !strings.Contains(errOut, tc.want) || !strings.Contains(errOut, "nothing was written") {
				t.Errorf("stderr %q lacks %q and \"nothing was written\"", errOut, tc.want)
			}
			if after := rowsOf(t, existing); strings.Join(after, "\n") != strings.Join(before, "\n") {
				t.Error("a refused import changed the existing store")
			}
			fresh := filepath.Join(t.TempDir(), "fresh")
			_, errOut, code = runCLI(t, tc.input, "db", "import", "--data-dir", fresh)
			wantCode(t, "db import into a new dir", code, exitInvalid, errOut)
			if _, err := os.Stat(fresh); !os.IsNotExist(err) {
				t.Errorf("a refused import created %s", fresh)
			}
		})
	}

	_, errOut, code = runCLI(t, "", "db", "import", filepath.Join(root, "missing.jsonl"), "--data-dir", src)
	wantCode(t, "db import of a missing file", code, exitNotFound, errOut)
}

func TestDBBackupRestore(t *testing.T) {
	dbEnv(t)
	root := t.TempDir()
	src := filepath.Join(root, "src")
	node := seedStore(t, src, 50)
	want := rowsOf(t, src)
	backups := filepath.Join(root, "backups")

	out, errOut, code := runCLI(t, "", "db", "backup", backups, "--data-dir", src)
	wantCode(t, "db backup", code, 0, errOut)
	if !strings.HasPrefix(out, "Backup 1 written to "+backups) {
		t.Errorf("db backup printed %q", out)
	}
	// A second backup after a change: restoring 1 must not see the change.
	st := openTestStore(t, src)
	if _, err := st.Update(context.Background(), func(tx *storage.Tx) error { return tx.DeleteBackend("be-0001") }); err != nil {
		t.Fatal(err)
	}
	st.Close()
	out, errOut, code = runCLI(t, "", "db", "backup", backups, "--data-dir", src, "-o", "json")
	wantCode(t, "db backup -o json", code, 0, errOut)
	var b admin.DBBackupResponse
	if err := json.Unmarshal([]byte(out), &b); err != nil || b.ID != 2 || b.Dir != backups || b.NumFiles == 0 {
		t.Errorf("db backup -o json = %+v (%v)", b, err)
	}
	latest := rowsOf(t, src)

	restored := filepath.Join(root, "restored")
	out, errOut, code = runCLI(t, "", "db", "restore", backups, "--backup-id", "1", "--data-dir", restored)
	wantCode(t, "db restore --backup-id 1", code, 0, errOut)
	if !strings.HasPrefix(out, "Restored backup 1 ") {
		t.Errorf("db restore printed %q", out)
	}
	if got := rowsOf(t, restored); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("restored backup 1 differs from the store at backup time (%d rows, want %d)", len(got), len(want))
	}

	// A non-empty data dir is refused without --force and left alone.
	other := filepath.Join(root, "other")
	otherNode := seedStore(t, other, 2)
	otherRows := rowsOf(t, other)
	_, errOut, code = runCLI(t, "", "db", "restore", backups, "--data-dir", other)
	wantCode(t, "db restore into a non-empty dir", code, exitConflict, errOut)
	if !strings.Contains(errOut, "is not empty") || !strings.Contains(errOut, "--force") {
		t.Errorf("stderr %q does not explain --force", errOut)
	}
	if got := rowsOf(t, other); strings.Join(got, "\n") != strings.Join(otherRows, "\n") {
		t.Error("a refused restore changed the data directory")
	}
	out, errOut, code = runCLI(t, "", "db", "restore", backups, "--force", "--data-dir", other)
	wantCode(t, "db restore --force", code, 0, errOut)
	if !strings.HasPrefix(out, "Restored backup 2 ") {
		t.Errorf("db restore --force printed %q", out)
	}
	if got := rowsOf(t, other); strings.Join(got, "\n") != strings.Join(latest, "\n") {
		t.Errorf("restore --force did not replace the rows (%d rows, want %d)", len(got), len(latest))
	}
	out, errOut, code = runCLI(t, "", "db", "info", "--data-dir", other, "-o", "json")
	wantCode(t, "db info after restore", code, 0, errOut)
	if !strings.Contains(out, node) || strings.Contains(out, otherNode) {
		t.Errorf("after restore the node id is not the backed-up store's: %s", out)
	}

	// A backup directory with a file where the engine keeps a directory is
	// the caller's mistake (exit 3, as through the API), and nothing is
	// written there.
	for _, sub := range []string{"meta", "private", "shared_checksum"} {
		d := filepath.Join(root, sub+"-is-a-file")
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, sub), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, errOut, code = runCLI(t, "", "db", "backup", d, "--data-dir", src)
		wantCode(t, "db backup where "+sub+" is a file", code, exitInvalid, errOut)
		if !strings.Contains(errOut, filepath.Join(d, sub)) {
			t.Errorf("stderr %q does not name the file in the way", errOut)
		}
		if entries, err := os.ReadDir(d); err != nil || len(entries) != 1 {
			t.Errorf("a refused backup left %d entries in %s (%v)", len(entries), d, err)
		}
	}
	blocker := filepath.Join(root, "blocker")
	if err := os.WriteFile(blocker, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = runCLI(t, "", "db", "checkpoint", filepath.Join(blocker, "cp"), "--data-dir", src)
	wantCode(t, "db checkpoint under a file", code, exitInvalid, errOut)

	_, errOut, code = runCLI(t, "", "db", "restore", backups, "--backup-id", "9", "--data-dir", filepath.Join(root, "x"))
	wantCode(t, "db restore --backup-id 9", code, exitNotFound, errOut)
	if !strings.Contains(errOut, "no backup 9") || !strings.Contains(errOut, "1, 2") {
		t.Errorf("stderr %q does not list the backups", errOut)
	}
	_, errOut, code = runCLI(t, "", "db", "restore", filepath.Join(root, "no-backups"), "--data-dir", filepath.Join(root, "y"))
	wantCode(t, "db restore from a non-backup dir", code, exitNotFound, errOut)
	if _, err := os.Stat(filepath.Join(root, "y")); !os.IsNotExist(err) {
		t.Error("a failed restore created the data directory")
	}
}

func TestDBCheckpoint(t *testing.T) {
	dbEnv(t)
	root := t.TempDir()
	src := filepath.Join(root, "src")
	seedStore(t, src, 30)
	cp := filepath.Join(root, "cp")
	out, errOut, code := runCLI(t, "", "db", "checkpoint", cp, "--data-dir", src)
	wantCode(t, "db checkpoint", code, 0, errOut)
	if !strings.HasPrefix(out, "Checkpoint written to "+cp) {
		t.Errorf("db checkpoint printed %q", out)
	}
	if got, want := rowsOf(t, cp), rowsOf(t, src); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Error("the checkpoint's rows differ from the store's")
	}
	_, errOut, code = runCLI(t, "", "db", "checkpoint", cp, "--data-dir", src)
	wantCode(t, "db checkpoint into an existing dir", code, exitConflict, errOut)
}

func TestDBLockedStore(t *testing.T) {
	dbEnv(t)
	root := t.TempDir()
	dir := filepath.Join(root, "data")
	seedStore(t, dir, 5)
	backups := filepath.Join(root, "backups")
	_, errOut, code := runCLI(t, "", "db", "backup", backups, "--data-dir", dir)
	wantCode(t, "db backup", code, 0, errOut)

	running := openTestStore(t, dir) // stands for the agent
	defer running.Close()
	want := "the store in " + dir + " is in use by a running agent; use --api to ask it, or stop it"
	for _, args := range [][]string{
		{"db", "info", "--data-dir", dir},
		{"db", "tables", "--data-dir", dir},
		{"db", "compact", "pools", "--data-dir", dir},
		{"db", "export", "--data-dir", dir},
		{"db", "restore", backups, "--force", "--data-dir", dir},
	} {
		_, errOut, code := runCLI(t, "", args...)
		wantCode(t, strings.Join(args, " "), code, exitUnavailable, errOut)
		if !strings.Contains(errOut, want) {
			t.Errorf("%v: stderr %q lacks %q", args, errOut, want)
		}
	}
	if _, err := running.GetPool(context.Background(), "web"); err != nil {
		t.Fatalf("the running store was disturbed: %v", err)
	}
}

func TestDBFlagErrors(t *testing.T) {
	dbEnv(t)
	dir := filepath.Join(t.TempDir(), "data")
	seedStore(t, dir, 1)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"db", "info", "--api", "http://127.0.0.1:1", "--data-dir", dir}, "exclude each other"},
		{[]string{"db", "export", "--api", "http://127.0.0.1:1"}, "works on a stopped agent's data directory only"},
		{[]string{"db", "import", "--api", "http://127.0.0.1:1"}, "works on a stopped agent's data directory only"},
		{[]string{"db", "restore", "/tmp/b", "--api", "http://127.0.0.1:1"}, "works on a stopped agent's data directory only"},
		{[]string{"db", "info", "--data-dir", dir, "-o", "yaml"}, `--output must be "table" or "json"`},
		{[]string{"db", "export", "a", "b", "--data-dir", dir}, "at most 1 argument"},
		{[]string{"db", "frobnicate"}, "unknown command"},
		{[]string{"db", "backup", "relative/dir", "--api", "http://127.0.0.1:1"}, "must be absolute"},
	}
	for _, tc := range tests {
		_, errOut, code := runCLI(t, "", tc.args...)
		wantCode(t, strings.Join(tc.args, " "), code, exitUsage, errOut)
		if !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: stderr %q lacks %q", tc.args, errOut, tc.want)
		}
	}
	t.Setenv("EDGE_ENCRYPTION_KEY", "not-a-key")
	_, errOut, code := runCLI(t, "", "db", "info", "--data-dir", dir)
	wantCode(t, "db info with a malformed key", code, exitUsage, errOut)
	if strings.Contains(errOut, "not-a-key") {
		t.Error("the error repeats the key")
	}
	t.Setenv("EDGE_ENCRYPTION_KEY", "")
	_, errOut, code = runCLI(t, "", "db", "info", "--data-dir", dir)
	wantCode(t, "db info without the key", code, exitUsage, errOut)
	if !strings.Contains(errOut, "EDGE_ENCRYPTION_KEY") {
		t.Errorf("stderr %q does not name EDGE_ENCRYPTION_KEY", errOut)
	}
}

// TestDBThroughAPI runs the commands against a running agent's admin API:
// a real admin server over a real store, on a real socket.
func TestDBThroughAPI(t *testing.T) {
	dbEnv(t)
	root := t.TempDir()
	dir := filepath.Join(root, "data")
	node := seedStore(t, dir, 10)
	st := openTestStore(t, dir)
	defer st.Close()
	const adminToken = "db-test-token-5b1c"
	cfg := admin.DefaultConfig()
	cfg.Token = adminToken
	srv, err := admin.New(cfg, admin.Deps{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	t.Setenv("EDGE_ADMIN_TOKEN", adminToken)

	out, errOut, code := runCLI(t, "", "db", "info", "--api", ts.URL)
	wantCode(t, "db info --api", code, 0, errOut)
	if !strings.Contains(out, node) || !strings.Contains(out, "agent at "+ts.URL) {
		t.Errorf("db info --api printed:\n%s", out)
	}
	// EDGE_API selects the agent when --data-dir is not given.
	t.Setenv("EDGE_API", ts.URL)
	out, errOut, code = runCLI(t, "", "db", "tables", "-o", "json")
	wantCode(t, "db tables (EDGE_API)", code, 0, errOut)
	var tables admin.DBTablesResponse
	if err := json.Unmarshal([]byte(out), &tables); err != nil || len(tables.Tables) != len(storage.TableNames())+4 {
		t.Errorf("db tables -o json via the API = %+v (%v)", tables, err)
	}
	t.Setenv("EDGE_API", "")

	out, errOut, code = runCLI(t, "", "db", "stats", "pools", "--api", ts.URL)
	wantCode(t, "db stats pools --api", code, 0, errOut)
	if !strings.Contains(out, "Compaction Stats") {
		t.Errorf("db stats --api printed:\n%s", out)
	}
	_, errOut, code = runCLI(t, "", "db", "stats", "nope", "--api", ts.URL)
	wantCode(t, "db stats nope --api", code, exitInvalid, errOut)
	if !strings.Contains(errOut, `unknown table "nope"`) {
		t.Errorf("stderr %q", errOut)
	}

	out, errOut, code = runCLI(t, "", "db", "compact", "backends", "--api", ts.URL, "-o", "json")
	wantCode(t, "db compact --api", code, 0, errOut)
	var compacted admin.DBCompactResponse
	if err := json.Unmarshal([]byte(out), &compacted); err != nil || compacted.Table != "backends" {
		t.Errorf("db compact --api -o json = %+v (%v)", compacted, err)
	}

	backups := filepath.Join(root, "backups")
	out, errOut, code = runCLI(t, "", "db", "backup", backups, "--api", ts.URL)
	wantCode(t, "db backup --api", code, 0, errOut)
	if !strings.HasPrefix(out, "Backup 1 written to "+backups) {
		t.Errorf("db backup --api printed %q", out)
	}
	if infos, err := storage.ListBackups(backups); err != nil || len(infos) != 1 {
		t.Errorf("backups after db backup --api: %v, %v", infos, err)
	}
	// A backup directory whose private/ is a file is the caller's mistake.
	privateFile := filepath.Join(root, "private-is-a-file")
	if err := os.MkdirAll(privateFile, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(privateFile, "private"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = runCLI(t, "", "db", "backup", privateFile, "--api", ts.URL)
	wantCode(t, "db backup --api where private is a file", code, exitInvalid, errOut)
	if !strings.Contains(errOut, filepath.Join(privateFile, "private")) {
		t.Errorf("stderr %q does not name the file in the way", errOut)
	}
	cp := filepath.Join(root, "cp")
	_, errOut, code = runCLI(t, "", "db", "checkpoint", cp, "--api", ts.URL)
	wantCode(t, "db checkpoint --api", code, 0, errOut)
	if got, want := rowsOf(t, cp), rowsOfStore(t, st); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("the checkpoint taken through the API has %d rows, the store %d", len(got), len(want))
	}
	_, errOut, code = runCLI(t, "", "db", "checkpoint", cp, "--api", ts.URL)
	wantCode(t, "db checkpoint --api into an existing dir", code, exitConflict, errOut)

	t.Setenv("EDGE_ADMIN_TOKEN", "wrong")
	_, errOut, code = runCLI(t, "", "db", "info", "--api", ts.URL)
	wantCode(t, "db info --api with a wrong token", code, exitAuth, errOut)
	noSecret(t, errOut)
}

func TestDBRemoveTable(t *testing.T) {
	dbEnv(t)
	dir := filepath.Join(t.TempDir(), "data")
	seedStore(t, dir, 6)

	_, errOut, code := runCLI(t, "", "db", "remove-table", "backends", "--data-dir", dir)
	wantCode(t, "remove-table without --yes", code, exitUsage, errOut)
	_, errOut, code = runCLI(t, "", "db", "remove-table", "nope", "--yes", "--data-dir", dir)
	wantCode(t, "remove-table of an unknown table", code, exitInvalid, errOut)
	_, errOut, code = runCLI(t, "", "db", "remove-table", "backends", "--yes", "--data-dir", filepath.Join(t.TempDir(), "none"))
	wantCode(t, "remove-table without a store", code, exitNotFound, errOut)

	out, errOut, code := runCLI(t, "", "db", "remove-table", "backends", "--yes", "--data-dir", dir)
	wantCode(t, "remove-table backends", code, 0, errOut)
	if !strings.Contains(out, "backends emptied") {
		t.Errorf("output %q", out)
	}
	st := openTestStore(t, dir)
	defer st.Close()
	ctx := context.Background()
	if bs, err := st.ListBackends(ctx, "", 0); err != nil || len(bs) != 0 {
		t.Fatalf("backends after remove-table: %d rows, %v", len(bs), err)
	}
	if _, err := st.GetPool(ctx, "web"); err != nil {
		t.Fatalf("another table was touched: %v", err)
	}
	if err := st.Verify(ctx); err != nil {
		t.Fatalf("indexes disagree after remove-table: %v", err)
	}
	if got, err := st.TablesToResync(); err != nil || !slices.Contains(got, storage.TableBackends) {
		t.Fatalf("backends not marked for resync: %v %v", got, err)
	}
}

// TestDBPathsResolvedOnDisk: the local db commands read a path with ".."
// after a symbolic link as the kernel does (the parent of the link's
// target), for the data directory, the backup directory and the checks
// made on them; filepath.Abs cleaned the text and dropped the link, so
// `db restore` checked (and then replaced) another directory than the one
// named.
func TestDBPathsResolvedOnDisk(t *testing.T) {
	dbEnv(t)
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// root/link -> root/vol/inner, so root/link/.. is root/vol on disk.
	vol := filepath.Join(root, "vol")
	if err := os.MkdirAll(filepath.Join(vol, "inner"), 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(root, "link")
	if err := os.Symlink(filepath.Join(vol, "inner"), link); err != nil {
		t.Fatal(err)
	}
	through := link + "/../"
	seedStore(t, filepath.Join(vol, "src"), 5)

	out, errOut, code := runCLI(t, "", "db", "backup", through+"backups", "--data-dir", through+"src")
	wantCode(t, "db backup through a link", code, 0, errOut)
	if !strings.HasPrefix(out, "Backup 1 written to "+filepath.Join(vol, "backups")+" ") {
		t.Errorf("db backup printed %q", out)
	}

	// The data directory the path names holds a store: refused without
	// --force, although the cleaned text names an empty place.
	other := filepath.Join(vol, "other")
	seedStore(t, other, 2)
	otherRows := rowsOf(t, other)
	_, errOut, code = runCLI(t, "", "db", "restore", through+"backups", "--data-dir", through+"other")
	wantCode(t, "db restore into a non-empty dir through a link", code, exitConflict, errOut)
	if got := rowsOf(t, other); strings.Join(got, "\n") != strings.Join(otherRows, "\n") {
		t.Error("a refused restore changed the data directory")
	}
	if _, err := os.Stat(filepath.Join(root, "other")); !os.IsNotExist(err) {
		t.Errorf("a restore went where the cleaned text points: %v", err)
	}

	out, errOut, code = runCLI(t, "", "db", "restore", through+"backups", "--data-dir", through+"restored")
	wantCode(t, "db restore through a link", code, 0, errOut)
	if !strings.HasSuffix(strings.TrimSpace(out), "into "+filepath.Join(vol, "restored")+".") {
		t.Errorf("db restore printed %q", out)
	}
	if _, err := os.Stat(filepath.Join(vol, "restored", "CURRENT")); err != nil {
		t.Errorf("no store where the path leads: %v", err)
	}

	// A relative path is read from the working directory as the kernel
	// reads it: from inside the link, ".." is vol.
	t.Chdir(link)
	out, errOut, code = runCLI(t, "", "db", "checkpoint", "../cp", "--data-dir", "../src")
	wantCode(t, "db checkpoint relative through a link", code, 0, errOut)
	if !strings.HasPrefix(out, "Checkpoint written to "+filepath.Join(vol, "cp")+" ") {
		t.Errorf("db checkpoint printed %q", out)
	}

	if err := os.Symlink(filepath.Join(root, "nowhere"), filepath.Join(root, "dangling")); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = runCLI(t, "", "db", "backup", filepath.Join(root, "dangling", "b"), "--data-dir", "../src")
	wantCode(t, "db backup through a dangling link", code, exitInvalid, errOut)
	if _, err := os.Stat(filepath.Join(root, "nowhere")); !os.IsNotExist(err) {
		t.Errorf("a dangling link's target was created: %v", err)
	}
}
