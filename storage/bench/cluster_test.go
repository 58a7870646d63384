package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/linxGnu/grocksdb"
	"github.com/singularity-ng/singularity-edge/storage"
)

// remoteSets returns n change sets of origin, setRows backends each,
// backends numbered from first.
func remoteSets(tmpl *templates, origin string, firstSeq uint64, first, n, setRows int) []storage.ChangeSet {
	sets := make([]storage.ChangeSet, n)
	h := storage.NewHLC(time.Now().UnixMilli(), 0)
	for s := range n {
		seq := firstSeq + uint64(s)
		v := storage.Version{HLC: h + storage.HLC(seq), Origin: origin, Seq: seq}
		cs := storage.ChangeSet{Origin: origin, Seq: seq, HLC: v.HLC, Changes: make([]storage.Change, setRows)}
		for r := range setRows {
			i := first + s*setRows + r
			cs.Changes[r] = storage.Change{Table: storage.TableBackends, Key: backendID(i), Version: v, Value: tmpl.backendRecBytes(i)}
		}
		sets[s] = cs
	}
	return sets
}

// BenchmarkApplyBatch: remote change sets of 10 rows applied 100 sets
// (1,000 rows) per ApplyBatch, unsynced as replication applies them,
// against raw WriteBatches of the same rows with their index entries and
// change-log keys. Alternating batch by batch.
func BenchmarkApplyBatch(b *testing.B) {
	const (
		setRows   = 10
		batchSets = 100
		total     = 200_000
	)
	tmpl, _ := shared.templates(b)
	ctx := context.Background()
	sets := remoteSets(tmpl, "peer-origin", 1, 0, total/setRows, setRows)
	var sm, rm meter
	for range b.N {
		st, raw := openWritePair(b, false)
		wb := grocksdb.NewWriteBatch()
		for first := 0; first < len(sets); first += batchSets {
			batch := sets[first : first+batchSets]
			apply := func() error {
				_, err := st.ApplyBatch(ctx, batch)
				return err
			}
			rawBatch := func() error {
				wb.Clear()
				for _, cs := range batch {
					for _, c := range cs.Changes {
						wb.PutCF(raw.cfs[rawRows], []byte(c.Key), c.Value)
						wb.PutCF(raw.cfs[rawIndex], rawPoolIndexKey("pool", c.Key), nil)
						wb.PutCF(raw.cfs[rawChangelog], append(appendBE64([]byte(cs.Origin+"\x00"), cs.Seq), c.Key...), nil)
					}
				}
				return raw.write(wb)
			}
			if err := rotate(first/batchSets, section{&sm, batchSets * setRows, apply}, section{&rm, batchSets * setRows, countersOff(rawBatch)}); err != nil {
				b.Fatal(err)
			}
		}
		wb.Destroy()
		if got := st.Bookkeeping().Watermark("peer-origin"); got != uint64(len(sets)) {
			b.Fatalf("watermark %d after %d sets", got, len(sets))
		}
		closeWritePair(b, st, raw)
	}
	reportMeters(b, "rows/s", &sm, &rm)
	b.ReportMetric(sm.rate()/setRows, "store_sets/s")
	shared.summary.compare(fmt.Sprintf("batch apply of remote sets (%d rows/set, %d sets/batch), rows", setRows, batchSets),
		&sm, &rm, "rows/s", "store >= 100k rows/s")
	shared.summary.rate("batch apply of remote sets, sets", sm.rate()/setRows, rm.rate()/setRows, "sets/s", "store >= 1k sets/s")
}

// resetPeakRSS resets the process's peak RSS (VmHWM) so that the next
// reading covers only what follows.
func resetPeakRSS() {
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

func peakRSS(b *testing.B) uint64 {
	st, err := procStatus("VmHWM")
	if err != nil {
		b.Fatal(err)
	}
	return st["VmHWM"]
}

// BenchmarkSnapshotIngest: the 1M-backend store streamed to a file
// (Snapshot) and ingested into an empty store (Ingest: rows with their
// versions, then index and change log rebuilt). Anchors, in the same run:
// the same rows written to raw RocksDB in large WAL-less batches (what
// Ingest does for the rows) and through SstFileWriter + IngestExternalFile.
// Peak RSS is the process's, reset before each step.
func BenchmarkSnapshotIngest(b *testing.B) {
	st, _, _ := shared.backends(b)
	ctx := context.Background()
	for range b.N {
		file := filepath.Join(shared.dir(b, "snapshot"))
		f, err := os.Create(file)
		if err != nil {
			b.Fatal(err)
		}
		w := bufio.NewWriterSize(f, 1<<20)
		resetPeakRSS()
		t0 := time.Now()
		info, err := st.Snapshot(ctx, w)
		if err == nil {
			err = w.Flush()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			b.Fatal(err)
		}
		snapTime, snapRSS := time.Since(t0), peakRSS(b)

		cfg := storage.DefaultConfig()
		cfg.Dir, cfg.EncryptionKey = shared.dir(b, "ingest"), shared.key
		dst, err := storage.Open(cfg)
		if err != nil {
			b.Fatal(err)
		}
		in, err := os.Open(file)
		if err != nil {
			b.Fatal(err)
		}
		resetPeakRSS()
		t0 = time.Now()
		got, err := dst.Ingest(ctx, bufio.NewReaderSize(in, 1<<20))
		in.Close()
		if err != nil {
			b.Fatal(err)
		}
		ingestTime, ingestRSS := time.Since(t0), peakRSS(b)
		if got.Rows != info.Rows || dst.Bookkeeping().Max(dst.NodeID()) != 0 {
			b.Fatalf("ingested %d of %d rows", got.Rows, info.Rows)
		}
		if err := dst.Close(); err != nil {
			b.Fatal(err)
		}

		batchTime, sstTime := rawIngestAnchors(b, file)
		mb := float64(info.Bytes) / (1 << 20)
		b.ReportMetric(float64(info.Rows)/snapTime.Seconds(), "snapshot_rows/s")
		b.ReportMetric(mb/snapTime.Seconds(), "snapshot_MB/s")
		b.ReportMetric(float64(snapRSS)/(1<<20), "snapshot_peak_rss_MiB")
		b.ReportMetric(float64(got.Rows)/ingestTime.Seconds(), "ingest_rows/s")
		b.ReportMetric(mb/ingestTime.Seconds(), "ingest_MB/s")
		b.ReportMetric(float64(ingestRSS)/(1<<20), "ingest_peak_rss_MiB")
		b.ReportMetric(ingestTime.Seconds(), "ingest_s")
		b.ReportMetric(batchTime.Seconds(), "raw_batches_s")
		b.ReportMetric(sstTime.Seconds(), "raw_sst_ingest_s")
		shared.summary.duration(fmt.Sprintf("snapshot export, %d rows (%.0f MB)", info.Rows, mb), snapTime, 0, "")
		shared.summary.duration("snapshot ingest (rows + rebuilt index and change log), anchor: raw WAL-less batches", ingestTime, batchTime, "store < 20 s")
		shared.summary.duration("snapshot ingest, anchor: raw SstFileWriter + IngestExternalFile", ingestTime, sstTime, "")
		shared.summary.bytes("ingest peak RSS of the process (anchor: snapshot peak RSS)", ingestRSS, snapRSS, "")
		for _, d := range []string{file, cfg.Dir} {
			if err := os.RemoveAll(d); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// rawIngestAnchors writes the rows of a snapshot file into two fresh raw
// databases: large WAL-less WriteBatches, and one SST per table written
// with SstFileWriter (keys sorted, as a snapshot delivers them) and
// ingested.
func rawIngestAnchors(b *testing.B, file string) (batches, sst time.Duration) {
	rows := readSnapshotRows(b, file)
	raw, err := openRaw(shared.dir(b, "raw-ingest"), defaultRawConfig())
	if err != nil {
		b.Fatal(err)
	}
	wo := grocksdb.NewDefaultWriteOptions()
	wo.DisableWAL(true)
	wb := grocksdb.NewWriteBatch()
	t0 := time.Now()
	for i, r := range rows {
		wb.PutCF(raw.cfs[rawRows], r[0], r[1])
		if (i+1)%10000 == 0 || i == len(rows)-1 {
			if err := raw.db.Write(wo, wb); err != nil {
				b.Fatal(err)
			}
			wb.Clear()
		}
	}
	fo := grocksdb.NewDefaultFlushOptions()
	fo.SetWait(true)
	if err := raw.db.FlushCF(raw.cfs[rawRows], fo); err != nil {
		b.Fatal(err)
	}
	batches = time.Since(t0)
	wb.Destroy()
	wo.Destroy()
	if err := raw.close(); err != nil {
		b.Fatal(err)
	}

	raw2, err := openRaw(shared.dir(b, "raw-sst"), defaultRawConfig())
	if err != nil {
		b.Fatal(err)
	}
	t0 = time.Now()
	sort.Slice(rows, func(i, j int) bool { return string(rows[i][0]) < string(rows[j][0]) })
	envOpts := grocksdb.NewDefaultEnvOptions()
	opts := grocksdb.NewDefaultOptions()
	w := grocksdb.NewSSTFileWriter(envOpts, opts)
	path := filepath.Join(shared.dir(b, "sst"))
	if err := w.Open(path); err != nil {
		b.Fatal(err)
	}
	var prev []byte
	for _, r := range rows {
		if prev != nil && string(prev) == string(r[0]) {
			continue
		}
		if err := w.Add(r[0], r[1]); err != nil {
			b.Fatal(err)
		}
		prev = r[0]
	}
	if err := w.Finish(); err != nil {
		b.Fatal(err)
	}
	io := grocksdb.NewDefaultIngestExternalFileOptions()
	io.SetMoveFiles(true)
	if err := raw2.db.IngestExternalFileCF(raw2.cfs[rawRows], []string{path}, io); err != nil {
		b.Fatal(err)
	}
	sst = time.Since(t0)
	io.Destroy()
	w.Destroy()
	opts.Destroy()
	envOpts.Destroy()
	if err := raw2.close(); err != nil {
		b.Fatal(err)
	}
	return batches, sst
}

// readSnapshotRows reads the (key, value) pairs of a snapshot file through
// a store-independent parse of its frames (type, uvarint length, payload,
// crc32c).
func readSnapshotRows(b *testing.B, file string) [][2][]byte {
	data, err := os.ReadFile(file)
	if err != nil {
		b.Fatal(err)
	}
	var rows [][2][]byte
	for len(data) > 0 {
		typ := data[0]
		n, k := uvarint(data[1:])
		payload := data[1+k : 1+k+int(n)]
		data = data[1+k+int(n)+4:]
		if typ != 'R' {
			continue
		}
		p := payload[1:]
		for len(p) > 0 {
			var kv [2][]byte
			for i := range kv {
				l, m := uvarint(p)
				kv[i] = p[m : m+int(l)]
				p = p[m+int(l):]
			}
			rows = append(rows, kv)
		}
	}
	return rows
}

func uvarint(b []byte) (uint64, int) {
	var x uint64
	var s uint
	for i, c := range b {
		if c < 0x80 {
			return x | uint64(c)<<s, i + 1
		}
		x |= uint64(c&0x7f) << s
		s += 7
	}
	return 0, 0
}

// BenchmarkChangeLogOverwrite: every row of 100,000 backends overwritten
// 10 times; the change log keeps one key per row, so its size per row
// stays what it was after the first write. Reported after a full
// compaction, against the rows' own bytes.
func BenchmarkChangeLogOverwrite(b *testing.B) {
	const rows = 100_000
	ctx := context.Background()
	for range b.N {
		st, raw := openWritePair(b, false)
		var perRow []float64
		for round := 0; round <= 10; round++ {
			for first := 0; first < rows; first += batchRows {
				_, err := st.Update(ctx, func(tx *storage.Tx) error {
					for i := first; i < first+batchRows; i++ {
						be := makeBackend(i)
						be.Weight = round + 1
						if err := tx.PutBackend(&be); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			if round == 0 || round == 10 {
				for _, t := range []string{"changelog", storage.TableBackends} {
					if err := st.Compact(ctx, t); err != nil {
						b.Fatal(err)
					}
				}
				stats, err := st.TableStats(ctx)
				if err != nil {
					b.Fatal(err)
				}
				var clog, table uint64
				for _, s := range stats {
					switch s.Table {
					case "changelog":
						clog = s.SSTBytes
					case storage.TableBackends:
						table = s.SSTBytes
					}
				}
				perRow = append(perRow, float64(clog)/rows)
				b.ReportMetric(float64(table)/rows, fmt.Sprintf("row_bytes_per_row_after_%d", round))
			}
		}
		b.ReportMetric(perRow[0], "changelog_bytes_per_row_after_1_write")
		b.ReportMetric(perRow[1], "changelog_bytes_per_row_after_11_writes")
		shared.summary.rate("change-log bytes per row: after 11 writes of every row | after 1", perRow[1], perRow[0], "B/row", "bounded (ratio ~1)")
		closeWritePair(b, st, raw)
	}
}
