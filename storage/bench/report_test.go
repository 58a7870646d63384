package bench

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
)

// summaryRow is one line of the human summary printed after the run.
type summaryRow struct {
	metric string
	store  string
	raw    string
	ratio  string // store/raw
	goal   string
	cpu    string // foreground CPU per operation, store | raw
}

// summary collects the rows in the order benchmarks report them; a
// benchmark that runs again (b.N > 1) replaces its rows.
type summary struct {
	mu   sync.Mutex
	rows []summaryRow
}

func (s *summary) add(r summaryRow) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.rows {
		if s.rows[i].metric == r.metric {
			s.rows[i] = r
			return
		}
	}
	s.rows = append(s.rows, r)
}

// rate adds a throughput row: higher is better, ratio = store/raw.
func (s *summary) rate(metric string, store, raw float64, unit, goal string) {
	s.add(summaryRow{metric: metric, store: fmtNum(store) + " " + unit, raw: fmtNum(raw) + " " + unit, ratio: ratio(store, raw), goal: goal})
}

// compare adds a throughput row from two meters, with foreground CPU per
// operation beside it.
func (s *summary) compare(metric string, store, raw *meter, unit, goal string) {
	r := summaryRow{metric: metric, store: fmtNum(store.rate()) + " " + unit, raw: fmtNum(raw.rate()) + " " + unit,
		ratio: ratio(store.rate(), raw.rate()), goal: goal}
	r.cpu = fmt.Sprintf("%s | %s us", fmtNum(store.cpuPerOp()), fmtNum(raw.cpuPerOp()))
	s.add(r)
}

// duration adds a time row: lower is better, ratio = store/raw.
func (s *summary) duration(metric string, store, raw time.Duration, goal string) {
	rawText, r := "-", "-"
	if raw > 0 {
		rawText, r = fmtDuration(raw), ratio(store.Seconds(), raw.Seconds())
	}
	s.add(summaryRow{metric: metric, store: fmtDuration(store), raw: rawText, ratio: r, goal: goal})
}

// bytes adds a size row in MiB.
func (s *summary) bytes(metric string, store, raw uint64, goal string) {
	rawText, r := "-", "-"
	if raw > 0 {
		rawText, r = fmtMiB(raw), ratio(float64(store), float64(raw))
	}
	s.add(summaryRow{metric: metric, store: fmtMiB(store), raw: rawText, ratio: r, goal: goal})
}

func (s *summary) print(w io.Writer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.rows) == 0 {
		return
	}
	fmt.Fprintln(w, "\nstorage benchmark summary (ratio = store / raw RocksDB)")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "metric\tstore\traw RocksDB\tratio\tgoal\tfg CPU/op store | raw")
	for _, r := range s.rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.metric, r.store, r.raw, r.ratio, orDash(r.goal), orDash(r.cpu))
	}
	_ = tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func ratio(store, raw float64) string {
	if raw == 0 {
		return "-"
	}
	return strconv.FormatFloat(store/raw, 'f', 2, 64)
}

func fmtNum(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

func fmtDuration(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	default:
		return d.Round(100 * time.Microsecond).String()
	}
}

func fmtMiB(b uint64) string { return fmtNum(float64(b)/(1<<20)) + " MiB" }

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func perSecond(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// median of a few durations.
func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// procStatus reads fields of /proc/self/status in bytes (VmRSS, VmHWM).
func procStatus(fields ...string) (map[string]uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := make(map[string]uint64, len(fields))
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || !slices.Contains(fields, name) {
			continue
		}
		parts := strings.Fields(rest)
		if len(parts) != 2 || parts[1] != "kB" {
			return nil, fmt.Errorf("/proc/self/status: unexpected %s line %q", name, sc.Text())
		}
		kb, err := strconv.ParseUint(parts[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("/proc/self/status: %s: %w", name, err)
		}
		out[name] = kb << 10
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, name := range fields {
		if _, ok := out[name]; !ok {
			return nil, fmt.Errorf("/proc/self/status has no %s", name)
		}
	}
	return out, nil
}

// dirSize is the space the files under dir take on disk (allocated
// blocks, so sparse or preallocated files count as the disk sees them).
func dirSize(dir string) (uint64, error) {
	var total uint64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		total += allocatedBytes(info)
		return nil
	})
	return total, err
}

// allocatedBytes is what a file occupies on disk (st_blocks), falling back
// to its length where the platform does not say.
func allocatedBytes(info fs.FileInfo) uint64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Blocks) * 512
	}
	return uint64(info.Size())
}
