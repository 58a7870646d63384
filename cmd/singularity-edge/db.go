package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/apitypes"
	"github.com/singularity-ng/singularity-edge/internal/realpath"
	"github.com/singularity-ng/singularity-edge/storage"
)

// The `db` commands work on a store in two ways: directly on the data
// directory of a stopped agent (storage.Open; RocksDB's LOCK file keeps a
// running agent's store out of reach), or through the admin API of a
// running agent (info, tables, stats, compact, backup, checkpoint). The JSON
// of --output json is the admin API's shape in both cases, so scripts do
// not care which way was used.

const (
	defaultDataDir = "./data"
	// dbDefaultTimeout bounds an API request of `db`: compaction and
	// backup of a large store take minutes, not seconds.
	dbDefaultTimeout = 30 * time.Minute
)

// internalFamilyNames are the RocksDB column families of the store that
// are not tables (storage's doc.go), for completion only: the store (or the
// agent) says which names exist.
func internalFamilyNames() []string { return []string{"index", "changelog", "feed", "meta"} }

// dbOptions are the flags shared by the db subcommands.
type dbOptions struct {
	api     *apiOptions
	dataDir string
}

// dbRestoreJSON is the answer of `db restore` (local only).
type dbRestoreJSON struct {
	BackupDir string    `json:"backup_dir"`
	DataDir   string    `json:"data_dir"`
	ID        uint32    `json:"id"`
	Timestamp time.Time `json:"timestamp"`
	SizeBytes uint64    `json:"size_bytes"`
	NumFiles  uint32    `json:"num_files"`
}

// dbTransferJSON is the answer of `db export` and `db import` (local only).
type dbTransferJSON struct {
	File    string `json:"file"` // "-" for stdin/stdout
	DataDir string `json:"data_dir"`
	Rows    int    `json:"rows"`
}

func newDBCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "db",
		Short: "Inspect, back up, restore, export and import the node's store",
		Long: `Inspect and maintain the node's embedded database (RocksDB).

Without --api the commands open the data directory (--data-dir, env
EDGE_DATA_DIR, default ` + defaultDataDir + `) directly. That works only while the agent
is stopped: a running agent holds the store's lock. info, tables, stats,
compact, backup and checkpoint can ask a running agent instead: pass --api
(or set EDGE_API; an explicit --data-dir still wins over EDGE_API). The
admin token comes from EDGE_ADMIN_TOKEN or --token-file. export, import and
restore always work on a stopped store.

A store holding certificates needs EDGE_ENCRYPTION_KEY (the agent's key) to
be opened; private keys stay sealed in backups, checkpoints and exports.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	o := &dbOptions{api: addAPIFlags(cmd)}
	// Long operations: the shared default of --timeout is for quick calls.
	o.api.timeout = dbDefaultTimeout
	cmd.PersistentFlags().Lookup("timeout").DefValue = dbDefaultTimeout.String()
	cmd.PersistentFlags().StringVar(&o.dataDir, "data-dir", defaultDataDir, "data directory of a stopped agent (env EDGE_DATA_DIR)")

	tableArg := fixedCompletion(append(storage.TableNames(), internalFamilyNames()...)...)
	cmd.AddCommand(
		&cobra.Command{
			Use:   "info",
			Short: "Show the node id, commit index, clock and replication counters",
			Args:  noArgs,
			RunE:  func(cmd *cobra.Command, _ []string) error { return o.info(cmd) },
		},
		&cobra.Command{
			Use:   "tables",
			Short: "List the tables and internal column families with their sizes",
			Args:  noArgs,
			RunE:  func(cmd *cobra.Command, _ []string) error { return o.tables(cmd) },
		},
		&cobra.Command{
			Use:               "stats TABLE",
			Short:             "Show RocksDB's statistics of a table (levels, compactions, stalls)",
			Args:              exactArgs(1, "TABLE"),
			ValidArgsFunction: tableArg,
			RunE:              func(cmd *cobra.Command, args []string) error { return o.stats(cmd, args[0]) },
		},
		&cobra.Command{
			Use:               "compact TABLE",
			Short:             "Compact a table: drop overwritten versions and deleted entries",
			Args:              exactArgs(1, "TABLE"),
			ValidArgsFunction: tableArg,
			RunE:              func(cmd *cobra.Command, args []string) error { return o.compact(cmd, args[0]) },
		},
		&cobra.Command{
			Use:   "backup DIR",
			Short: "Take an incremental backup into DIR (with --api: a directory on the agent's machine)",
			Args:  exactArgs(1, "DIR"),
			RunE:  func(cmd *cobra.Command, args []string) error { return o.backup(cmd, args[0]) },
		},
		&cobra.Command{
			Use:   "checkpoint DIR",
			Short: "Write an openable copy of the store into DIR, which must not exist",
			Args:  exactArgs(1, "DIR"),
			RunE:  func(cmd *cobra.Command, args []string) error { return o.checkpoint(cmd, args[0]) },
		},
		o.restoreCommand(),
		o.removeTableCommand(),
		o.rekeyCommand(), // rekey.go
		o.exportCommand(),
		o.importCommand(),
	)
	return cmd
}

func (o *dbOptions) restoreCommand() *cobra.Command {
	var backupID uint32
	var force bool
	cmd := &cobra.Command{
		Use:   "restore BACKUP_DIR",
		Short: "Restore a backup into the data directory of a stopped agent",
		Long: `Restore a backup (the latest, or --backup-id) from BACKUP_DIR into --data-dir.

The backup is verified before anything is touched. A data directory that is
not empty is replaced only with --force; the agent must be stopped.`,
		Args: exactArgs(1, "BACKUP_DIR"),
		RunE: func(cmd *cobra.Command, args []string) error { return o.restore(cmd, args[0], backupID, force) },
	}
	cmd.Flags().Uint32Var(&backupID, "backup-id", 0, "backup to restore (default: the latest)")
	cmd.Flags().BoolVar(&force, "force", false, "replace a data directory that is not empty")
	return cmd
}

func (o *dbOptions) removeTableCommand() *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "remove-table TABLE",
		Short: "Empty one damaged table of a stopped agent so that peers resync it",
		Long: `Empty TABLE in --data-dir without reading it: the way out of a damaged table
when no backup is at hand. Its files and index entries are dropped and the
table is marked for a full resync from the other agents of the cluster.
Other tables are not touched. On a node without peers the table's rows are
lost, so this asks for --yes.`,
		Args:              exactArgs(1, "TABLE"),
		ValidArgsFunction: fixedCompletion(storage.TableNames()...),
		RunE:              func(cmd *cobra.Command, args []string) error { return o.removeTable(cmd, args[0], yes) },
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm that the table's rows may be dropped")
	return cmd
}

func (o *dbOptions) removeTable(cmd *cobra.Command, table string, yes bool) error {
	if err := o.localOnly(cmd); err != nil {
		return err
	}
	if !slices.Contains(storage.TableNames(), table) {
		return withExitCode(exitInvalid, fmt.Errorf("unknown table %q: the tables are %s", table, strings.Join(storage.TableNames(), ", ")))
	}
	if !yes {
		return withExitCode(exitUsage, fmt.Errorf("remove-table drops every row of %q on this node; pass --yes to confirm", table))
	}
	dir, err := o.dir(cmd)
	if err != nil {
		return err
	}
	if !hasStore(dir) {
		return withExitCode(exitNotFound, fmt.Errorf("no store in %s; set --data-dir (or EDGE_DATA_DIR) to the agent's data directory", dir))
	}
	cfg, err := storeConfig(dir)
	if err != nil {
		return err
	}
	if err := storage.RemoveTable(cfg, table); err != nil {
		return localError(dir, err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "table %s emptied in %s; it will be resynced from peers\n", table, dir)
	return nil
}

func (o *dbOptions) exportCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "export [FILE|-]",
		Short: "Write every row (versions and tombstones included) as JSON lines",
		Long: `Write every row of a stopped agent's store to FILE (default "-": stdout) as
JSON lines, one consistent snapshot. Private keys stay sealed with the
store's encryption key, so importing needs the same EDGE_ENCRYPTION_KEY.
An existing FILE is replaced only with --force.`,
		Args: maxArgs(1, "FILE"),
		RunE: func(cmd *cobra.Command, args []string) error { return o.export(cmd, fileArg(args), force) },
	}
	cmd.Flags().BoolVar(&force, "force", false, "replace FILE if it exists")
	return cmd
}

func (o *dbOptions) importCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "import [FILE|-]",
		Short: "Apply an export to the store (newer versions win)",
		Long: `Apply the rows of an export (FILE, default "-": stdin) to the store in
--data-dir, creating it if needed. Per row the newer version wins, so
importing the same export twice changes nothing the second time.

The whole input is first checked by importing it into a scratch store in
$TMPDIR; a bad line is reported with its number and nothing is written.`,
		Args: maxArgs(1, "FILE"),
		RunE: func(cmd *cobra.Command, args []string) error { return o.importRows(cmd, fileArg(args)) },
	}
}

func fileArg(args []string) string {
	if len(args) == 0 {
		return "-"
	}
	return args[0]
}

func maxArgs(n int, names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > n {
			return withExitCode(exitUsage, fmt.Errorf("%s takes at most %d argument(s) (%s), got %d", cmd.CommandPath(), n, strings.Join(names, " "), len(args)))
		}
		return nil
	}
}

// --- mode, flags and opening the store ---

func (o *dbOptions) jsonOutput() (bool, error) {
	switch o.api.output {
	case outputTable:
		return false, nil
	case outputJSON:
		return true, nil
	}
	return false, withExitCode(exitUsage, fmt.Errorf("--output must be %q or %q, not %q", outputTable, outputJSON, o.api.output))
}

// remote returns an API client when the command should ask a running
// agent: --api given, or EDGE_API set and no explicit --data-dir.
func (o *dbOptions) remote(cmd *cobra.Command) (*apiClient, error) {
	apiFlag, dirFlag := cmd.Flags().Changed("api"), cmd.Flags().Changed("data-dir")
	if apiFlag && dirFlag {
		return nil, withExitCode(exitUsage, errors.New("--api and --data-dir exclude each other: ask a running agent or open a stopped store"))
	}
	if !apiFlag && (dirFlag || os.Getenv("EDGE_API") == "") {
		return nil, nil
	}
	return o.api.client(cmd)
}

// localOnly rejects --api for the commands that need a stopped store.
func (o *dbOptions) localOnly(cmd *cobra.Command) error {
	if cmd.Flags().Changed("api") {
		return withExitCode(exitUsage, fmt.Errorf("%s works on a stopped agent's data directory only (--data-dir), not through --api", cmd.CommandPath()))
	}
	return nil
}

// localCommand is the start of every command that works on a stopped
// agent's data directory: it refuses --api, checks --output and resolves
// the directory.
func (o *dbOptions) localCommand(cmd *cobra.Command) (dir string, asJSON bool, err error) {
	if err := o.localOnly(cmd); err != nil {
		return "", false, err
	}
	if asJSON, err = o.jsonOutput(); err != nil {
		return "", false, err
	}
	dir, err = o.dir(cmd)
	return dir, asJSON, err
}

func (o *dbOptions) dir(cmd *cobra.Command) (string, error) {
	dir := o.dataDir
	if !cmd.Flags().Changed("data-dir") {
		if env := os.Getenv("EDGE_DATA_DIR"); env != "" {
			dir = env
		}
	}
	if strings.TrimSpace(dir) == "" {
		return "", withExitCode(exitUsage, errors.New("--data-dir is empty"))
	}
	abs, err := localPath(dir)
	if err != nil {
		return "", withExitCode(exitUsage, fmt.Errorf("--data-dir %q: %w", dir, err))
	}
	return abs, nil
}

// localPath is the place dir names on this machine: a relative dir is
// read from the working directory, and symbolic links and ".." resolve as
// the kernel resolves them (realpath.Resolve), not as filepath.Abs cleans
// the text ("/srv/link/../data" is beside link's target, not /srv/data).
// The checks made on the result (is the data directory empty, is a store
// in it open) are then made on the directory the command writes to.
func localPath(dir string) (string, error) {
	if !filepath.IsAbs(dir) {
		wd, err := os.Getwd()
		if err != nil {
			return "", fmt.Errorf("the working directory: %w", err)
		}
		dir = wd + string(filepath.Separator) + dir
	}
	return realpath.Resolve(dir)
}

// storeConfig is the configuration the db commands open a store with.
func storeConfig(dir string) (storage.Config, error) {
	cfg := storage.DefaultConfig()
	cfg.Dir, cfg.Logger = dir, zap.NewNop()
	if raw := os.Getenv("EDGE_ENCRYPTION_KEY"); raw != "" {
		key, err := storage.ParseEncryptionKey(raw)
		if err != nil {
			return cfg, withExitCode(exitUsage, keyError(err))
		}
		cfg.EncryptionKey = key
	}
	return cfg, nil
}

// hasStore reports whether dir holds a RocksDB database.
func hasStore(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "CURRENT"))
	return err == nil
}

// withStore opens the store in the data directory (which must hold one:
// a mistyped path must not become a new, empty store), runs fn and closes it.
func (o *dbOptions) withStore(cmd *cobra.Command, fn func(st *storage.Store) error) error {
	dir, err := o.dir(cmd)
	if err != nil {
		return err
	}
	if !hasStore(dir) {
		return withExitCode(exitNotFound, fmt.Errorf("no store in %s; set --data-dir (or EDGE_DATA_DIR) to the agent's data directory", dir))
	}
	return openAndRun(dir, fn)
}

func openAndRun(dir string, fn func(st *storage.Store) error) error {
	cfg, err := storeConfig(dir)
	if err != nil {
		return err
	}
	return openConfigAndRun(cfg, fn)
}

func openConfigAndRun(cfg storage.Config, fn func(st *storage.Store) error) error {
	dir := cfg.Dir
	st, err := storage.Open(cfg)
	if err != nil {
		return localError(dir, err)
	}
	runErr := fn(st)
	if err := st.Close(); err != nil && runErr == nil {
		runErr = localError(dir, err)
	}
	return runErr
}

// isInUse recognizes the failure to take RocksDB's lock: storage has no
// sentinel for it, so its messages (Open, Restore) are matched.
func isInUse(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "in use") || strings.Contains(msg, "/LOCK") || strings.Contains(msg, "lock file")
}

// localError classifies an error of the local store and gives it its exit
// code and, where the storage message is not enough, a way out.
func localError(dir string, err error) error {
	var ec *exitCodeError
	switch {
	case errors.As(err, &ec):
		return err
	case errors.Is(err, storage.ErrEncryptionKey):
		return withExitCode(exitUsage, err)
	case errors.Is(err, storage.ErrCorrupt):
		return withExitCode(exitFailure, err)
	case errors.Is(err, storage.ErrNotFound):
		return withExitCode(exitNotFound, err)
	case errors.Is(err, storage.ErrInvalid), errors.Is(err, storage.ErrUnknownTable), errors.Is(err, storage.ErrFormatVersion):
		return withExitCode(exitInvalid, err)
	case isInUse(err):
		return withExitCode(exitUnavailable, fmt.Errorf("the store in %s is in use by a running agent; use --api to ask it, or stop it", dir))
	}
	return withExitCode(exitFailure, err)
}

// unknownTable is the error for a name that is neither a table nor an
// internal column family; known lists what exists.
func unknownTable(name string, known []apitypes.DBTableStats) error {
	var tables, internal []string
	for _, t := range known {
		if t.Internal {
			internal = append(internal, t.Name)
		} else {
			tables = append(tables, t.Name)
		}
	}
	return withExitCode(exitInvalid, fmt.Errorf("unknown table %q: the tables are %s (internal column families: %s)",
		name, strings.Join(tables, ", "), strings.Join(internal, ", ")))
}

func localTables(ctx context.Context, st *storage.Store) (apitypes.DBTablesResponse, error) {
	stats, err := st.TableStats(ctx)
	if err != nil {
		return apitypes.DBTablesResponse{}, err
	}
	out := apitypes.DBTablesResponse{Tables: make([]apitypes.DBTableStats, 0, len(stats))}
	for _, t := range stats {
		out.Tables = append(out.Tables, apitypes.DBTableStats{Name: t.Table, Internal: t.Internal, EstimatedKeys: t.EstimatedKeys,
			LiveDataBytes: t.LiveDataBytes, SSTBytes: t.SSTBytes, MemtableBytes: t.MemtableBytes})
		out.BlockCache.UsageBytes, out.BlockCache.CapacityBytes = t.BlockCacheUsage, t.BlockCacheCapacity
	}
	return out, nil
}

// checkTable fails with exitInvalid when name is not among known.
func checkTable(name string, known apitypes.DBTablesResponse) error {
	for _, t := range known.Tables {
		if t.Name == name {
			return nil
		}
	}
	return unknownTable(name, known.Tables)
}

// emit writes v as JSON or, for people, with human.
func emit(w io.Writer, asJSON bool, v any, human func() error) error {
	if asJSON {
		return printValue(w, v)
	}
	return human()
}

// runEitherWay is the shape of the db commands that work both ways: remote
// asks a running agent, local works on a stopped store's data directory;
// the answer, the admin API's shape either way, is printed as JSON or, for
// people, by human.
func runEitherWay[T any](o *dbOptions, cmd *cobra.Command, remote func(c *apiClient) (T, error),
	local func() (T, error), human func(w io.Writer, out T) error) error {
	asJSON, err := o.jsonOutput()
	if err != nil {
		return err
	}
	c, err := o.remote(cmd)
	if err != nil {
		return err
	}
	var out T
	if c != nil {
		out, err = remote(c)
	} else {
		out, err = local()
	}
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	return emit(w, asJSON, out, func() error { return human(w, out) })
}

// --- info ---

func (o *dbOptions) info(cmd *cobra.Command) error {
	asJSON, err := o.jsonOutput()
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	c, err := o.remote(cmd)
	if err != nil {
		return err
	}
	if c != nil {
		resp, err := c.getJSON(cmd.Context(), "/api/db", nil)
		if err != nil {
			return err
		}
		return showAnswer(c, resp.Body, func(info *apitypes.DBInfoResponse) error {
			return showDBInfo(w, "agent at "+c.base.String(), *info)
		})
	}
	return o.withStore(cmd, func(st *storage.Store) error {
		i := st.Info()
		info := apitypes.DBInfoResponse{NodeID: i.NodeID, Dir: i.Dir, Tables: i.Tables, Running: i.Running, LastIndex: i.LastIndex,
			HLC: uint64(i.HLC), ClockSkewEvents: i.ClockSkewEvents, ClusterID: i.ClusterID, Watermarks: i.Watermarks, Seen: i.Seen,
			Ready: readiness(st.Ready())}
		return emit(w, asJSON, info, func() error { return showDBInfo(w, "data directory (agent stopped)", info) })
	})
}

func showDBInfo(w io.Writer, source string, info apitypes.DBInfoResponse) error {
	d := newDetails(w)
	d.line("Source", source)
	d.line("Node", info.NodeID)
	d.line("Data dir", info.Dir)
	d.line("Tables", strings.Join(info.Tables, ", "))
	d.line("Last commit index", strconv.FormatUint(info.LastIndex, 10))
	d.line("Clock (HLC)", formatHLC(info.HLC))
	d.line("Clock skew events", strconv.FormatUint(info.ClockSkewEvents, 10))
	d.line("Cluster", info.ClusterID)
	d.line("Ready", info.Ready)
	d.line("Watermarks", formatVector(info.Watermarks))
	return d.flush()
}

// formatHLC renders a hybrid logical clock value as its wall time and
// logical counter.
func formatHLC(v uint64) string {
	if v == 0 {
		return "-"
	}
	h := storage.HLC(v)
	return time.UnixMilli(h.Millis()).UTC().Format("2006-01-02 15:04:05.000Z") + " +" + strconv.Itoa(int(h.Logical()))
}

func formatVector(vv map[string]uint64) string {
	if len(vv) == 0 {
		return "-"
	}
	origins := make([]string, 0, len(vv))
	for o := range vv {
		origins = append(origins, o)
	}
	sort.Strings(origins)
	parts := make([]string, len(origins))
	for i, o := range origins {
		parts[i] = o + "=" + strconv.FormatUint(vv[o], 10)
	}
	return strings.Join(parts, ", ")
}

// --- tables ---

func (o *dbOptions) tables(cmd *cobra.Command) error {
	asJSON, err := o.jsonOutput()
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	c, err := o.remote(cmd)
	if err != nil {
		return err
	}
	if c != nil {
		resp, err := c.getJSON(cmd.Context(), "/api/db/tables", nil)
		if err != nil {
			return err
		}
		return showAnswer(c, resp.Body, func(tables *apitypes.DBTablesResponse) error { return showTables(w, *tables) })
	}
	return o.withStore(cmd, func(st *storage.Store) error {
		tables, err := localTables(cmd.Context(), st)
		if err != nil {
			return localError(st.Dir(), err)
		}
		return emit(w, asJSON, tables, func() error { return showTables(w, tables) })
	})
}

func showTables(w io.Writer, tables apitypes.DBTablesResponse) error {
	t := newTable(w, "NAME", "KIND", "KEYS (EST.)", "LIVE DATA", "SST FILES", "MEMTABLES")
	for _, tb := range tables.Tables {
		kind := "table"
		if tb.Internal {
			kind = "internal"
		}
		t.row(tb.Name, kind, strconv.FormatUint(tb.EstimatedKeys, 10), formatBytes(tb.LiveDataBytes),
			formatBytes(tb.SSTBytes), formatBytes(tb.MemtableBytes))
	}
	if err := t.flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\nBlock cache (shared): %s used of %s\n",
		formatBytes(tables.BlockCache.UsageBytes), formatBytes(tables.BlockCache.CapacityBytes))
	return err
}

// formatBytes renders a byte count with a binary unit.
func formatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + " B"
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return strconv.FormatFloat(float64(n)/float64(div), 'f', 1, 64) + " " + string("KMGTPE"[exp]) + "iB"
}

// --- stats ---

func (o *dbOptions) stats(cmd *cobra.Command, table string) error {
	ctx := cmd.Context()
	return runEitherWay(o, cmd,
		func(c *apiClient) (out apitypes.DBStatsResponse, err error) {
			if err = remoteCheckTable(ctx, c, table); err == nil {
				_, err = c.getJSON(ctx, "/api/db/stats/"+url.PathEscape(table), &out)
			}
			return out, err
		},
		func() (out apitypes.DBStatsResponse, err error) {
			err = o.withStore(cmd, func(st *storage.Store) error {
				if err := localCheckTable(ctx, st, table); err != nil {
					return err
				}
				text, err := st.RocksDBStats(table)
				if err != nil {
					return localError(st.Dir(), err)
				}
				out = apitypes.DBStatsResponse{Table: table, Stats: text}
				return nil
			})
			return out, err
		},
		func(w io.Writer, out apitypes.DBStatsResponse) error {
			_, err := io.WriteString(w, strings.TrimRight(out.Stats, "\n")+"\n")
			return err
		})
}

// remoteCheckTable asks the agent which tables exist, so that an unknown
// name fails the same way (exitInvalid) as it does on a local store.
func remoteCheckTable(ctx context.Context, c *apiClient, table string) error {
	var tables apitypes.DBTablesResponse
	if _, err := c.getJSON(ctx, "/api/db/tables", &tables); err != nil {
		return err
	}
	return checkTable(table, tables)
}

func localCheckTable(ctx context.Context, st *storage.Store, table string) error {
	tables, err := localTables(ctx, st)
	if err != nil {
		return localError(st.Dir(), err)
	}
	return checkTable(table, tables)
}

// --- compact ---

func (o *dbOptions) compact(cmd *cobra.Command, table string) error {
	ctx := cmd.Context()
	return runEitherWay(o, cmd,
		func(c *apiClient) (out apitypes.DBCompactResponse, err error) {
			if err = remoteCheckTable(ctx, c, table); err == nil {
				err = c.postJSON(ctx, "/api/db/compact/"+url.PathEscape(table), nil, &out)
			}
			return out, err
		},
		func() (out apitypes.DBCompactResponse, err error) {
			err = o.withStore(cmd, func(st *storage.Store) error {
				if err := localCheckTable(ctx, st, table); err != nil {
					return err
				}
				start := time.Now()
				if err := st.Compact(ctx, table); err != nil {
					return localError(st.Dir(), err)
				}
				out = apitypes.DBCompactResponse{Table: table, DurationMS: time.Since(start).Milliseconds()}
				return nil
			})
			return out, err
		},
		func(w io.Writer, out apitypes.DBCompactResponse) error {
			_, err := fmt.Fprintf(w, "Compacted %s in %s.\n", out.Table, formatMS(out.DurationMS))
			return err
		})
}

func formatMS(ms int64) string {
	return (time.Duration(ms) * time.Millisecond).String()
}

// --- backup and checkpoint ---

// remoteDir checks a directory argument meant for the agent's machine.
func remoteDir(dir string) error {
	if !filepath.IsAbs(dir) {
		return withExitCode(exitUsage, fmt.Errorf("with --api, %q is a path on the agent's machine and must be absolute", dir))
	}
	return nil
}

func localDir(dir string) (string, error) {
	if strings.TrimSpace(dir) == "" {
		return "", withExitCode(exitUsage, errors.New("the directory is empty"))
	}
	abs, err := localPath(dir)
	if err != nil {
		// As the API's 422 for the same path.
		return "", withExitCode(exitInvalid, fmt.Errorf("%q: %w", dir, err))
	}
	return abs, nil
}

// localDirError classifies a local backup or checkpoint failure as the
// agent's API does (see admin's dirError): a target directory that cannot
// be created or holds a file where a directory belongs is the caller's to
// fix (exit 3, as for the API's 422), not a failure of the store.
func localDirError(dataDir string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return withExitCode(exitInvalid, err)
	}
	return localError(dataDir, err)
}

// remoteDirCommand posts dir to the agent's endpoint at path, after
// checking that dir can name a place on the agent's machine.
func remoteDirCommand[T any](ctx context.Context, c *apiClient, path, dir string) (out T, err error) {
	if err = remoteDir(dir); err == nil {
		err = c.postJSON(ctx, path, map[string]string{"dir": dir}, &out)
	}
	return out, err
}

func (o *dbOptions) backup(cmd *cobra.Command, dir string) error {
	ctx := cmd.Context()
	return runEitherWay(o, cmd,
		func(c *apiClient) (apitypes.DBBackupResponse, error) {
			return remoteDirCommand[apitypes.DBBackupResponse](ctx, c, "/api/db/backup", dir)
		},
		func() (out apitypes.DBBackupResponse, err error) {
			abs, err := localDir(dir)
			if err != nil {
				return out, err
			}
			err = o.withStore(cmd, func(st *storage.Store) error {
				start := time.Now()
				info, err := st.Backup(ctx, abs)
				if err != nil {
					return localDirError(st.Dir(), err)
				}
				out = apitypes.DBBackupResponse{Dir: abs, ID: info.ID, Timestamp: info.Timestamp, SizeBytes: info.SizeBytes,
					NumFiles: info.NumFiles, DurationMS: time.Since(start).Milliseconds()}
				return nil
			})
			return out, err
		},
		func(w io.Writer, out apitypes.DBBackupResponse) error {
			_, err := fmt.Fprintf(w, "Backup %d written to %s in %s: %d files, %s (incremental: unchanged files are shared with earlier backups).\n",
				out.ID, out.Dir, formatMS(out.DurationMS), out.NumFiles, formatBytes(out.SizeBytes))
			return err
		})
}

func (o *dbOptions) checkpoint(cmd *cobra.Command, dir string) error {
	ctx := cmd.Context()
	return runEitherWay(o, cmd,
		func(c *apiClient) (apitypes.DBCheckpointResponse, error) {
			return remoteDirCommand[apitypes.DBCheckpointResponse](ctx, c, "/api/db/checkpoint", dir)
		},
		func() (out apitypes.DBCheckpointResponse, err error) {
			abs, err := localDir(dir)
			if err != nil {
				return out, err
			}
			if _, err := os.Stat(abs); err == nil {
				return out, withExitCode(exitConflict, fmt.Errorf("%s already exists; a checkpoint goes into a new directory", abs))
			}
			err = o.withStore(cmd, func(st *storage.Store) error {
				start := time.Now()
				if err := st.Checkpoint(ctx, abs); err != nil {
					return localDirError(st.Dir(), err)
				}
				out = apitypes.DBCheckpointResponse{Dir: abs, DurationMS: time.Since(start).Milliseconds()}
				return nil
			})
			return out, err
		},
		func(w io.Writer, out apitypes.DBCheckpointResponse) error {
			_, err := fmt.Fprintf(w, "Checkpoint written to %s in %s.\n", out.Dir, formatMS(out.DurationMS))
			return err
		})
}

// --- restore ---

func (o *dbOptions) restore(cmd *cobra.Command, backupDir string, backupID uint32, force bool) error {
	dataDir, asJSON, err := o.localCommand(cmd)
	if err != nil {
		return err
	}
	backupDir, err = localDir(backupDir)
	if err != nil {
		return err
	}
	infos, err := storage.ListBackups(backupDir)
	if err != nil {
		return localError(dataDir, err)
	}
	if len(infos) == 0 {
		return withExitCode(exitNotFound, fmt.Errorf("%s holds no backups", backupDir))
	}
	chosen := infos[len(infos)-1]
	if backupID != 0 {
		found := false
		for _, i := range infos {
			if i.ID == backupID {
				chosen, found = i, true
			}
		}
		if !found {
			ids := make([]string, len(infos))
			for k, i := range infos {
				ids[k] = strconv.FormatUint(uint64(i.ID), 10)
			}
			return withExitCode(exitNotFound, fmt.Errorf("no backup %d in %s; it holds %s", backupID, backupDir, strings.Join(ids, ", ")))
		}
	}
	if !force {
		entries, err := os.ReadDir(dataDir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return withExitCode(exitFailure, fmt.Errorf("reading the data directory: %w", err))
		}
		if len(entries) > 0 {
			return withExitCode(exitConflict, fmt.Errorf("the data directory %s is not empty; restoring replaces its contents: pass --force to do that", dataDir))
		}
	}
	if err := storage.Restore(cmd.Context(), backupDir, dataDir, chosen.ID); err != nil {
		return localError(dataDir, err)
	}
	out := dbRestoreJSON{BackupDir: backupDir, DataDir: dataDir, ID: chosen.ID, Timestamp: chosen.Timestamp,
		SizeBytes: chosen.SizeBytes, NumFiles: chosen.NumFiles}
	w := cmd.OutOrStdout()
	return emit(w, asJSON, out, func() error {
		_, err := fmt.Fprintf(w, "Restored backup %d (taken %s, %d files, %s) into %s.\n",
			out.ID, formatTime(out.Timestamp), out.NumFiles, formatBytes(out.SizeBytes), out.DataDir)
		return err
	})
}

// --- export and import ---

func (o *dbOptions) export(cmd *cobra.Command, file string, force bool) error {
	dir, asJSON, err := o.localCommand(cmd)
	if err != nil {
		return err
	}
	out := dbTransferJSON{File: file, DataDir: dir}
	if file == "-" {
		err := o.withStore(cmd, func(st *storage.Store) error {
			n, err := st.Export(cmd.Context(), cmd.OutOrStdout())
			out.Rows = n
			if err != nil {
				return localError(dir, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		// stdout carries the export: the summary goes to stderr.
		if !asJSON {
			fmt.Fprintf(cmd.ErrOrStderr(), "Exported %d rows from %s.\n", out.Rows, dir)
		}
		return nil
	}
	if out.File, err = localDir(file); err != nil {
		return err
	}
	if _, err := os.Stat(out.File); err == nil && !force {
		return withExitCode(exitConflict, fmt.Errorf("%s exists; pass --force to replace it", out.File))
	}
	// Write next to the target and rename at the end, so that a failed
	// export never leaves a truncated file under the requested name.
	tmp, err := os.CreateTemp(filepath.Dir(out.File), "."+filepath.Base(out.File)+".tmp-*")
	if err != nil {
		return withExitCode(exitFailure, fmt.Errorf("creating the export file: %w", err))
	}
	defer os.Remove(tmp.Name())
	err = o.withStore(cmd, func(st *storage.Store) error {
		n, err := st.Export(cmd.Context(), tmp)
		out.Rows = n
		if err != nil {
			return localError(dir, err)
		}
		return nil
	})
	if cerr := tmp.Close(); err == nil && cerr != nil {
		err = withExitCode(exitFailure, fmt.Errorf("writing %s: %w", out.File, cerr))
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), out.File); err != nil {
		return withExitCode(exitFailure, fmt.Errorf("writing %s: %w", out.File, err))
	}
	w := cmd.OutOrStdout()
	return emit(w, asJSON, out, func() error {
		_, err := fmt.Fprintf(w, "Exported %d rows from %s to %s.\n", out.Rows, dir, out.File)
		return err
	})
}

func (o *dbOptions) importRows(cmd *cobra.Command, file string) error {
	dir, asJSON, err := o.localCommand(cmd)
	if err != nil {
		return err
	}
	out := dbTransferJSON{File: file, DataDir: dir}
	if file != "-" {
		if out.File, err = localDir(file); err != nil {
			return err
		}
	}
	// The input is read twice (check, then import): stdin is spooled to a
	// temporary file first.
	input, cleanup, err := importInput(cmd.InOrStdin(), out.File)
	if err != nil {
		return err
	}
	defer cleanup()
	if err := checkImport(cmd.Context(), input); err != nil {
		return err
	}
	if hasStore(dir) {
		err = openAndRun(dir, func(st *storage.Store) error {
			return importFrom(cmd.Context(), st, input, &out.Rows)
		})
	} else {
		err = createAndImport(cmd.Context(), dir, input, &out.Rows)
	}
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	return emit(w, asJSON, out, func() error {
		_, err := fmt.Fprintf(w, "Imported %d rows into %s.\n", out.Rows, dir)
		return err
	})
}

// importInput returns the path of a file holding the input: file itself,
// or a temporary copy of stdin.
func importInput(stdin io.Reader, file string) (string, func(), error) {
	if file != "-" {
		if _, err := os.Stat(file); err != nil {
			return "", nil, withExitCode(exitNotFound, fmt.Errorf("import file: %w", err))
		}
		return file, func() {}, nil
	}
	tmp, err := os.CreateTemp("", "singularity-edge-import-*.jsonl")
	if err != nil {
		return "", nil, withExitCode(exitFailure, fmt.Errorf("spooling stdin: %w", err))
	}
	cleanup := func() { os.Remove(tmp.Name()) }
	_, err = io.Copy(tmp, stdin)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		cleanup()
		return "", nil, withExitCode(exitFailure, fmt.Errorf("spooling stdin: %w", err))
	}
	return tmp.Name(), cleanup, nil
}

func importFrom(ctx context.Context, st *storage.Store, path string, rows *int) error {
	f, err := os.Open(path)
	if err != nil {
		return withExitCode(exitFailure, err)
	}
	defer f.Close()
	n, err := st.Import(ctx, f)
	*rows = n
	if err != nil {
		return localError(st.Dir(), err)
	}
	return nil
}

// checkImport imports the input into a scratch store, so that a bad line
// is found before the real store is even opened (storage.Import itself
// checks every line before it writes one).
func checkImport(ctx context.Context, path string) error {
	scratch, err := os.MkdirTemp("", "singularity-edge-import-check-")
	if err != nil {
		return withExitCode(exitFailure, fmt.Errorf("creating the scratch store: %w", err))
	}
	defer os.RemoveAll(scratch)
	cfg, err := storeConfig(scratch)
	if err != nil {
		return err
	}
	// Nothing of the scratch store has to survive a crash.
	cfg.SyncWAL = false
	var n int
	err = openConfigAndRun(cfg, func(st *storage.Store) error { return importFrom(ctx, st, path, &n) })
	if err != nil {
		return fmt.Errorf("the import was checked against a scratch store and nothing was written: %w", err)
	}
	return nil
}

// createAndImport imports into a new store in dir and removes what it
// created if the import fails.
func createAndImport(ctx context.Context, dir string, path string, rows *int) error {
	_, statErr := os.Stat(dir)
	created := errors.Is(statErr, os.ErrNotExist)
	err := openAndRun(dir, func(st *storage.Store) error { return importFrom(ctx, st, path, rows) })
	if err != nil && created {
		os.RemoveAll(dir)
	}
	return err
}

// keyError says what is wrong with EDGE_ENCRYPTION_KEY once, without the
// storage package's own "encryption key" prefix.
func keyError(err error) error {
	detail := strings.TrimPrefix(strings.TrimPrefix(err.Error(), "storage: "), "encryption key: ")
	return fmt.Errorf("EDGE_ENCRYPTION_KEY %s", detail)
}

// readiness renders storage.Store.Ready for the info answer.
func readiness(err error) string {
	if err == nil {
		return "yes"
	}
	return err.Error()
}
