package storage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/linxGnu/grocksdb"
	"go.uber.org/zap"
)

// BackupInfo describes one backup in a backup directory.
type BackupInfo struct {
	ID        uint32    `json:"id"`
	Timestamp time.Time `json:"timestamp"`
	SizeBytes uint64    `json:"size_bytes"`
	NumFiles  uint32    `json:"num_files"`
}

// Backup takes an incremental backup into backupDir with RocksDB's
// BackupEngine: memtables are flushed first (atomically across column
// families), then only table files not already in backupDir are copied.
// Once RocksDB has held a background error since the store opened, the
// memtables are not flushed (flushBeforeCopy) and the backup holds the
// live WAL instead, which a restored store replays. The store keeps
// serving while it runs.
func (s *Store) Backup(ctx context.Context, backupDir string) (BackupInfo, error) {
	if err := s.enter(); err != nil {
		return BackupInfo{}, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return BackupInfo{}, err
	}
	s.backupMu.Lock()
	defer s.backupMu.Unlock()
	if err := os.MkdirAll(backupDir, 0o700); err != nil {
		return BackupInfo{}, fmt.Errorf("storage: backup dir: %w", err)
	}
	if err := checkBackupEngineDirs(backupDir); err != nil {
		return BackupInfo{}, err
	}
	be, err := grocksdb.CreateBackupEngineWithPath(s.base, backupDir)
	if err != nil {
		return BackupInfo{}, fmt.Errorf("storage: open backup engine in %s: %w", backupDir, err)
	}
	defer be.Close()
	if err := be.CreateNewBackupFlush(s.flushBeforeCopy("backup")); err != nil {
		return BackupInfo{}, fmt.Errorf("storage: backup: %w", err)
	}
	infos := backupInfos(be)
	if len(infos) == 0 {
		return BackupInfo{}, errors.New("storage: backup finished but is not listed")
	}
	return infos[len(infos)-1], nil
}

// checkBackupEngineDirs refuses a backup directory that holds a file
// where the engine keeps one of its directories: that is the caller's to
// fix, so it is said as a path error, not as the engine's IO error. The
// directories are those the engine creates with the options Backup uses:
// metadata, each backup's private files, and the table files shared
// between backups by checksum ("shared" stays unused then, so a file by
// that name does no harm).
func checkBackupEngineDirs(backupDir string) error {
	for _, sub := range []string{"meta", "private", "shared_checksum"} {
		p := filepath.Join(backupDir, sub)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return fmt.Errorf("storage: backup dir: %w", &fs.PathError{Op: "open backup", Path: p, Err: syscall.ENOTDIR})
		}
	}
	return nil
}

func backupInfos(be *grocksdb.BackupEngine) []BackupInfo {
	var out []BackupInfo
	for _, i := range be.GetInfo() {
		out = append(out, BackupInfo{ID: i.ID, Timestamp: time.Unix(i.Timestamp, 0).UTC(), SizeBytes: i.Size, NumFiles: i.NumFiles})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}

func openBackupEngine(backupDir string) (*grocksdb.BackupEngine, func(), error) {
	if _, err := os.Stat(filepath.Join(backupDir, "meta")); err != nil {
		return nil, nil, fmt.Errorf("storage: %s is not a backup directory: %w", backupDir, ErrNotFound)
	}
	opts := grocksdb.NewDefaultOptions()
	be, err := grocksdb.OpenBackupEngine(opts, backupDir)
	if err != nil {
		opts.Destroy()
		return nil, nil, fmt.Errorf("storage: open backup engine in %s: %w", backupDir, err)
	}
	return be, func() { be.Close(); opts.Destroy() }, nil
}

// ListBackups lists the backups in backupDir, oldest first.
func ListBackups(backupDir string) ([]BackupInfo, error) {
	be, done, err := openBackupEngine(backupDir)
	if err != nil {
		return nil, err
	}
	defer done()
	return backupInfos(be), nil
}

// Restore restores backup backupID (0: the latest) from backupDir into
// dataDir, replacing what is there. The store on dataDir must be stopped;
// Restore refuses a data directory that is open. The backup is verified
// (file sizes and checksums) before anything in dataDir is touched.
func Restore(ctx context.Context, backupDir, dataDir string, backupID uint32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkStopped(dataDir); err != nil {
		return err
	}
	be, done, err := openBackupEngine(backupDir)
	if err != nil {
		return err
	}
	defer done()
	infos := backupInfos(be)
	if len(infos) == 0 {
		return fmt.Errorf("storage: no backups in %s: %w", backupDir, ErrNotFound)
	}
	if backupID == 0 {
		backupID = infos[len(infos)-1].ID
	}
	found := false
	for _, i := range infos {
		found = found || i.ID == backupID
	}
	if !found {
		return fmt.Errorf("storage: backup %d in %s: %w", backupID, backupDir, ErrNotFound)
	}
	if err := be.VerifyBackup(backupID); err != nil {
		return fmt.Errorf("%w: backup %d in %s fails verification: %v", ErrCorrupt, backupID, backupDir, err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("storage: data dir: %w", err)
	}
	ro := grocksdb.NewRestoreOptions()
	defer ro.Destroy()
	if err := be.RestoreDBFromBackup(dataDir, dataDir, ro, backupID); err != nil {
		return fmt.Errorf("storage: restore backup %d into %s: %w", backupID, dataDir, err)
	}
	// Without its identity file the restored store takes a new node id at
	// its next Open: its old seqs are already held by peers.
	if err := os.Remove(filepath.Join(dataDir, identityFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("storage: restore: remove %s: %w", identityFile, err)
	}
	return nil
}

// checkStopped fails when a RocksDB in dir is open (by this or another
// process). It opens the database for a moment: RocksDB's lock file is the
// only reliable signal. A database too damaged to open is not "in use".
func checkStopped(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "CURRENT")); err != nil {
		return nil
	}
	opts := grocksdb.NewDefaultOptions()
	defer opts.Destroy()
	opts.SetMaxOpenFiles(16)
	names, err := grocksdb.ListColumnFamilies(opts, dir)
	if err != nil {
		return nil
	}
	cfOpts := make([]*grocksdb.Options, len(names))
	for i := range names {
		cfOpts[i] = opts
	}
	db, handles, err := grocksdb.OpenDbColumnFamilies(opts, dir, names, cfOpts)
	if err != nil {
		if strings.Contains(err.Error(), "lock") {
			return fmt.Errorf("storage: data directory %s is in use; stop the agent before restoring", dir)
		}
		return nil
	}
	for _, h := range handles {
		h.Destroy()
	}
	db.Close()
	return nil
}

// Checkpoint writes a consistent, openable copy of the store into dir
// (which must not exist), hard-linking table files where the file system
// allows and flushing memtables first, or, once RocksDB has held a
// background error since the store opened, copying the live WAL instead
// (flushBeforeCopy).
func (s *Store) Checkpoint(ctx context.Context, dir string) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := os.Stat(dir); err == nil {
		return fmt.Errorf("%w: checkpoint directory %s already exists", ErrInvalid, dir)
	}
	// RocksDB creates dir (by way of dir.tmp) itself and reports a missing
	// parent or an unwritable place as an IO error. Creating dir once here
	// turns those into path errors the caller can act on.
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("storage: checkpoint dir: %w", err)
	}
	if err := os.Remove(dir); err != nil {
		return fmt.Errorf("storage: checkpoint dir: %w", err)
	}
	cp, err := s.base.NewCheckpoint()
	if err != nil {
		return fmt.Errorf("storage: checkpoint: %w", err)
	}
	defer cp.Destroy()
	// 0: always flush first; the largest size: never, the WAL is copied.
	logSizeForFlush := uint64(0)
	if !s.flushBeforeCopy("checkpoint") {
		logSizeForFlush = math.MaxUint64
	}
	if err := cp.CreateCheckpoint(dir, logSizeForFlush); err != nil {
		return fmt.Errorf("storage: checkpoint into %s: %w", dir, err)
	}
	return nil
}

// flushBeforeCopy reports whether a backup or checkpoint may flush the
// memtables before it copies the files. Not once that flush may never end
// (flushMayNeverEnd): the copy would hold the store, and Close, with it.
// The copy then takes the live WAL files with the table files, and the
// database opened from it replays them: the same state, every
// acknowledged commit included.
func (s *Store) flushBeforeCopy(what string) bool {
	if s.flushMayNeverEnd() {
		s.log.Warn(what+" copies the WAL instead of flushing the memtables after a background error",
			zap.Int("background_errors", s.opts.bgErr.Count()))
		return false
	}
	return true
}
