package admin

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/singularity-ng/singularity-edge/storage"
)

func TestDBInfoAndTables(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "web"})

	var info DBInfoResponse
	r := h.do("GET", "/api/db", nil)
	r.expect(t, http.StatusOK, "")
	r.json(t, &info)
	if info.NodeID != h.store.NodeID() || !info.Running || info.LastIndex == 0 || len(info.Tables) != len(storage.TableNames()) {
		t.Fatalf("info %+v", info)
	}

	var tables DBTablesResponse
	h.do("GET", "/api/db/tables", nil).json(t, &tables)
	seen := map[string]bool{}
	for _, tb := range tables.Tables {
		seen[tb.Name] = true
	}
	for _, name := range storage.TableNames() {
		if !seen[name] {
			t.Fatalf("table %s missing from %+v", name, tables.Tables)
		}
	}
	if tables.BlockCache.CapacityBytes != 8<<20 {
		t.Fatalf("block cache %+v", tables.BlockCache)
	}
}

func TestDBStatsAndCompact(t *testing.T) {
	h := newHarness(t)
	var st DBStatsResponse
	r := h.do("GET", "/api/db/stats/pools", nil)
	r.expect(t, http.StatusOK, "")
	r.json(t, &st)
	if st.Table != "pools" || !strings.Contains(st.Stats, "Compaction") {
		t.Fatalf("stats %q", st.Stats)
	}
	h.do("GET", "/api/db/stats/nope", nil).expect(t, http.StatusNotFound, CodeNotFound, "table")

	var c DBCompactResponse
	r = h.do("POST", "/api/db/compact/backends", nil)
	r.expect(t, http.StatusOK, "")
	r.json(t, &c)
	if c.Table != "backends" {
		t.Fatalf("compact %+v", c)
	}
	h.do("POST", "/api/db/compact/nope", nil).expect(t, http.StatusNotFound, CodeNotFound, "table")
	h.do("GET", "/api/db/compact/pools", nil).expect(t, http.StatusMethodNotAllowed, CodeMethodNotAllowed)
}

func TestDBBackupAndCheckpoint(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "web"})
	root := t.TempDir()

	backupDir := filepath.Join(root, "backups")
	var b DBBackupResponse
	r := h.do("POST", "/api/db/backup", map[string]string{"dir": backupDir})
	r.expect(t, http.StatusOK, "")
	r.json(t, &b)
	if b.Dir != backupDir || b.ID == 0 || b.NumFiles == 0 {
		t.Fatalf("backup %+v", b)
	}
	backups, err := storage.ListBackups(backupDir)
	if err != nil || len(backups) != 1 {
		t.Fatalf("backups on disk: %v %v", backups, err)
	}

	cpDir := filepath.Join(root, "checkpoint")
	var cp DBCheckpointResponse
	r = h.do("POST", "/api/db/checkpoint", map[string]string{"dir": cpDir + "/"})
	r.expect(t, http.StatusCreated, "")
	r.json(t, &cp)
	if cp.Dir != cpDir {
		t.Fatalf("checkpoint %+v", cp)
	}
	// The checkpoint is an openable store with the pool in it.
	cfg := storage.DefaultConfig()
	cfg.Dir = cpDir
	cfg.EncryptionKey = testEncryptionKey()
	cfg.NodeID = h.store.NodeID()
	copyStore, err := storage.Open(cfg)
	if err != nil {
		t.Fatalf("open checkpoint: %v", err)
	}
	if _, err := copyStore.GetPool(context.Background(), "web"); err != nil {
		t.Fatalf("pool not in checkpoint: %v", err)
	}
	if err := copyStore.Close(); err != nil {
		t.Fatal(err)
	}

	blocker := filepath.Join(root, "file")
	if err := os.WriteFile(blocker, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A directory whose meta is a file is no backup directory.
	notBackup := filepath.Join(root, "not-a-backup")
	if err := os.MkdirAll(notBackup, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(notBackup, "meta"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// So is one where any other directory of the backup engine is a file.
	engineDirFile := map[string]string{}
	for _, sub := range []string{"private", "shared_checksum"} {
		d := filepath.Join(root, "file-"+sub)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, sub), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		engineDirFile[sub] = d
	}
	before := h.snapshot()
	for _, tc := range []struct {
		name   string
		path   string
		body   string
		ct     string
		status int
		code   string
		field  string
	}{
		{"backup relative", "/api/db/backup", `{"dir":"backups"}`, "", 422, CodeInvalid, "dir"},
		{"backup dot relative", "/api/db/backup", `{"dir":"./x"}`, "", 422, CodeInvalid, "dir"},
		{"backup empty", "/api/db/backup", `{"dir":""}`, "", 422, CodeInvalid, "dir"},
		{"backup missing", "/api/db/backup", `{}`, "", 422, CodeInvalid, "dir"},
		{"backup unknown field", "/api/db/backup", `{"dir":"/tmp/x","path":"/tmp"}`, "", 400, CodeInvalid, "path"},
		{"backup wrong type", "/api/db/backup", `{"dir":5}`, "", 400, CodeInvalid, "dir"},
		{"backup no body", "/api/db/backup", ``, "", 400, CodeInvalid, ""},
		{"backup content type", "/api/db/backup", `{"dir":"/tmp/x"}`, "text/plain", 415, CodeUnsupportedMediaType, ""},
		{"backup under a file", "/api/db/backup", `{"dir":"` + blocker + `/sub"}`, "", 422, CodeInvalid, "dir"},
		{"checkpoint relative", "/api/db/checkpoint", `{"dir":"cp"}`, "", 422, CodeInvalid, "dir"},
		{"checkpoint empty", "/api/db/checkpoint", `{"dir":"  "}`, "", 422, CodeInvalid, "dir"},
		{"checkpoint exists", "/api/db/checkpoint", `{"dir":"` + cpDir + `"}`, "", 409, CodeConflict, "dir"},
		{"checkpoint malformed", "/api/db/checkpoint", `{"dir":`, "", 400, CodeInvalid, ""},
		// These were 500s: RocksDB's IO errors about the client's own path.
		{"checkpoint without parent", "/api/db/checkpoint", `{"dir":"` + root + `/no/such/parent/cp"}`, "", 422, CodeInvalid, "dir"},
		{"checkpoint under a file", "/api/db/checkpoint", `{"dir":"` + blocker + `/cp"}`, "", 422, CodeInvalid, "dir"},
		{"backup where meta is a file", "/api/db/backup", `{"dir":"` + notBackup + `"}`, "", 422, CodeInvalid, "dir"},
		{"backup where private is a file", "/api/db/backup", `{"dir":"` + engineDirFile["private"] + `"}`, "", 422, CodeInvalid, "dir"},
		{"backup where shared_checksum is a file", "/api/db/backup", `{"dir":"` + engineDirFile["shared_checksum"] + `"}`, "", 422, CodeInvalid, "dir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var opts []reqOption
			if tc.ct != "" {
				opts = append(opts, withContentType(tc.ct))
			}
			r := h.do("POST", tc.path, tc.body, opts...)
			if tc.field != "" {
				r.expect(t, tc.status, tc.code, tc.field)
			} else {
				r.expect(t, tc.status, tc.code)
			}
		})
	}
	h.assertUnchanged(before, "rejected db operations")
	for _, rel := range []string{"backups", "x", "cp"} {
		if _, err := os.Stat(rel); err == nil {
			t.Fatalf("relative dir %q was created in the working directory", rel)
		}
	}
}

// TestDBPathsResolvedOnDisk: a backup or checkpoint path with ".." after a
// symbolic link names the parent of the link's target, as the kernel reads
// it; the API checks and writes there, not where the cleaned text points
// (filepath.Clean drops the link with the ".."). A link that points
// nowhere is the client's path error.
func TestDBPathsResolvedOnDisk(t *testing.T) {
	h := newHarness(t)
	h.createPool(map[string]any{"name": "web"})
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// root/link -> root/vol/inner, so root/link/.. is root/vol on disk.
	vol := filepath.Join(root, "vol")
	if err := os.MkdirAll(filepath.Join(vol, "inner"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(vol, "inner"), filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "nowhere"), filepath.Join(root, "dangling")); err != nil {
		t.Fatal(err)
	}
	through := filepath.Join(root, "link") + "/../"

	var b DBBackupResponse
	r := h.do("POST", "/api/db/backup", map[string]string{"dir": through + "backups"})
	r.expect(t, http.StatusOK, "")
	r.json(t, &b)
	if want := filepath.Join(vol, "backups"); b.Dir != want {
		t.Errorf("backup answered dir %s, want %s", b.Dir, want)
	}
	if backups, err := storage.ListBackups(filepath.Join(vol, "backups")); err != nil || len(backups) != 1 {
		t.Errorf("backups where the path leads: %v %v", backups, err)
	}
	if _, err := os.Stat(filepath.Join(root, "backups")); err == nil {
		t.Errorf("the backup went where the cleaned text points, %s", filepath.Join(root, "backups"))
	}

	// The checkpoint directory the path names exists (on disk, beside
	// inner): refused, although the cleaned text names a free place.
	if err := os.Mkdir(filepath.Join(vol, "cp"), 0o700); err != nil {
		t.Fatal(err)
	}
	before := h.snapshot()
	h.do("POST", "/api/db/checkpoint", map[string]string{"dir": through + "cp"}).expect(t, http.StatusConflict, CodeConflict, "dir")
	if _, err := os.Stat(filepath.Join(root, "cp")); err == nil {
		t.Errorf("a checkpoint was written where the cleaned text points, %s", filepath.Join(root, "cp"))
	}
	for _, dir := range []string{filepath.Join(root, "dangling", "cp"), filepath.Join(root, "dangling")} {
		h.do("POST", "/api/db/checkpoint", map[string]string{"dir": dir}).expect(t, http.StatusUnprocessableEntity, CodeInvalid, "dir")
		h.do("POST", "/api/db/backup", map[string]string{"dir": dir}).expect(t, http.StatusUnprocessableEntity, CodeInvalid, "dir")
	}
	if _, err := os.Stat(filepath.Join(root, "nowhere")); err == nil {
		t.Errorf("a dangling link's target was created")
	}
	h.assertUnchanged(before, "refused checkpoints")

	var cp DBCheckpointResponse
	r = h.do("POST", "/api/db/checkpoint", map[string]string{"dir": through + "cp2"})
	r.expect(t, http.StatusCreated, "")
	r.json(t, &cp)
	if want := filepath.Join(vol, "cp2"); cp.Dir != want {
		t.Errorf("checkpoint answered dir %s, want %s", cp.Dir, want)
	}
	if _, err := os.Stat(filepath.Join(vol, "cp2", "CURRENT")); err != nil {
		t.Errorf("no checkpoint where the path leads: %v", err)
	}
}
