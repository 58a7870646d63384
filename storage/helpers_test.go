package storage

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"reflect"
	"sync/atomic"
	"testing"
	"time"
)

func testKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func testConfig(t testing.TB, dir string) Config {
	cfg := DefaultConfig()
	cfg.Dir = dir
	cfg.BlockCacheSize = 8 << 20
	cfg.WriteBufferSize = 4 << 20
	cfg.SyncWAL = false
	return cfg
}

// openStore opens a store in a fresh temp dir (or dir, when given) and
// closes it at the end of the test after checking its indexes.
func openStore(t testing.TB, mutate ...func(*Config)) *Store {
	t.Helper()
	cfg := testConfig(t, t.TempDir())
	for _, m := range mutate {
		m(&cfg)
	}
	s, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if s.Info().Running {
			checkIndexes(t, s)
		}
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// checkIndexes asserts that every index entry matches a live row that
// produces it and every live row has all its index entries.
func checkIndexes(t testing.TB, s *Store) {
	t.Helper()
	if err := s.Verify(context.Background()); err != nil {
		t.Fatalf("index/row disagreement: %v", err)
	}
}

func mustUpdate(t testing.TB, s *Store, fn func(tx *Tx) error) Commit {
	t.Helper()
	c, err := s.Update(context.Background(), fn)
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	return c
}

// rawTable returns every stored row of a table (tombstones included) as
// key -> value bytes, read directly from RocksDB.
func rawTable(t testing.TB, s *Store, table string) map[string][]byte {
	t.Helper()
	out := make(map[string][]byte)
	err := s.View(context.Background(), func(tx *Tx) error {
		it := tx.iterator(table)
		defer it.Close()
		for it.SeekToFirst(); it.Valid(); it.Next() {
			out[string(it.Key().Data())] = append([]byte(nil), it.Value().Data()...)
		}
		return it.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// assertSameRows compares two stores row by row: every table, every key,
// version, tombstone flag and record (decoded, so that sealed private keys,
// whose nonces differ, compare by their decrypted value).
func assertSameRows(t testing.TB, a, b *Store) {
	t.Helper()
	assertRows(t, a, b, true)
}

// assertSameRecords is assertSameRows without versions and expiries: for
// rows that were written again (Import) rather than replicated.
func assertSameRecords(t testing.TB, a, b *Store) {
	t.Helper()
	assertRows(t, a, b, false)
}

func assertRows(t testing.TB, a, b *Store, versions bool) {
	t.Helper()
	for _, table := range TableNames() {
		ra, rb := rawTable(t, a, table), rawTable(t, b, table)
		if len(ra) != len(rb) {
			t.Fatalf("table %s: %d rows vs %d rows", table, len(ra), len(rb))
		}
		for k, va := range ra {
			vb, ok := rb[k]
			if !ok {
				t.Fatalf("table %s: row %q missing in second store", table, k)
			}
			if bytes.Equal(va, vb) {
				continue
			}
			x, err1 := decodeRow(va)
			y, err2 := decodeRow(vb)
			if err1 != nil || err2 != nil {
				t.Fatalf("decode: %v %v", err1, err2)
			}
			if !versions {
				x.version, y.version, x.expires, y.expires = Version{}, Version{}, 0, 0
				if bytes.Equal(encodeRow(x), encodeRow(y)) {
					continue
				}
			}
			if x.version != y.version || x.deleted != y.deleted || x.expires != y.expires {
				t.Fatalf("table %s row %q: %+v/%v vs %+v/%v", table, k, x.version, x.deleted, y.version, y.deleted)
			}
			if table != TableCertificates {
				t.Fatalf("table %s row %q: records differ", table, k)
			}
			ca, err1 := a.decodeStoredCertificate(&x)
			cb, err2 := b.decodeStoredCertificate(&y)
			if err1 != nil || err2 != nil {
				t.Fatalf("decode certificate: %v %v", err1, err2)
			}
			if !reflect.DeepEqual(ca, cb) {
				t.Fatalf("certificate %q differs:\n%+v\n%+v", k, ca, cb)
			}
		}
	}
}

// waitFor polls cond until it is true or fails the test after 10s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func samplePool(name string) *Pool {
	return &Pool{
		Name: name, Algorithm: "round_robin", SSLMode: "full_strict", SSLDomain: name + ".example.com",
		Hosts: []string{"www." + name + ".example.com"}, HealthCheckInterval: 5 * time.Second,
		HealthCheck: HealthCheck{Type: "http", Path: "/healthz", Timeout: time.Second, Rise: 2, Fall: 3},
		Metadata:    map[string]string{"team": "edge"},
	}
}

// stillClock makes cfg's clock move only when the test moves it: by the
// returned offset (nanoseconds) from the time of the call.
func stillClock(cfg *Config) *atomic.Int64 {
	base := time.Now()
	var offset atomic.Int64
	cfg.Now = func() time.Time { return base.Add(time.Duration(offset.Load())) }
	return &offset
}

// putPadded commits batches of 200 backends of pool "p" whose 4 KiB of
// metadata does not compress (about 0.8 MiB a batch).
func putPadded(t *testing.T, s *Store, batches int) {
	t.Helper()
	for b := range batches {
		mustUpdate(t, s, func(tx *Tx) error {
			for i := range 200 {
				id := fmt.Sprintf("b-%02d-%03d", b, i)
				be := sampleBackend(id, "p")
				be.Metadata = map[string]string{"pad": incompressible(id, 4096)}
				if err := tx.PutBackend(be); err != nil {
					return err
				}
			}
			return nil
		})
	}
}

func sampleBackend(id, pool string) *Backend {
	return &Backend{ID: id, PoolName: pool, Host: "10.0.0.1", Port: 8080, Scheme: "http", Weight: 1, Region: "iad"}
}

const testKeyPEM = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIHx9bUxNfCL2sPrivateKeyMaterialForTests0123456789\n-----END PRIVATE KEY-----\n"

func sampleCert(id, domain string, expires time.Time, names ...string) *Certificate {
	return &Certificate{
		ID: id, Domain: domain, Names: names, CertificatePEM: "-----BEGIN CERTIFICATE-----\nMIIB" + id + "\n-----END CERTIFICATE-----\n",
		PrivateKeyPEM: testKeyPEM, Issuer: "Test CA", NotBefore: expires.Add(-90 * 24 * time.Hour), ExpiresAt: expires,
		AutoRenew: true, Provider: "upload", Fingerprint: "fp-" + id,
	}
}

// applySet applies one change set as a batch of one.
func applySet(s *Store, cs ChangeSet) (BatchResult, error) {
	return s.ApplyBatch(context.Background(), []ChangeSet{cs})
}

// changeSetsOf returns every change set of origin that s still has rows
// for, in seq order.
func changeSetsOf(s *Store, origin string) ([]ChangeSet, error) {
	ans, err := s.ChangeSets(context.Background(), origin, Span(1, s.Bookkeeping().Max(origin)), 0)
	return ans.Sets, err
}

// catchUp runs one catch-up round of dst from src, as replication does:
// per origin, ask for "their seen minus mine" and apply the answer.
func catchUp(t testing.TB, dst, src *Store) BatchResult {
	t.Helper()
	ctx := context.Background()
	var total BatchResult
	theirs := src.Bookkeeping()
	mine := dst.Bookkeeping()
	for origin, have := range theirs {
		want := have.Minus(mine[origin])
		if len(want) == 0 {
			continue
		}
		ans, err := src.ChangeSets(ctx, origin, want, 0)
		if err != nil {
			t.Fatalf("ChangeSets(%s, %s): %v", origin, want, err)
		}
		res, err := dst.ApplyAnswer(ctx, ans)
		if err != nil {
			t.Fatalf("ApplyAnswer(%s): %v", origin, err)
		}
		total.Sets += res.Sets
		total.Applied += res.Applied
		total.Skipped += res.Skipped
	}
	return total
}

func bufioWriter(w io.Writer) *bufio.Writer { return bufio.NewWriter(w) }

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
