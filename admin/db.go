package admin

import (
	"errors"
	"fmt"
	"github.com/singularity-ng/singularity-edge/apitypes"
	"io/fs"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/singularity-ng/singularity-edge/internal/fielderr"
	"github.com/singularity-ng/singularity-edge/internal/realpath"
	"github.com/singularity-ng/singularity-edge/storage"
)

// The /api/db routes mirror the `db` CLI against the running agent's store:
// info, tables, stats, compact, backup, checkpoint.

// The DB answers are apitypes' shapes; the aliases keep this package's
// names for code that already uses them.
type (
	DBInfoResponse       = apitypes.DBInfoResponse
	DBTableStats         = apitypes.DBTableStats
	DBTablesResponse     = apitypes.DBTablesResponse
	DBBlockCache         = apitypes.DBBlockCache
	DBBackupResponse     = apitypes.DBBackupResponse
	DBCheckpointResponse = apitypes.DBCheckpointResponse
	DBCompactResponse    = apitypes.DBCompactResponse
	DBStatsResponse      = apitypes.DBStatsResponse
)

type dirInput = apitypes.DBDir

func (s *Server) handleDBInfo(w http.ResponseWriter, r *http.Request) {
	info := s.store.Info()
	tables := info.Tables
	if tables == nil {
		tables = []string{}
	}
	writeJSON(w, http.StatusOK, DBInfoResponse{
		NodeID:          info.NodeID,
		Dir:             info.Dir,
		Tables:          tables,
		Running:         info.Running,
		LastIndex:       info.LastIndex,
		HLC:             uint64(info.HLC),
		ClockSkewEvents: info.ClockSkewEvents,
		ClusterID:       info.ClusterID,
		Watermarks:      info.Watermarks,
		Seen:            info.Seen,
		Ready:           readiness(s.store.Ready()),
	})
}

func (s *Server) handleDBTables(w http.ResponseWriter, r *http.Request) {
	stats, err := s.store.TableStats(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	resp := DBTablesResponse{Tables: make([]DBTableStats, 0, len(stats))}
	for _, t := range stats {
		resp.Tables = append(resp.Tables, DBTableStats{
			Name:          t.Table,
			Internal:      t.Internal,
			EstimatedKeys: t.EstimatedKeys,
			LiveDataBytes: t.LiveDataBytes,
			SSTBytes:      t.SSTBytes,
			MemtableBytes: t.MemtableBytes,
		})
		resp.BlockCache = DBBlockCache{UsageBytes: t.BlockCacheUsage, CapacityBytes: t.BlockCacheCapacity}
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleDBStats(w http.ResponseWriter, r *http.Request) {
	table := r.PathValue("table")
	text, err := s.store.RocksDBStats(table)
	if err != nil {
		s.writeError(w, r, tableError(err, table))
		return
	}
	writeJSON(w, http.StatusOK, DBStatsResponse{Table: table, Stats: text})
}

func (s *Server) handleDBCompact(w http.ResponseWriter, r *http.Request) {
	table := r.PathValue("table")
	s.extendDeadline(w)
	start := time.Now()
	if err := s.store.Compact(r.Context(), table); err != nil {
		s.writeError(w, r, compactError(err, table))
		return
	}
	writeJSON(w, http.StatusOK, DBCompactResponse{Table: table, DurationMS: time.Since(start).Milliseconds()})
}

func (s *Server) handleDBBackup(w http.ResponseWriter, r *http.Request) {
	dir, err := s.readDir(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.extendDeadline(w)
	start := time.Now()
	info, err := s.store.Backup(r.Context(), dir)
	if err != nil {
		s.writeError(w, r, dirError(err))
		return
	}
	writeJSON(w, http.StatusOK, DBBackupResponse{
		Dir: dir, ID: info.ID, Timestamp: info.Timestamp, SizeBytes: info.SizeBytes, NumFiles: info.NumFiles,
		DurationMS: time.Since(start).Milliseconds(),
	})
}

func (s *Server) handleDBCheckpoint(w http.ResponseWriter, r *http.Request) {
	dir, err := s.readDir(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.extendDeadline(w)
	start := time.Now()
	if err := s.store.Checkpoint(r.Context(), dir); err != nil {
		s.writeError(w, r, dirError(err))
		return
	}
	writeJSON(w, http.StatusCreated, DBCheckpointResponse{Dir: dir, DurationMS: time.Since(start).Milliseconds()})
}

// readDir decodes {"dir": "..."}, requires an absolute path (the agent's
// working directory is not something an API client should have to guess,
// and a relative path would land somewhere surprising), and returns the
// place it names on disk: symbolic links resolved and ".." applied to the
// real directory before it (realpath.Resolve), not to the text as
// filepath.Clean would. The store's checks (a checkpoint directory that
// exists, a backup directory holding a file where the engine keeps a
// directory) and the operation then see the directory the client named.
func (s *Server) readDir(w http.ResponseWriter, r *http.Request) (string, error) {
	var in dirInput
	if err := readStrict(w, r, s.cfg.MaxBodyBytes, &in); err != nil {
		return "", err
	}
	dir := strings.TrimSpace(in.Dir)
	switch {
	case dir == "":
		return "", errUnprocessable(fielderr.List{{Field: "dir", Message: "is required (an absolute path on the agent's machine)"}})
	case strings.ContainsRune(dir, 0):
		return "", errUnprocessable(fielderr.List{{Field: "dir", Message: "must not contain NUL bytes"}})
	case !filepath.IsAbs(dir):
		return "", errUnprocessable(fielderr.List{{Field: "dir", Message: fmt.Sprintf("must be an absolute path, got %q", dir)}})
	}
	real, err := realpath.Resolve(dir)
	if err != nil {
		msg := "cannot be used: " + err.Error()
		return "", &apiError{Status: http.StatusUnprocessableEntity, Code: CodeInvalid, Message: "dir " + msg,
			Fields: fielderr.List{{Field: "dir", Message: msg}}, cause: err}
	}
	return real, nil
}

// extendDeadline lets a compaction, backup or checkpoint outlast the
// ordinary write timeout.
func (s *Server) extendDeadline(w http.ResponseWriter) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.cfg.LongOperationTimeout))
}

func tableError(err error, table string) error {
	if errors.Is(err, storage.ErrUnknownTable) {
		return errNotFound("table", fmt.Sprintf("no table %q; see GET /api/db for the tables", table))
	}
	return err
}

// compactError classifies a failed compaction. On a full disk (a
// compaction out of space, or one RocksDB refused while it holds a
// background error) it is 507 saying that the compaction did not run, not
// the write answer that nothing was stored; a store that cannot work for
// another reason is 503 with it (toAPIError).
func compactError(err error, table string) error {
	if errors.Is(err, storage.ErrDiskFull) {
		return &apiError{Status: http.StatusInsufficientStorage, Code: CodeInsufficientStorage,
			Message: fmt.Sprintf("the compaction of %s did not run: the node's disk is full; run it again once space is freed", table), cause: err}
	}
	return tableError(err, table)
}

// dirError classifies a backup or checkpoint failure: a target that exists
// (checkpoint) is the client's to fix (409), and so is a path the agent
// cannot create or write (422, with the file system's message about the
// client's own path). Anything else is internal.
func dirError(err error) error {
	if errors.Is(err, storage.ErrInvalid) {
		return &apiError{Status: http.StatusConflict, Code: CodeConflict, Message: "dir already exists; checkpoints go into a new directory",
			Fields: fielderr.List{{Field: "dir", Message: "already exists"}}, cause: err}
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		msg := fmt.Sprintf("cannot be used: %s %s: %v", pe.Op, pe.Path, pe.Err)
		return &apiError{Status: http.StatusUnprocessableEntity, Code: CodeInvalid, Message: "dir " + msg,
			Fields: fielderr.List{{Field: "dir", Message: msg}}, cause: err}
	}
	return err
}

// readiness renders storage.Store.Ready for DBInfoResponse.
func readiness(err error) string {
	if err == nil {
		return "yes"
	}
	return err.Error()
}
