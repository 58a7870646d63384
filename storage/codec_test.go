package storage

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// Golden rows written by format version 1. If a change to the codec makes
// these fail, stored data and peers running the previous version would be
// misread: add fields under new numbers instead.
const (
	goldenPoolRow    = "010883808c8ce9879dca0112056961642d31182a2ae8010a0377656212116c656173745f636f6e6e656374696f6e731a0b66756c6c5f737472696374221073686f702e6578616d706c652e636f6d2a026331320d612e6578616d706c652e636f6d320f2a2e622e6578616d706c652e636f6d3801408090dfc04a4a260a05687474707312072f6865616c74681898032080d0acf30e28043006380a4080b09dc2df01520d6865616465723a582d557365725a0b656467655f737469636b79600168017001780182010b0a03656e76120470726f6482010c0a047465616d1204656467658a010b08eab5d2f80c10959aef3a92010b088aeed2f80c10959aef3a"
	goldenBackendRow = "01080712016f18012a4c0a0462652d3112037765621a0931302e302e312e313020a07e2a0468747470300638014203696164480152060a016b1201765a0b08eab5d2f80c10959aef3a620b08eab5d2f80c10959aef3a"
	goldenCertRow    = "01080912016f18022a84010a026331120d2a2e6578616d706c652e636f6d1a0b6578616d706c652e636f6d1a0d2a2e6578616d706c652e636f6d2204434552542a030102033205434841494e3a025233420b08eab5d2f80c10959aef3a4a0708fe85a2ffdf0e50015a0461636d65620561623a6364720b08eab5d2f80c10959aef3a7a0b08eab5d2f80c10959aef3a"
	goldenObsRow     = "01080b12026e3118032a480a026e31120462652d311a0377656222037379642801300a38d00f400148808080808040500e58c08db701620b08eab5d2f80c10959aef3a6a0178720b08eab5d2f80c10959aef3a"
	goldenTombstone  = "01080c12026e3118042001"
	goldenChangeSet  = "010a026e311004180c221d0a05706f6f6c7312037765622208080c12026e3118042a050a0377656222190a086261636b656e647312016218012208080c12026e311804"
)

var goldenTime = time.Date(2025, 1, 17, 12, 30, 45, 123456789, time.UTC)

func goldenPool() Pool {
	ts := goldenTime
	return Pool{
		Name: "web", Algorithm: "least_connections", SSLMode: "full_strict", SSLDomain: "shop.example.com",
		SSLCertID: "c1", Hosts: []string{"a.example.com", "*.b.example.com"}, ValidateBackendCert: true,
		HealthCheckInterval: 10 * time.Second,
		HealthCheck:         HealthCheck{Type: "https", Path: "/health", ExpectedStatus: 204, Timeout: 2 * time.Second, Rise: 2, Fall: 3, MaxFails: 5, Cooldown: 30 * time.Second},
		HashOn:              "header:X-User", StickyCookie: "edge_sticky", PreferRegion: true, FailOpen: true, HoldNewBackends: true, Default: true,
		Metadata:   map[string]string{"team": "edge", "env": "prod"},
		InsertedAt: ts, UpdatedAt: ts.Add(time.Hour),
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The records inside the golden rows (goldenPool is the pool's).
func goldenBackend() Backend {
	ts := goldenTime
	return Backend{ID: "be-1", PoolName: "web", Host: "10.0.1.10", Port: 8080, Scheme: "http", Weight: 3, SSLVerify: true,
		Region: "iad", Draining: true, Metadata: map[string]string{"k": "v"}, InsertedAt: ts, UpdatedAt: ts}
}

func goldenCertificate() Certificate {
	ts := goldenTime
	return Certificate{ID: "c1", Domain: "*.example.com", Names: []string{"example.com", "*.example.com"}, CertificatePEM: "CERT",
		ChainPEM: "CHAIN", Issuer: "R3", NotBefore: ts, ExpiresAt: time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), AutoRenew: true,
		Provider: "acme", Fingerprint: "ab:cd", InsertedAt: ts, UpdatedAt: ts}
}

func goldenObservation() Observation {
	ts := goldenTime
	return Observation{NodeID: "n1", BackendID: "be-1", PoolName: "web", Region: "syd", Healthy: true, CurrentConnections: 5,
		TotalRequests: 1000, TotalFailures: -1, BytesIn: 1 << 40, BytesOut: 7, LatencyAvg: 1500 * time.Microsecond,
		LastCheck: ts, LastError: "x", UpdatedAt: ts}
}

func TestGoldenV1Rows(t *testing.T) {
	ts := goldenTime
	t.Run("pool", func(t *testing.T) {
		r, err := decodeRow(mustHex(t, goldenPoolRow))
		if err != nil {
			t.Fatal(err)
		}
		if r.version != (Version{HLC: NewHLC(ts.UnixMilli(), 3), Origin: "iad-1", Seq: 42}) || r.deleted {
			t.Fatalf("envelope %+v", r)
		}
		p, err := decodePool(r.rec)
		if err != nil {
			t.Fatal(err)
		}
		if want := goldenPool(); !reflect.DeepEqual(p, want) {
			t.Fatalf("pool\n got %+v\nwant %+v", p, want)
		}
	})
	t.Run("backend", func(t *testing.T) {
		r, err := decodeRow(mustHex(t, goldenBackendRow))
		if err != nil {
			t.Fatal(err)
		}
		b, err := decodeBackend(r.rec)
		want := goldenBackend()
		if err != nil || !reflect.DeepEqual(b, want) || r.version != (Version{HLC: 7, Origin: "o", Seq: 1}) {
			t.Fatalf("backend %+v %+v %v", r.version, b, err)
		}
	})
	t.Run("certificate", func(t *testing.T) {
		r, err := decodeRow(mustHex(t, goldenCertRow))
		if err != nil {
			t.Fatal(err)
		}
		c, sealed, err := decodeCertificate(r.rec)
		want := goldenCertificate()
		if err != nil || !reflect.DeepEqual(c, want) || !reflect.DeepEqual(sealed, []byte{1, 2, 3}) {
			t.Fatalf("certificate %+v %v %v", c, sealed, err)
		}
	})
	t.Run("observation", func(t *testing.T) {
		r, err := decodeRow(mustHex(t, goldenObsRow))
		if err != nil {
			t.Fatal(err)
		}
		o, err := decodeObservation(r.rec)
		want := goldenObservation()
		if err != nil || !reflect.DeepEqual(o, want) {
			t.Fatalf("observation %+v %v", o, err)
		}
	})
	t.Run("tombstone", func(t *testing.T) {
		r, err := decodeRow(mustHex(t, goldenTombstone))
		if err != nil || !r.deleted || r.rec != nil || r.version != (Version{HLC: 12, Origin: "n1", Seq: 4}) {
			t.Fatalf("tombstone %+v %v", r, err)
		}
	})
	t.Run("change set", func(t *testing.T) {
		cs, err := UnmarshalChangeSet(mustHex(t, goldenChangeSet))
		if err != nil {
			t.Fatal(err)
		}
		v := Version{HLC: 12, Origin: "n1", Seq: 4}
		if cs.Origin != "n1" || cs.Seq != 4 || cs.HLC != 12 || len(cs.Changes) != 2 {
			t.Fatalf("change set %+v", cs)
		}
		p, err := cs.Changes[0].Pool()
		if err != nil || p.Name != "web" || p.Version != v {
			t.Fatalf("change 0: %+v %v", p, err)
		}
		if c := cs.Changes[1]; c.Table != TableBackends || c.Key != "b" || !c.Deleted || c.Value != nil || c.Version != v {
			t.Fatalf("change 1: %+v", c)
		}
	})
	// Encoding is deterministic: the same rows encode to the same bytes.
	p := goldenPool()
	got := encodeRow(row{version: Version{HLC: NewHLC(ts.UnixMilli(), 3), Origin: "iad-1", Seq: 42}, rec: encodePool(&p)})
	if hex.EncodeToString(got) != goldenPoolRow {
		t.Fatal("encoding of the golden pool changed")
	}
	be, cert, obs := goldenBackend(), goldenCertificate(), goldenObservation()
	for _, tc := range []struct {
		name string
		r    row
		want string
	}{
		{"backend", row{version: Version{HLC: 7, Origin: "o", Seq: 1}, rec: encodeBackend(&be)}, goldenBackendRow},
		{"certificate", row{version: Version{HLC: 9, Origin: "o", Seq: 2}, rec: encodeCertificate(&cert, []byte{1, 2, 3})}, goldenCertRow},
		{"observation", row{version: Version{HLC: 11, Origin: "n1", Seq: 3}, rec: encodeObservation(&obs)}, goldenObsRow},
	} {
		if got := hex.EncodeToString(encodeRow(tc.r)); got != tc.want {
			t.Errorf("encoding of the golden %s changed:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}

// A row written by a newer agent with fields this version does not know
// still decodes; the known fields keep their values.
func TestUnknownFieldsAreSkipped(t *testing.T) {
	p := Pool{Name: "web", Algorithm: "random"}
	rec := encodePool(&p)
	rec = protowire.AppendTag(rec, 99, protowire.BytesType)
	rec = protowire.AppendString(rec, "from the future")
	rec = protowire.AppendTag(rec, 100, protowire.VarintType)
	rec = protowire.AppendVarint(rec, 12345)
	rec = protowire.AppendTag(rec, 101, protowire.Fixed64Type)
	rec = protowire.AppendFixed64(rec, 1)
	rec = protowire.AppendTag(rec, 102, protowire.Fixed32Type)
	rec = protowire.AppendFixed32(rec, 1)
	env := encodeRow(row{version: Version{HLC: 1, Origin: "x"}, rec: rec})
	env = protowire.AppendTag(env, 50, protowire.VarintType)
	env = protowire.AppendVarint(env, 1)
	r, err := decodeRow(env)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodePool(r.rec)
	if err != nil || !reflect.DeepEqual(got, p) {
		t.Fatalf("got %+v, %v", got, err)
	}
}

func TestDecodeErrors(t *testing.T) {
	p := Pool{Name: "web"}
	good := encodeRow(row{version: Version{HLC: 1, Origin: "x"}, rec: encodePool(&p)})
	cases := map[string]struct {
		b    []byte
		want error
	}{
		"empty":            {nil, ErrCorrupt},
		"newer format":     {append([]byte{2}, good[1:]...), ErrFormatVersion},
		"truncated":        {good[:len(good)-2], ErrCorrupt},
		"live w/o record":  {encodeRow(row{version: Version{HLC: 1}})[:3], ErrCorrupt},
		"wrong wire type":  {append([]byte{formatV1}, protowire.AppendVarint(protowire.AppendTag(nil, 5, protowire.VarintType), 1)...), ErrCorrupt},
		"bad tag":          {[]byte{formatV1, 0x00}, ErrCorrupt},
		"group wire types": {[]byte{formatV1, 0x0b}, ErrCorrupt},
	}
	for name, tc := range cases {
		if _, err := decodeRow(tc.b); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", name, err, tc.want)
		}
	}
	if _, err := decodePool(protowire.AppendTag(nil, 17, protowire.BytesType)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("truncated time: %v", err)
	}
	badNanos := protowire.AppendBytes(protowire.AppendTag(nil, 17, protowire.BytesType), protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), 2e9))
	if _, err := decodePool(badNanos); !errors.Is(err, ErrCorrupt) {
		t.Errorf("nanoseconds out of range: %v", err)
	}
	// Seconds past what time.Time holds wrap to a time long past (an
	// expiry read so would say "expired"); the largest Go time is kept.
	timeField := func(sec int64) []byte {
		m := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), protowire.EncodeZigZag(sec))
		return protowire.AppendBytes(protowire.AppendTag(nil, 17, protowire.BytesType), m)
	}
	if _, err := decodePool(timeField(math.MaxInt64)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("seconds past time.Time's range: %v", err)
	}
	latest := time.Unix(maxUnixSeconds, 999999999).UTC()
	var e encoder
	e.time(17, latest)
	if p, err := decodePool(e.b); err != nil || !p.InsertedAt.Equal(latest) || !p.InsertedAt.After(time.Now()) {
		t.Errorf("latest time.Time: %v %v", p.InsertedAt, err)
	}
	if _, err := UnmarshalChangeSet([]byte{9}); !errors.Is(err, ErrFormatVersion) {
		t.Errorf("change set format: %v", err)
	}
}

func TestRecordRoundTrip(t *testing.T) {
	p := goldenPool()
	got, err := decodePool(encodePool(&p))
	if err != nil || !reflect.DeepEqual(got, p) {
		t.Fatalf("pool: %+v %v", got, err)
	}
	// Empty strings inside repeated fields survive; times before 1970 too.
	c := Certificate{ID: "x", Names: []string{"", "a"}, NotBefore: time.Date(1, 1, 1, 0, 0, 1, 5, time.UTC), ExpiresAt: time.Date(1960, 5, 1, 0, 0, 0, 0, time.UTC)}
	gc, sealed, err := decodeCertificate(encodeCertificate(&c, nil))
	if err != nil || !reflect.DeepEqual(gc, c) || sealed != nil {
		t.Fatalf("certificate: %+v %v", gc, err)
	}
}

// TestBackendRoundTripEdges: backend records round-trip, and re-encode to
// the same bytes, at the edges of the nested messages: empty metadata keys
// and values, lengths over one varint byte, many keys, the Unix epoch,
// times before 1970 and year 9999.
func TestBackendRoundTripEdges(t *testing.T) {
	many := map[string]string{}
	for i := range 20 {
		many[fmt.Sprintf("k%02d", i)] = strings.Repeat("v", i*15)
	}
	for _, tc := range []struct {
		name string
		b    Backend
	}{
		{"empty key and value", Backend{ID: "a", Metadata: map[string]string{"": "x", "y": "", "ünï": "ç"}}},
		{"long value", Backend{ID: "a", Metadata: map[string]string{"k": strings.Repeat("z", 300)}}},
		{"twenty keys", Backend{ID: "a", Metadata: many}},
		{"epoch", Backend{ID: "a", InsertedAt: time.Unix(0, 0).UTC(), UpdatedAt: time.Unix(0, 1).UTC()}},
		{"before 1970", Backend{ID: "a", InsertedAt: time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), UpdatedAt: time.Date(1969, 12, 31, 23, 59, 59, 999_999_999, time.UTC)}},
		{"year 9999", Backend{ID: "a", InsertedAt: time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			enc := encodeBackend(&tc.b)
			got, err := decodeBackend(enc)
			if err != nil || !reflect.DeepEqual(got, tc.b) {
				t.Fatalf("round trip:\n got %+v %v\nwant %+v", got, err, tc.b)
			}
			if again := encodeBackend(&got); !bytes.Equal(again, enc) {
				t.Fatalf("re-encoding changed the bytes:\n%x\n%x", enc, again)
			}
		})
	}
}

func FuzzDecodeRow(f *testing.F) {
	for _, s := range []string{goldenPoolRow, goldenBackendRow, goldenCertRow, goldenObsRow, goldenTombstone} {
		b, _ := hex.DecodeString(s)
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{formatV1, 0x2a, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRow(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrFormatVersion) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		// Whatever decodes re-encodes to an envelope that decodes the same.
		again, err := decodeRow(encodeRow(r))
		if err != nil || again.version != r.version || again.deleted != r.deleted {
			t.Fatalf("re-decode: %+v vs %+v, %v", again, r, err)
		}
		for _, table := range TableNames() {
			if d, err := decodeRecord(table, r.rec); err == nil && table == TableCertificates {
				_ = certificateIndexKeys(d.cert)
			}
		}
	})
}

func FuzzUnmarshalChangeSet(f *testing.F) {
	b, _ := hex.DecodeString(goldenChangeSet)
	f.Add(b)
	f.Add([]byte{formatV1})
	f.Add([]byte{formatV1, 0x22, 0x02, 0x22, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		cs, err := UnmarshalChangeSet(b)
		if err != nil {
			return
		}
		enc := cs.Marshal()
		again, err := UnmarshalChangeSet(enc)
		if err != nil {
			t.Fatalf("re-unmarshal: %v", err)
		}
		// What decodes is what is marshalled again: every field of every
		// change, not just the counts.
		if !reflect.DeepEqual(again, cs) || !bytes.Equal(again.Marshal(), enc) {
			t.Fatalf("round trip changed the set:\n%+v\n%+v", cs, again)
		}
		for _, c := range cs.Changes {
			_, _ = c.Pool()
			_, _ = c.Backend()
			_, _ = c.Observation()
			_, _ = c.Certificate()
		}
		_, _ = prepareSet(cs)
	})
}

// TestUnmarshalChangeSetExpiry: an expiry past MaxInt64 is refused as
// corrupt; it decoded as a negative one, which Marshal leaves out.
func TestUnmarshalChangeSetExpiry(t *testing.T) {
	for _, tc := range []struct {
		name    string
		expires uint64
		ok      bool
	}{
		{"none", 0, true},
		{"ordinary", 1_900_000_000_000, true},
		{"largest", 1<<63 - 1, true},
		{"past int64", 1 << 63, false},
		{"largest varint", ^uint64(0), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c encoder
			c.str(1, TableObservations)
			c.str(2, "k")
			c.uint(6, tc.expires)
			e := encoder{b: []byte{formatV1}}
			e.str(1, "o")
			e.uint(2, 1)
			e.msg(4, c.b, true)
			cs, err := UnmarshalChangeSet(e.b)
			if !tc.ok {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("expiry %d: %+v, %v; want ErrCorrupt", tc.expires, cs, err)
				}
				return
			}
			if err != nil || len(cs.Changes) != 1 || uint64(cs.Changes[0].Expires) != tc.expires || !bytes.Equal(cs.Marshal(), e.b) {
				t.Fatalf("expiry %d: %+v, %v", tc.expires, cs, err)
			}
		})
	}
}

// FuzzImportLine feeds arbitrary lines to the export-line parser and the
// validation Import applies before anything is written.
func FuzzImportLine(f *testing.F) {
	f.Add([]byte(`{"table":"pools","key":"web","version":{"hlc":5,"origin":"o","seq":1},"row":{"name":"web","ssl_domain":"a.example.com"}}`))
	f.Add([]byte(`{"table":"certificates","key":"c","version":{"hlc":5,"origin":"o","seq":1},"row":{"id":"c","expires_at":"2030-01-01T00:00:00Z"},"private_key_sealed":"AQID"}`))
	f.Add([]byte(`{"table":"observations","key":"n\u0000b","version":{"hlc":5,"origin":"o","seq":1},"deleted":true}`))
	f.Add([]byte(`{"table":"backends","key":"b","version":{"hlc":5,"origin":"o","seq":1},"row":{"id":"b","port":-1}}`))
	s := &Store{keys: &keyring{}}
	f.Fuzz(func(t *testing.T, line []byte) {
		c, err := s.importLine(line)
		if err != nil {
			return
		}
		sets, err := groupIntoSets([]Change{c})
		if err != nil {
			return
		}
		if _, err := prepareSet(sets[0]); err != nil {
			return
		}
		if !c.Deleted {
			if _, err := decodeRecord(c.Table, c.Value); err != nil {
				t.Fatalf("accepted line whose record does not decode: %v", err)
			}
		}
	})
}

func FuzzParseEncryptionKey(f *testing.F) {
	for _, s := range []string{"", "00", strings.Repeat("ab", 32), base64.StdEncoding.EncodeToString(make([]byte, 32))} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseEncryptionKey(s)
		if err == nil && len(k) != 32 {
			t.Fatalf("accepted a %d-byte key", len(k))
		}
	})
}

// TestPoolBackendTLSFieldsRoundTrip: the backend TLS settings (fields 20-22)
// survive encoding, and a record without them (an older agent's) decodes
// with them empty.
func TestPoolBackendTLSFieldsRoundTrip(t *testing.T) {
	p := goldenPool()
	p.BackendCA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
	p.BackendServerName = "backend.internal"
	p.BackendClientCertID = "client-cert-1"
	got, err := decodePool(encodePool(&p))
	if err != nil {
		t.Fatal(err)
	}
	if got.BackendCA != p.BackendCA || got.BackendServerName != p.BackendServerName || got.BackendClientCertID != p.BackendClientCertID {
		t.Fatalf("round trip lost backend TLS settings: %+v", got)
	}
	old := goldenPool()
	got, err = decodePool(encodePool(&old))
	if err != nil || got.BackendCA != "" || got.BackendServerName != "" || got.BackendClientCertID != "" {
		t.Fatalf("older record: %+v, %v", got, err)
	}
}

// TestEncoderNestedInPlace pins the in-place encoding of nested messages
// (times, metadata entries) to the plain one: a scratch message encoded
// first, then written as a length-delimited field.
func TestEncoderNestedInPlace(t *testing.T) {
	nested := func(num protowire.Number, fill func(m *encoder)) []byte {
		var m encoder
		fill(&m)
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), m.b)
	}
	long := strings.Repeat("v", 200) // a length that needs two varint bytes
	for _, tc := range []time.Time{
		time.Unix(0, 500).UTC(),
		time.Unix(1700000000, 0).UTC(),
		time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
	} {
		var e encoder
		e.time(11, tc)
		want := nested(11, func(m *encoder) { m.sint(1, tc.Unix()); m.uint(2, uint64(tc.Nanosecond())) })
		if !bytes.Equal(e.b, want) {
			t.Errorf("time %v: got %x, want %x", tc, e.b, want)
		}
	}
	many := map[string]string{}
	for i := range 12 {
		many[fmt.Sprintf("k%02d", i)] = fmt.Sprint(i)
	}
	for _, m := range []map[string]string{
		{"": "x"}, {"k": ""}, {"": ""}, {"b": "2", "a": "1"}, {"k": long}, many,
	} {
		var e encoder
		e.metadata(10, m)
		var want []byte
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			want = append(want, nested(10, func(n *encoder) { n.str(1, k); n.str(2, m[k]) })...)
		}
		if !bytes.Equal(e.b, want) {
			t.Errorf("metadata %v: got %x, want %x", m, e.b, want)
		}
	}
}
