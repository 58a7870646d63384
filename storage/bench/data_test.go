package bench

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base32"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/linxGnu/grocksdb"
	"github.com/singularity-ng/singularity-edge/storage"
)

// Data set sizes (the figures).
const (
	numPools        = 1000
	backendsPerPool = 1000
	numBackends     = numPools * backendsPerPool
	numCerts        = 100_000
	batchRows       = 1000 // rows per batched commit
	certLifetime    = 90 * 24 * time.Hour
)

// Tokens in the template records. Every generated row is the template with
// the tokens replaced by fixed-width numbers, so the anchor writes exactly
// the bytes the store's codec produced (same length, same layout) without
// reaching into the store's unexported encoder.
const (
	backendToken = "YYYYYYY" // 7 digits: backend number
	poolToken    = "ZZZZ"    // 4 digits: pool number
	certToken    = "XXXXXX"  // 6 digits: certificate number
)

func backendNum(i int) string { return fmt.Sprintf("%07d", i) }
func poolNum(p int) string    { return fmt.Sprintf("%04d", p) }
func certNum(i int) string    { return fmt.Sprintf("%06d", i) }

func backendID(i int) string { return "be-" + backendNum(i) }
func poolName(p int) string  { return "pool-" + poolNum(p) }
func certID(i int) string    { return "cert-" + certNum(i) }

// poolOf spreads consecutive backends over every pool, so that a batch of
// consecutive ids touches many pools (as a bulk import would) and a pool's
// backends are not neighbours in the primary key order.
func poolOf(i int) int { return i % numPools }

// writeWorkload says which backends a batched-write benchmark writes, and
// in what grouping. The two workloads differ only in key order and pool
// grouping: ids have the same length, rows the same bytes otherwise.
type writeWorkload struct {
	name string
	// apiIDs gives backends ids in random order, as the admin API
	// generates them (admin.newBackendID: "b-" and random base32),
	// instead of ascending numbers.
	apiIDs bool
	// poolPerBatch makes every batch of batchRows one pool's backends, as
	// POST /api/pools/{name}/backends writes them, instead of spreading
	// consecutive backends over every pool.
	poolPerBatch bool
}

var (
	// synthetic is the store's historical write workload: ascending ids,
	// every batch spread over 1,000 pools. For raw RocksDB it is the best
	// case: every key is appended after the previous one.
	synthetic = writeWorkload{name: "ascending ids, 1,000 pools per batch"}
	// apiBulk is what the product's local bulk path writes: one pool per
	// request, ids in random order.
	apiBulk = writeWorkload{name: "API bulk: random ids, one pool per batch", apiIDs: true, poolPerBatch: true}
)

// id returns the id of backend i: backendID(i), or for apiIDs "b-" and
// eight base32 characters of a 40-bit permutation of i (a bijection, so
// ids never collide), the same length as backendID's.
func (w writeWorkload) id(i int) string {
	if !w.apiIDs {
		return backendID(i)
	}
	const mask = 1<<40 - 1
	x := uint64(i) & mask
	for range 3 { // odd multiplier and xorshift: both invertible mod 2^40
		x = (x * 0x9E3779B97F) & mask
		x ^= x >> 17
	}
	var raw [5]byte
	for j := range raw {
		raw[j] = byte(x >> (8 * (4 - j)))
	}
	return "b-" + strings.ToLower(base32.StdEncoding.EncodeToString(raw[:]))
}

// pool returns the pool number of backend i.
func (w writeWorkload) pool(i int) int {
	if w.poolPerBatch {
		return i / batchRows % numPools
	}
	return poolOf(i)
}

// backend returns backend i of the workload.
func (w writeWorkload) backend(i int) storage.Backend {
	b := backendRecord(backendNum(i), poolNum(w.pool(i)))
	b.ID = w.id(i)
	return b
}

// backendRecord builds backend i with the given number strings (the tokens
// for the template).
func backendRecord(num, pool string) storage.Backend {
	return storage.Backend{
		ID:       "be-" + num,
		PoolName: "pool-" + pool,
		Host:     num + ".vm.app-" + pool + ".internal",
		Port:     8080,
		Scheme:   "http",
		Weight:   1,
		Region:   "ams",
		Metadata: map[string]string{"fly_machine_id": num},
	}
}

func makeBackend(i int) storage.Backend { return backendRecord(backendNum(i), poolNum(poolOf(i))) }

func makePool(p int) storage.Pool {
	return storage.Pool{
		Name:                poolName(p),
		Algorithm:           "round_robin",
		SSLMode:             "flexible",
		SSLDomain:           fmt.Sprintf("app-%04d.example.com", p),
		HealthCheckInterval: 10 * time.Second,
		HealthCheck:         storage.HealthCheck{Type: "http", Path: "/healthz", Timeout: 2 * time.Second, Rise: 2, Fall: 3},
	}
}

// expiryOf spreads expiries pseudo-randomly over one certificate lifetime
// after base (a multiplicative hash, so id order is not expiry order).
func expiryOf(base time.Time, i int) time.Time {
	minutes := int64(certLifetime / time.Minute)
	return base.Add(time.Duration((int64(i)*7919+13)%minutes) * time.Minute)
}

// certMaterial is one real certificate chain: every generated certificate
// carries these PEMs (generating 100,000 RSA keys would take hours).
type certMaterial struct {
	certPEM, keyPEM, chainPEM string
	issuer, fingerprint       string
}

// newCertMaterial creates a root, an intermediate and a leaf, all RSA-2048,
// shaped like a public CA's: the leaf PEM is about 1.8 KB, the PKCS#8 key
// about 1.7 KB, the chain (the intermediate) about 1.5 KB.
func newCertMaterial() (*certMaterial, error) {
	now := time.Now().Add(-time.Hour)
	newKey := func() (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, 2048) }
	rootKey, err := newKey()
	if err != nil {
		return nil, err
	}
	interKey, err := newKey()
	if err != nil {
		return nil, err
	}
	leafKey, err := newKey()
	if err != nil {
		return nil, err
	}
	root := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"Singularity Bench"}, CommonName: "Bench Root X1"},
		NotBefore: now, NotAfter: now.Add(20 * 365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, root, root, &rootKey.PublicKey, rootKey)
	if err != nil {
		return nil, err
	}
	root, _ = x509.ParseCertificate(rootDER)
	inter := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{Country: []string{"US"}, Organization: []string{"Singularity Bench"}, CommonName: "Bench Intermediate R3"},
		NotBefore: now, NotAfter: now.Add(5 * 365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		CRLDistributionPoints: []string{"http://x1.c.bench.example.org/"},
		IssuingCertificateURL: []string{"http://x1.i.bench.example.org/"},
	}
	interDER, err := x509.CreateCertificate(rand.Reader, inter, root, &interKey.PublicKey, rootKey)
	if err != nil {
		return nil, err
	}
	inter, _ = x509.ParseCertificate(interDER)
	sct := make([]byte, 242)
	if _, err := rand.Read(sct); err != nil {
		return nil, err
	}
	sct = append([]byte{0x04, 0x81, byte(len(sct))}, sct...)
	leaf := &x509.Certificate{
		SerialNumber: new(big.Int).Lsh(big.NewInt(1), 140), Subject: pkix.Name{CommonName: "site.example.com"},
		DNSNames:  []string{"site.example.com", "www.site.example.com", "api.site.example.com", "static.site.example.com"},
		NotBefore: now, NotAfter: now.Add(certLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		OCSPServer:            []string{"http://r3.o.bench.example.org"},
		IssuingCertificateURL: []string{"http://r3.i.bench.example.org/"},
		PolicyIdentifiers:     []asn1.ObjectIdentifier{{2, 23, 140, 1, 2, 1}, {1, 3, 6, 1, 4, 1, 44947, 1, 1, 1}},
		// Public CAs embed two signed certificate timestamps (about 240
		// bytes); without them the PEM would be 300 bytes short of a
		// real one.
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 11129, 2, 4, 2}, Value: sct}},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, inter, &leafKey.PublicKey, interKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(leafDER)
	return &certMaterial{
		certPEM:     string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER})),
		keyPEM:      string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
		chainPEM:    string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: interDER})),
		issuer:      inter.Subject.CommonName,
		fingerprint: hex.EncodeToString(sum[:]),
	}, nil
}

// certRecord builds a certificate with number string num.
func (m *certMaterial) certRecord(num string, expires time.Time) storage.Certificate {
	domain := "site-" + num + ".example.com"
	return storage.Certificate{
		ID:             "cert-" + num,
		Domain:         domain,
		Names:          []string{domain, "www." + domain},
		CertificatePEM: m.certPEM,
		PrivateKeyPEM:  m.keyPEM,
		ChainPEM:       m.chainPEM,
		Issuer:         m.issuer,
		NotBefore:      expires.Add(-certLifetime),
		ExpiresAt:      expires,
		AutoRenew:      true,
		Provider:       "acme",
		Fingerprint:    m.fingerprint,
	}
}

// templates holds the stored bytes (row envelope included) of one backend
// and one certificate, as the store wrote them, with the tokens in place.
type templates struct {
	backend    []byte
	backendRec []byte // the record alone (Change.Value), as the change log holds it
	cert       []byte
}

// storedTemplates writes a template backend and certificate through the
// store, closes it and reads the rows back with plain RocksDB: the exact
// bytes the store keeps for them.
func storedTemplates(ctx context.Context, dir string, key []byte, m *certMaterial, base time.Time) (*templates, error) {
	cfg := storage.DefaultConfig()
	cfg.Dir, cfg.EncryptionKey = dir, key
	st, err := storage.Open(cfg)
	if err != nil {
		return nil, err
	}
	be := backendRecord(backendToken, poolToken)
	cert := m.certRecord(certToken, base.Add(certLifetime/2))
	_, err = st.Update(ctx, func(tx *storage.Tx) error {
		if err := tx.PutBackend(&be); err != nil {
			return err
		}
		return tx.PutCertificate(&cert)
	})
	var backendRec []byte
	if err == nil {
		var ans storage.Answer
		ans, err = st.ChangeSets(ctx, st.NodeID(), st.Bookkeeping()[st.NodeID()], 0)
		for _, cs := range ans.Sets {
			for _, c := range cs.Changes {
				if c.Table == storage.TableBackends {
					backendRec = c.Value
				}
			}
		}
		if err == nil && backendRec == nil {
			err = fmt.Errorf("template backend is not in the change log")
		}
	}
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}

	opts := grocksdb.NewDefaultOptions()
	defer opts.Destroy()
	names, err := grocksdb.ListColumnFamilies(opts, dir)
	if err != nil {
		return nil, err
	}
	cfOpts := make([]*grocksdb.Options, len(names))
	for i := range names {
		cfOpts[i] = opts
	}
	db, handles, err := grocksdb.OpenDbForReadOnlyColumnFamilies(opts, dir, names, cfOpts, false)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, h := range handles {
			h.Destroy()
		}
		db.Close()
	}()
	ro := grocksdb.NewDefaultReadOptions()
	defer ro.Destroy()
	read := func(family, key string) ([]byte, error) {
		for i, n := range names {
			if n != family {
				continue
			}
			v, err := db.GetCF(ro, handles[i], []byte(key))
			if err != nil {
				return nil, err
			}
			defer v.Free()
			if !v.Exists() {
				return nil, fmt.Errorf("template %s/%s not stored", family, key)
			}
			return append([]byte(nil), v.Data()...), nil
		}
		return nil, fmt.Errorf("no column family %q", family)
	}
	t := &templates{backendRec: backendRec}
	if t.backend, err = read(storage.TableBackends, be.ID); err != nil {
		return nil, err
	}
	if t.cert, err = read(storage.TableCertificates, cert.ID); err != nil {
		return nil, err
	}
	return t, nil
}

// checkTokens verifies that every token occurs in the template only where
// the generator put it, so that replacing it changes nothing else.
func (t *templates) checkTokens() error {
	for _, c := range []struct {
		name     string
		b        []byte
		token    string
		expected int
	}{
		{"backend", t.backend, backendToken, 3}, // id, host, metadata
		{"backend", t.backend, poolToken, 2},    // pool_name, host
		{"backend record", t.backendRec, backendToken, 3},
		{"backend record", t.backendRec, poolToken, 2},
		{"certificate", t.cert, certToken, 4}, // id, domain, both names
	} {
		if n := bytes.Count(c.b, []byte(c.token)); n != c.expected {
			return fmt.Errorf("%s template holds token %q %d times, want %d", c.name, c.token, n, c.expected)
		}
	}
	return nil
}

// backendBytes returns the stored bytes of backend i.
func (t *templates) backendBytes(i int) []byte { return t.workloadBytes(synthetic, i) }

// workloadBytes returns the stored bytes of backend i of workload w. The
// id is the record's first field, so its first occurrence is the id.
func (t *templates) workloadBytes(w writeWorkload, i int) []byte {
	v := bytes.Replace(t.backend, []byte("be-"+backendToken), []byte(w.id(i)), 1)
	v = bytes.ReplaceAll(v, []byte(backendToken), []byte(backendNum(i)))
	return bytes.ReplaceAll(v, []byte(poolToken), []byte(poolNum(w.pool(i))))
}

// backendRecBytes returns the record of backend i, as a Change carries it.
func (t *templates) backendRecBytes(i int) []byte {
	v := bytes.ReplaceAll(t.backendRec, []byte(backendToken), []byte(backendNum(i)))
	return bytes.ReplaceAll(v, []byte(poolToken), []byte(poolNum(poolOf(i))))
}

// rawOrigin stands for the store's node id (16 hex digits) in the anchor.
const rawOrigin = "0123456789abcdef"

// rawEntry is one key an anchor writes, built before the timed section
// (the store's input rows are built before it too).
type rawEntry struct {
	cf         string
	key, value []byte
}

// commitEntries returns every key a store commit of backends
// first..last-1 writes to the families the anchor has (storage/tx.go):
// the row, its by-pool index entry at its position (address, then id)
// carrying a copy of the row (the covering index, which is the address
// lookup too), its change-log key, and the commit's feed entry (the
// local-seq key in meta is left out): the anchor with exactly the store's
// entries per row, in its order. Write them to a rawDB opened with
// IndexHint, as the store's index family is.
func (t *templates) commitEntries(w writeWorkload, first, last int, seq uint64) []rawEntry {
	es := make([]rawEntry, 0, 3*(last-first)+1)
	for i := first; i < last; i++ {
		id, pool := w.id(i), poolName(w.pool(i))
		row := t.workloadBytes(w, i)
		b := w.backend(i)
		es = append(es,
			rawEntry{rawRows, []byte(id), row},
			rawEntry{rawIndex, rawPoolIndexKey(pool, storage.BackendPosition(&b)), row},
			rawEntry{rawChangelog, rawClogKey(seq, id), nil})
	}
	es = append(es, rawFeedEntry(seq))
	return sortEntries(es)
}

// sortEntries sorts es as the store orders a commit's entries: each
// family's by key (the store sorts a commit's rows, and holds its index
// entries until they are sorted).
func sortEntries(es []rawEntry) []rawEntry {
	slices.SortStableFunc(es, func(a, b rawEntry) int {
		return cmp.Or(strings.Compare(a.cf, b.cf), bytes.Compare(a.key, b.key))
	})
	return es
}

// byAddressEntries returns the by-address entries the store wrote per
// backend before index version 7, when its by-pool entries were ordered
// by id and a second entry served the address lookup.
func (t *templates) byAddressEntries(w writeWorkload, first, last int) []rawEntry {
	es := make([]rawEntry, 0, last-first)
	for i := first; i < last; i++ {
		b := w.backend(i)
		es = append(es, rawEntry{rawIndex, []byte(fmt.Sprintf("\x0b%s %s://%s:%d\x00%s", b.PoolName, b.Scheme, b.Host, b.Port, b.ID)), nil})
	}
	return es
}

// floorEntries returns the fewest entries per backend that any on-disk
// key layout serving the store's reads and catch-up needs: the row keyed by pool and
// id (a pool's backends in one range, no covering copy) and an id → pool
// entry (reads by id), plus per commit one change-log entry listing the
// commit's ids (catch-up by origin and seq; DESIGN.md allows one entry per
// set) and the feed entry. No by-address entry, no version envelope: no
// layout that keeps its indexes in RocksDB writes less per row. Write them to a rawDB opened with
// IndexHint, so that each row, which lands in another pool than the one
// before, is inserted with the store's hint.
func (t *templates) floorEntries(w writeWorkload, first, last int, seq uint64) []rawEntry {
	es := make([]rawEntry, 0, 2*(last-first)+2)
	var ids []byte
	for i := first; i < last; i++ {
		id, pool := w.id(i), poolName(w.pool(i))
		es = append(es,
			rawEntry{rawClustered, rawPoolIndexKey(pool, id), t.workloadBytes(w, i)},
			rawEntry{rawRows, []byte(id), []byte(pool)})
		ids = append(append(ids, id...), 0)
	}
	return append(es, rawEntry{rawChangelog, rawClogKey(seq, ""), ids}, rawFeedEntry(seq))
}

// memIndexEntries returns what a store that kept its secondary indexes in
// memory (rebuilt at open) would write: per backend only its row keyed by
// id, per commit one change-log entry listing the commit's ids and the feed
// entry. It is the most any layout with on-disk rows could gain from moving
// the indexes out of RocksDB (docs/ARCHITECTURE.md, storage, seventh pass).
func (t *templates) memIndexEntries(w writeWorkload, first, last int, seq uint64) []rawEntry {
	es := make([]rawEntry, 0, (last-first)+2)
	var ids []byte
	for i := first; i < last; i++ {
		id := w.id(i)
		es = append(es, rawEntry{rawRows, []byte(id), t.workloadBytes(w, i)})
		ids = append(append(ids, id...), 0)
	}
	return append(es, rawEntry{rawChangelog, rawClogKey(seq, ""), ids}, rawFeedEntry(seq))
}

func rawClogKey(seq uint64, id string) []byte {
	return append(appendBE64([]byte(rawOrigin+"\x00"), seq), append([]byte{3}, id...)...)
}

func rawFeedEntry(seq uint64) rawEntry {
	return rawEntry{rawFeed, appendBE64(nil, seq), appendBE64([]byte("\x0a\x10"+rawOrigin+"\x10"), seq)}
}

// certBytes returns the stored bytes of certificate i.
func (t *templates) certBytes(i int) []byte {
	return bytes.ReplaceAll(t.cert, []byte(certToken), []byte(certNum(i)))
}

// Index keys the anchor writes, laid out as storage's (doc.go): the same
// lookups cost the same seeks. The store's by-pool entries end with the
// backend's position (storage.BackendPosition), which starts with its
// address; anchors that only scan a pool's partition put the id there.
func rawPoolIndexKey(pool, pos string) []byte {
	return []byte("\x04" + pool + "\x00" + pos)
}

func rawPoolIndexPrefix(pool string) []byte { return []byte("\x04" + pool + "\x00") }

func rawExpiryKey(t time.Time, id string) []byte {
	k := []byte{2}
	k = appendBE64(k, uint64(t.Unix())^(1<<63))
	k = appendBE32(k, uint32(t.Nanosecond()))
	return append(k, id...)
}

const rawExpiryKeyLen = 13

func appendBE64(b []byte, v uint64) []byte {
	return append(b, byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32), byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

func appendBE32(b []byte, v uint32) []byte {
	return append(b, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

func rawCertDomainKey(name, id string) []byte {
	return []byte("\x01" + strings.ToLower(name) + "\x00" + id)
}
