package apitypes

import "time"

// The /api/db routes mirror the `db` CLI against a running agent's store.

// DBInfoResponse is GET /api/db. The CLI's `db info` prints the same shape
// for a stopped store, so scripts do not care which way was used.
type DBInfoResponse struct {
	NodeID          string            `json:"node_id"`
	Dir             string            `json:"dir"`
	Tables          []string          `json:"tables"`
	Running         bool              `json:"running"`
	LastIndex       uint64            `json:"last_index"`
	HLC             uint64            `json:"hlc"`
	ClockSkewEvents uint64            `json:"clock_skew_events"`
	ClusterID       string            `json:"cluster_id"`
	Watermarks      map[string]uint64 `json:"watermarks"` // contiguous watermark per origin
	Seen            map[string]string `json:"seen"`       // seqs applied per origin, as ranges
	Ready           string            `json:"ready"`      // "yes" or why not
}

// DBTableStats is one table's (or internal column family's) size and
// memory, an item of DBTablesResponse.
type DBTableStats struct {
	Name          string `json:"name"`
	Internal      bool   `json:"internal"`
	EstimatedKeys uint64 `json:"estimated_keys"`
	LiveDataBytes uint64 `json:"live_data_bytes"`
	SSTBytes      uint64 `json:"sst_bytes"`
	MemtableBytes uint64 `json:"memtable_bytes"`
}

// DBTablesResponse is GET /api/db/tables. The block cache is shared by all
// tables, so it is reported once.
type DBTablesResponse struct {
	Tables     []DBTableStats `json:"tables"`
	BlockCache DBBlockCache   `json:"block_cache"`
}

// DBBlockCache is the shared block cache's usage.
type DBBlockCache struct {
	UsageBytes    uint64 `json:"usage_bytes"`
	CapacityBytes uint64 `json:"capacity_bytes"`
}

// DBBackupResponse is POST /api/db/backup.
type DBBackupResponse struct {
	Dir        string    `json:"dir"`
	ID         uint32    `json:"id"`
	Timestamp  time.Time `json:"timestamp"`
	SizeBytes  uint64    `json:"size_bytes"`
	NumFiles   uint32    `json:"num_files"`
	DurationMS int64     `json:"duration_ms"`
}

// DBCheckpointResponse is POST /api/db/checkpoint.
type DBCheckpointResponse struct {
	Dir        string `json:"dir"`
	DurationMS int64  `json:"duration_ms"`
}

// DBCompactResponse is POST /api/db/compact/{table}.
type DBCompactResponse struct {
	Table      string `json:"table"`
	DurationMS int64  `json:"duration_ms"`
}

// DBStatsResponse is GET /api/db/stats/{table}: RocksDB's own statistics
// text for one column family.
type DBStatsResponse struct {
	Table string `json:"table"`
	Stats string `json:"stats"`
}

// DBDir is the body of POST /api/db/backup and /api/db/checkpoint.
type DBDir struct {
	Dir string `json:"dir"`
}
