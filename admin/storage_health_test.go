package admin

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/singularity-ng/singularity-edge/storage"
)

// The store's conditions map to specific answers, not a generic 500: a
// full disk is 507 with the cause, a store that cannot serve yet is 503,
// an oversized transaction 413.
func TestStorageErrorsMapToSpecificStatus(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		code   string
	}{
		{fmt.Errorf("%w: commit: IO error: No space left on device", storage.ErrDiskFull), http.StatusInsufficientStorage, CodeInsufficientStorage},
		{fmt.Errorf("%w: tables under resync: pools", storage.ErrNotReady), http.StatusServiceUnavailable, CodeUnavailable},
		{fmt.Errorf("%w: 1001 rows", storage.ErrTooLarge), http.StatusRequestEntityTooLarge, CodeTooLarge},
		{errors.New("something else"), http.StatusInternalServerError, CodeInternal},
	} {
		ae := toAPIError(tc.err)
		if ae.Status != tc.status || ae.Code != tc.code {
			t.Errorf("%v: %d %s, want %d %s", tc.err, ae.Status, ae.Code, tc.status, tc.code)
		}
	}
}

// A compaction RocksDB refused or could not finish is not a success: 507
// on a full disk, 503 with the cause while the store cannot work, 404 for
// a table that does not exist.
func TestCompactErrors(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		code   string
		says   string
	}{
		{fmt.Errorf("storage: compact pools not run: %w: background flush failed: No space left on device", storage.ErrDiskFull),
			http.StatusInsufficientStorage, CodeInsufficientStorage, "compaction of pools did not run"},
		{fmt.Errorf("%w: storage: compact pools not run: background write failed: IO error", storage.ErrNotReady),
			http.StatusServiceUnavailable, CodeUnavailable, "background write failed"},
		{fmt.Errorf("%w: %q", storage.ErrUnknownTable, "pools"), http.StatusNotFound, CodeNotFound, "no table"},
	} {
		ae := toAPIError(compactError(tc.err, "pools"))
		if ae.Status != tc.status || ae.Code != tc.code || !strings.Contains(ae.Message, tc.says) {
			t.Errorf("%v: %d %s %q, want %d %s saying %q", tc.err, ae.Status, ae.Code, ae.Message, tc.status, tc.code, tc.says)
		}
	}
}

// Health reflects whether the store can serve: a store with a table under
// resync answers 503 with the reason.
func TestHealthReflectsStore(t *testing.T) {
	cfg := storage.DefaultConfig()
	cfg.Dir, cfg.SyncWAL = t.TempDir(), false
	st, err := storage.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := storage.RemoveTable(cfg, storage.TablePools); err != nil {
		t.Fatal(err)
	}
	st, err = storage.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	h := newHarnessOn(t, st)
	r := h.do("GET", "/api/health", nil, noAuth)
	r.expect(t, http.StatusServiceUnavailable, "")
	var got healthResponse
	r.json(t, &got)
	if got.Ready || !got.Live || got.Status != "store_not_ready" || got.Reason != "tables under resync: pools" {
		t.Fatalf("health with a table under resync: %+v", got)
	}
	if err := st.MarkResynced(storage.TablePools); err != nil {
		t.Fatal(err)
	}
	h.do("GET", "/api/health", nil, noAuth).expect(t, http.StatusOK, "")
}
