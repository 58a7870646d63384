package storage

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// Encoding of stored values.
//
// Every value starts with one format-version byte (formatV1). The rest is
// protobuf wire format written and read by hand with protowire: no .proto
// files and no generated code, but protobuf's compatibility rules. Each field
// has a number that never changes meaning; a reader skips field numbers it
// does not know (an older agent reading a newer agent's row keeps working)
// and takes the zero value for fields that are absent (a newer agent reads
// an older agent's row). Zero values are not written, so rows stay compact.
// The format byte is for the day a change cannot be expressed that way: a
// reader refuses a format it does not know with ErrFormatVersion instead of
// misreading it.
//
// A row value is an envelope:
//
//	byte 0   format version (1)
//	field 1  version.hlc     varint
//	field 2  version.origin  bytes
//	field 3  version.seq     varint
//	field 4  deleted         varint (1 = tombstone, record absent)
//	field 5  record          bytes (the record message, below)
//	field 6  expires         varint (Unix ms; observation and TTL rows)
//
// Record messages (Change.Value holds exactly these bytes):
//
//	Certificate: 1 id, 2 domain, 3 names (repeated), 4 certificate_pem,
//	  5 private_key (sealed, see crypto.go), 6 chain_pem, 7 issuer,
//	  8 not_before, 9 expires_at, 10 auto_renew, 11 provider, 12 fingerprint,
//	  13 metadata, 14 inserted_at, 15 updated_at
//	Pool: 1 name, 2 algorithm, 3 ssl_mode, 4 ssl_domain, 5 ssl_cert_id,
//	  6 hosts (repeated), 7 validate_backend_cert, 8 health_check_interval,
//	  9 health_check (HealthCheck), 10 hash_on, 11 sticky_cookie,
//	  12 prefer_region, 13 fail_open, 14 hold_new_backends, 15 default,
//	  16 metadata, 17 inserted_at, 18 updated_at, 19 allow_http,
//	  20 backend_ca, 21 backend_server_name, 22 backend_client_cert_id,
//	  23 no_auto_cert, 24 on_demand_tls, 25 on_demand_allow (repeated),
//	  26 on_demand_ask, 27 on_demand_rate
//	HealthCheck: 1 type, 2 path, 3 expected_status, 4 timeout, 5 rise,
//	  6 fall, 7 max_fails, 8 cooldown
//	Backend: 1 id, 2 pool_name, 3 host, 4 port, 5 scheme, 6 weight,
//	  7 ssl_verify, 8 region, 9 draining, 10 metadata, 11 inserted_at,
//	  12 updated_at
//	Observation: 1 node_id, 2 backend_id, 3 pool_name, 4 region, 5 healthy,
//	  6 current_connections, 7 total_requests, 8 total_failures, 9 bytes_in,
//	  10 bytes_out, 11 latency_avg, 12 last_check, 13 last_error,
//	  14 updated_at
//
// Integers are zig-zag varints (sint64), durations nanoseconds, times a
// nested {1: unix seconds, 2: nanoseconds} message, metadata repeated
// {1: key, 2: value} entries sorted by key (equal rows, equal bytes).
const formatV1 byte = 1

// row is a decoded row envelope.
type row struct {
	version Version
	deleted bool
	rec     []byte
	expires int64 // Unix ms after which the row counts as absent; 0: never
}

// expiredAt reports whether the row has an expiry at or before ms.
func (r *row) expiredAt(ms int64) bool { return r.expires > 0 && r.expires <= ms }

func encodeRow(r row) []byte {
	return appendRow(make([]byte, 0, 32+len(r.rec)+len(r.version.Origin)), r)
}

// appendRow appends the envelope of r to dst: commits encode every row
// into one reused buffer, since RocksDB copies what it is given.
func appendRow(dst []byte, r row) []byte {
	e := encoder{b: append(dst, formatV1)}
	e.uint(1, uint64(r.version.HLC))
	e.str(2, r.version.Origin)
	e.uint(3, r.version.Seq)
	e.bool(4, r.deleted)
	if !r.deleted {
		e.msg(5, r.rec, true)
	}
	if r.expires > 0 {
		e.uint(6, uint64(r.expires))
	}
	return e.b
}

func checkFormat(b []byte) ([]byte, error) {
	if len(b) == 0 {
		return nil, errWire("empty value")
	}
	if b[0] != formatV1 {
		return nil, fmt.Errorf("%w: %d (this agent reads %d)", ErrFormatVersion, b[0], formatV1)
	}
	return b[1:], nil
}

func decodeRow(b []byte) (row, error) { return decodeRowFrom(b, false) }

// decodeRowBorrowed decodes like decodeRow, but the record aliases b: for
// a reader that decodes the record before b goes away (an iterator's
// value), it saves a copy per row.
func decodeRowBorrowed(b []byte) (row, error) { return decodeRowFrom(b, true) }

func decodeRowFrom(b []byte, borrow bool) (row, error) {
	var r row
	body, err := checkFormat(b)
	if err != nil {
		return r, err
	}
	hasRec := false
	err = decodeFields(body, func(f field) error {
		switch f.num {
		case 1:
			var h uint64
			if err := f.uint64(&h); err != nil {
				return err
			}
			r.version.HLC = HLC(h)
		case 2:
			return f.str(&r.version.Origin)
		case 3:
			return f.uint64(&r.version.Seq)
		case 4:
			return f.bool(&r.deleted)
		case 5:
			hasRec = true
			if borrow {
				if err := f.want(protowire.BytesType); err != nil {
					return err
				}
				r.rec = f.b
				return nil
			}
			return f.bytes(&r.rec)
		case 6:
			var ms uint64
			if err := f.uint64(&ms); err != nil {
				return err
			}
			r.expires = int64(ms)
		}
		return nil
	})
	if err != nil {
		return row{}, err
	}
	if !r.deleted && !hasRec {
		return row{}, errWire("live row without a record")
	}
	return r, nil
}

func encodeVersion(v Version) []byte {
	var e encoder
	e.uint(1, uint64(v.HLC))
	e.str(2, v.Origin)
	e.uint(3, v.Seq)
	return e.b
}

func decodeVersion(b []byte) (Version, error) {
	var v Version
	err := decodeFields(b, func(f field) error {
		switch f.num {
		case 1:
			var h uint64
			if err := f.uint64(&h); err != nil {
				return err
			}
			v.HLC = HLC(h)
		case 2:
			return f.str(&v.Origin)
		case 3:
			return f.uint64(&v.Seq)
		}
		return nil
	})
	return v, err
}

// encodeCertificate encodes c with its private key already sealed.
func encodeCertificate(c *Certificate, sealedKey []byte) []byte {
	var e encoder
	e.str(1, c.ID)
	e.str(2, c.Domain)
	e.strs(3, c.Names)
	e.str(4, c.CertificatePEM)
	e.bytes(5, sealedKey)
	e.str(6, c.ChainPEM)
	e.str(7, c.Issuer)
	e.time(8, c.NotBefore)
	e.time(9, c.ExpiresAt)
	e.bool(10, c.AutoRenew)
	e.str(11, c.Provider)
	e.str(12, c.Fingerprint)
	e.metadata(13, c.Metadata)
	e.time(14, c.InsertedAt)
	e.time(15, c.UpdatedAt)
	return e.b
}

// decodeCertificate decodes a certificate record; the private key stays
// sealed (PrivateKeyPEM empty) and is returned separately.
func decodeCertificate(b []byte) (Certificate, []byte, error) {
	var c Certificate
	var sealed []byte
	err := decodeFields(b, func(f field) error {
		switch f.num {
		case 1:
			return f.str(&c.ID)
		case 2:
			return f.str(&c.Domain)
		case 3:
			return f.appendStr(&c.Names)
		case 4:
			return f.str(&c.CertificatePEM)
		case 5:
			return f.bytes(&sealed)
		case 6:
			return f.str(&c.ChainPEM)
		case 7:
			return f.str(&c.Issuer)
		case 8:
			return f.time(&c.NotBefore)
		case 9:
			return f.time(&c.ExpiresAt)
		case 10:
			return f.bool(&c.AutoRenew)
		case 11:
			return f.str(&c.Provider)
		case 12:
			return f.str(&c.Fingerprint)
		case 13:
			return f.metadataEntry(&c.Metadata)
		case 14:
			return f.time(&c.InsertedAt)
		case 15:
			return f.time(&c.UpdatedAt)
		}
		return nil
	})
	if err != nil {
		return Certificate{}, nil, fmt.Errorf("certificate record: %w", err)
	}
	return c, sealed, nil
}

func encodeHealthCheck(h *HealthCheck) []byte {
	var e encoder
	e.str(1, h.Type)
	e.str(2, h.Path)
	e.sint(3, int64(h.ExpectedStatus))
	e.sint(4, int64(h.Timeout))
	e.sint(5, int64(h.Rise))
	e.sint(6, int64(h.Fall))
	e.sint(7, int64(h.MaxFails))
	e.sint(8, int64(h.Cooldown))
	return e.b
}

func decodeHealthCheck(b []byte, h *HealthCheck) error {
	return decodeFields(b, func(f field) error {
		switch f.num {
		case 1:
			return f.str(&h.Type)
		case 2:
			return f.str(&h.Path)
		case 3:
			return f.int(&h.ExpectedStatus)
		case 4:
			return f.duration(&h.Timeout)
		case 5:
			return f.int(&h.Rise)
		case 6:
			return f.int(&h.Fall)
		case 7:
			return f.int(&h.MaxFails)
		case 8:
			return f.duration(&h.Cooldown)
		}
		return nil
	})
}

func encodePool(p *Pool) []byte {
	var e encoder
	e.str(1, p.Name)
	e.str(2, p.Algorithm)
	e.str(3, p.SSLMode)
	e.str(4, p.SSLDomain)
	e.str(5, p.SSLCertID)
	e.strs(6, p.Hosts)
	e.bool(7, p.ValidateBackendCert)
	e.sint(8, int64(p.HealthCheckInterval))
	e.msg(9, encodeHealthCheck(&p.HealthCheck), false)
	e.str(10, p.HashOn)
	e.str(11, p.StickyCookie)
	e.bool(12, p.PreferRegion)
	e.bool(13, p.FailOpen)
	e.bool(14, p.HoldNewBackends)
	e.bool(15, p.Default)
	e.metadata(16, p.Metadata)
	e.time(17, p.InsertedAt)
	e.time(18, p.UpdatedAt)
	e.bool(19, p.AllowHTTP)
	e.str(20, p.BackendCA)
	e.str(21, p.BackendServerName)
	e.str(22, p.BackendClientCertID)
	e.bool(23, p.NoAutoCert)
	e.bool(24, p.OnDemandTLS)
	e.strs(25, p.OnDemandAllow)
	e.str(26, p.OnDemandAsk)
	e.sint(27, int64(p.OnDemandRate))
	return e.b
}

func decodePool(b []byte) (Pool, error) {
	var p Pool
	err := decodeFields(b, func(f field) error {
		switch f.num {
		case 1:
			return f.str(&p.Name)
		case 2:
			return f.str(&p.Algorithm)
		case 3:
			return f.str(&p.SSLMode)
		case 4:
			return f.str(&p.SSLDomain)
		case 5:
			return f.str(&p.SSLCertID)
		case 6:
			return f.appendStr(&p.Hosts)
		case 7:
			return f.bool(&p.ValidateBackendCert)
		case 8:
			return f.duration(&p.HealthCheckInterval)
		case 9:
			if err := f.want(protowire.BytesType); err != nil {
				return err
			}
			return decodeHealthCheck(f.b, &p.HealthCheck)
		case 10:
			return f.str(&p.HashOn)
		case 11:
			return f.str(&p.StickyCookie)
		case 12:
			return f.bool(&p.PreferRegion)
		case 13:
			return f.bool(&p.FailOpen)
		case 14:
			return f.bool(&p.HoldNewBackends)
		case 15:
			return f.bool(&p.Default)
		case 16:
			return f.metadataEntry(&p.Metadata)
		case 17:
			return f.time(&p.InsertedAt)
		case 18:
			return f.time(&p.UpdatedAt)
		case 19:
			return f.bool(&p.AllowHTTP)
		case 20:
			return f.str(&p.BackendCA)
		case 21:
			return f.str(&p.BackendServerName)
		case 22:
			return f.str(&p.BackendClientCertID)
		case 23:
			return f.bool(&p.NoAutoCert)
		case 24:
			return f.bool(&p.OnDemandTLS)
		case 25:
			return f.appendStr(&p.OnDemandAllow)
		case 26:
			return f.str(&p.OnDemandAsk)
		case 27:
			return f.int(&p.OnDemandRate)
		}
		return nil
	})
	if err != nil {
		return Pool{}, fmt.Errorf("pool record: %w", err)
	}
	return p, nil
}

func encodeBackend(b *Backend) []byte {
	// Sized once: bulk writes encode a backend per row, and growing the
	// buffer field by field cost more than the encoding itself. Metadata
	// is estimated (ranging over the map twice costs more than one more
	// growth for the rare large map).
	n := len(b.ID) + len(b.PoolName) + len(b.Host) + len(b.Scheme) + len(b.Region) + 64 + 48*len(b.Metadata)
	e := encoder{b: make([]byte, 0, n)}
	e.str(1, b.ID)
	e.str(2, b.PoolName)
	e.str(3, b.Host)
	e.sint(4, int64(b.Port))
	e.str(5, b.Scheme)
	e.sint(6, int64(b.Weight))
	e.bool(7, b.SSLVerify)
	e.str(8, b.Region)
	e.bool(9, b.Draining)
	e.metadata(10, b.Metadata)
	e.time(11, b.InsertedAt)
	e.time(12, b.UpdatedAt)
	return e.b
}

func decodeBackend(b []byte) (Backend, error) {
	var be Backend
	err := decodeFields(b, func(f field) error {
		switch f.num {
		case 1:
			return f.str(&be.ID)
		case 2:
			return f.str(&be.PoolName)
		case 3:
			return f.str(&be.Host)
		case 4:
			return f.int(&be.Port)
		case 5:
			return f.str(&be.Scheme)
		case 6:
			return f.int(&be.Weight)
		case 7:
			return f.bool(&be.SSLVerify)
		case 8:
			return f.str(&be.Region)
		case 9:
			return f.bool(&be.Draining)
		case 10:
			return f.metadataEntry(&be.Metadata)
		case 11:
			return f.time(&be.InsertedAt)
		case 12:
			return f.time(&be.UpdatedAt)
		}
		return nil
	})
	if err != nil {
		return Backend{}, fmt.Errorf("backend record: %w", err)
	}
	return be, nil
}

func encodeObservation(o *Observation) []byte {
	var e encoder
	e.str(1, o.NodeID)
	e.str(2, o.BackendID)
	e.str(3, o.PoolName)
	e.str(4, o.Region)
	e.bool(5, o.Healthy)
	e.sint(6, o.CurrentConnections)
	e.sint(7, o.TotalRequests)
	e.sint(8, o.TotalFailures)
	e.sint(9, o.BytesIn)
	e.sint(10, o.BytesOut)
	e.sint(11, int64(o.LatencyAvg))
	e.time(12, o.LastCheck)
	e.str(13, o.LastError)
	e.time(14, o.UpdatedAt)
	return e.b
}

func decodeObservation(b []byte) (Observation, error) {
	var o Observation
	err := decodeFields(b, func(f field) error {
		switch f.num {
		case 1:
			return f.str(&o.NodeID)
		case 2:
			return f.str(&o.BackendID)
		case 3:
			return f.str(&o.PoolName)
		case 4:
			return f.str(&o.Region)
		case 5:
			return f.bool(&o.Healthy)
		case 6:
			return f.int64(&o.CurrentConnections)
		case 7:
			return f.int64(&o.TotalRequests)
		case 8:
			return f.int64(&o.TotalFailures)
		case 9:
			return f.int64(&o.BytesIn)
		case 10:
			return f.int64(&o.BytesOut)
		case 11:
			return f.duration(&o.LatencyAvg)
		case 12:
			return f.time(&o.LastCheck)
		case 13:
			return f.str(&o.LastError)
		case 14:
			return f.time(&o.UpdatedAt)
		}
		return nil
	})
	if err != nil {
		return Observation{}, fmt.Errorf("observation record: %w", err)
	}
	return o, nil
}
