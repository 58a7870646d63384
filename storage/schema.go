package storage

import (
	"fmt"
	"strings"
	"time"
)

// TableClass says how a table's rows live and replicate.
type TableClass uint8

const (
	// ClassReplicated rows are configuration: last-write-wins by version,
	// deletes leave tombstones that PurgeTombstones removes once every
	// member has them, and every current version is in the change log.
	ClassReplicated TableClass = iota + 1
	// ClassObservation rows are what one node observes (one writer per
	// key: the node id leads the key). Only the latest value matters: each
	// write sets an expiry (Config.ObservationTTL), so the rows of a node
	// that left disappear on every node without their owner; a delete is a
	// tombstone with the same expiry. Expired rows, tombstones included,
	// are removed locally (ExpireRows) and never need the purge rule.
	ClassObservation
	// ClassTTL rows carry an expiry set by the writer (challenge tokens,
	// leases); readers treat an expired row as absent and ExpireRows
	// removes it locally on every node.
	ClassTTL
)

func (c TableClass) String() string {
	switch c {
	case ClassReplicated:
		return "replicated"
	case ClassObservation:
		return "observation"
	case ClassTTL:
		return "ttl"
	}
	return fmt.Sprintf("class(%d)", uint8(c))
}

// tableDef declares a table once: the commit path, apply, change log,
// snapshot, export, stats, verification, repair and the CLI all iterate
// schema, so a new table is one entry here plus its record codec.
type tableDef struct {
	name     string
	id       byte // in change-log, tombstone and expiry keys; never reused
	singular string
	class    TableClass
	indexes  []byte // the index ids whose entries belong to its rows
	// checkKey validates a primary key of the table.
	checkKey func(key string) error
	// decode decodes record bytes: key, index entries, insertion time.
	decode func(rec []byte) (decodedRecord, error)
	// validate checks what the store needs of a record it did not build.
	validate func(d decodedRecord) error
}

// schema is the list of tables, in their stable order. It is never
// modified.
var schema = []*tableDef{
	{
		name: TableCertificates, id: 1, singular: "certificate", class: ClassReplicated,
		indexes:  []byte{idxCertDomain, idxCertExpiry},
		checkKey: func(k string) error { return validateKey("certificate key", k) },
		decode: func(rec []byte) (decodedRecord, error) {
			c, _, err := decodeCertificate(rec)
			if err != nil {
				return decodedRecord{}, err
			}
			return decodedRecord{key: c.ID, idx: certificateIndexKeys(&c), insertedAt: c.InsertedAt, cert: &c}, nil
		},
		validate: func(d decodedRecord) error {
			if err := validateKey("certificate id", d.cert.ID); err != nil {
				return err
			}
			for _, n := range certificateNames(d.cert) {
				if err := validateKey("certificate name", n); err != nil {
					return err
				}
			}
			return nil
		},
	},
	{
		name: TablePools, id: 2, singular: "pool", class: ClassReplicated,
		indexes:  []byte{idxPoolSSLDomain, idxPoolCert, idxPoolHost, idxPoolDefault, idxPoolOnDemand},
		checkKey: func(k string) error { return validateKey("pool key", k) },
		decode: func(rec []byte) (decodedRecord, error) {
			p, err := decodePool(rec)
			if err != nil {
				return decodedRecord{}, err
			}
			return decodedRecord{key: p.Name, idx: poolIndexKeys(&p), insertedAt: p.InsertedAt, pool: &p}, nil
		},
		validate: func(d decodedRecord) error {
			if err := validateKey("pool name", d.pool.Name); err != nil {
				return err
			}
			if err := validateIndexed("pool ssl_domain", normalizeDomain(d.pool.SSLDomain)); err != nil {
				return err
			}
			if err := validateIndexed("pool ssl_cert_id", d.pool.SSLCertID); err != nil {
				return err
			}
			for _, h := range d.pool.Hosts {
				if err := validateIndexed("pool host", normalizeDomain(h)); err != nil {
					return err
				}
			}
			for _, h := range d.pool.OnDemandAllow {
				if err := validateIndexed("pool on_demand_allow", normalizeDomain(h)); err != nil {
					return err
				}
			}
			return nil
		},
	},
	{
		name: TableBackends, id: 3, singular: "backend", class: ClassReplicated,
		indexes:  []byte{idxBackendPool},
		checkKey: func(k string) error { return validateKey("backend key", k) },
		decode: func(rec []byte) (decodedRecord, error) {
			b, err := decodeBackend(rec)
			if err != nil {
				return decodedRecord{}, err
			}
			return decodedRecord{key: b.ID, idx: backendIndexKeys(&b), insertedAt: b.InsertedAt, be: &b}, nil
		},
		validate: func(d decodedRecord) error {
			if err := validateKey("backend id", d.be.ID); err != nil {
				return err
			}
			return validateIndexed("backend pool_name", d.be.PoolName)
		},
	},
	{
		name: TableObservations, id: 4, singular: "observation", class: ClassObservation,
		indexes: []byte{idxObsHealth, idxObsBackend},
		checkKey: func(key string) error {
			node, backend, ok := strings.Cut(key, "\x00")
			if !ok {
				return fmt.Errorf("%w: observation key %q is not node id, NUL, backend id", ErrInvalid, key)
			}
			if err := validateKey("observation node id", node); err != nil {
				return err
			}
			return validateKey("observation backend id", backend)
		},
		decode: func(rec []byte) (decodedRecord, error) {
			o, err := decodeObservation(rec)
			if err != nil {
				return decodedRecord{}, err
			}
			return decodedRecord{key: ObservationKey(o.NodeID, o.BackendID), idx: observationIndexKeys(&o), obs: &o}, nil
		},
		validate: func(d decodedRecord) error {
			if err := validateKey("observation node_id", d.obs.NodeID); err != nil {
				return err
			}
			return validateKey("observation backend_id", d.obs.BackendID)
		},
	},
	{
		// ACME state (accounts, challenge tokens, leases, renewal state,
		// budget events) keyed by kind: one table, replicated like
		// configuration; rows carry their own ExpiresAt, which readers honour
		// and PurgeExpiredACME deletes (a delete replicates as a tombstone).
		name: TableACME, id: 5, singular: "acme record", class: ClassReplicated,
		checkKey: func(k string) error { return validateKey("acme key", k) },
		decode: func(rec []byte) (decodedRecord, error) {
			a, _, err := decodeACMERecord(rec)
			if err != nil {
				return decodedRecord{}, err
			}
			return decodedRecord{key: a.Key, insertedAt: a.InsertedAt, acme: &a}, nil
		},
		validate: func(d decodedRecord) error { return validateKey("acme key", d.acme.Key) },
	},
	{
		name: TableAudit, id: 6, singular: "audit entry", class: ClassReplicated,
		checkKey: checkAuditKey,
		decode: func(rec []byte) (decodedRecord, error) {
			a, err := decodeAudit(rec)
			if err != nil {
				return decodedRecord{}, err
			}
			return decodedRecord{key: a.ID, insertedAt: a.Time, audit: &a}, nil
		},
		validate: func(d decodedRecord) error { return checkAuditKey(d.audit.ID) },
	},
}

// TableInfo describes a table for the CLI and the admin API.
type TableInfo struct {
	Name  string     `json:"name"`
	Class TableClass `json:"class"`
}

// Tables lists the declared tables in their stable order.
func Tables() []TableInfo {
	out := make([]TableInfo, len(schema))
	for i, d := range schema {
		out[i] = TableInfo{Name: d.name, Class: d.class}
	}
	return out
}

// TableNames lists the tables in their stable order.
func TableNames() []string {
	out := make([]string, len(schema))
	for i, d := range schema {
		out[i] = d.name
	}
	return out
}

// lookupTable returns the declaration of the table called name, or nil.
func lookupTable(name string) *tableDef {
	for _, d := range schema {
		if d.name == name {
			return d
		}
	}
	return nil
}

// tableByID returns the declaration with change-log id id, or nil.
func tableByID(id byte) *tableDef {
	for _, d := range schema {
		if d.id == id {
			return d
		}
	}
	return nil
}

func isTable(name string) bool { return lookupTable(name) != nil }

func tableRank(name string) int {
	for i, d := range schema {
		if d.name == name {
			return i
		}
	}
	return len(schema)
}

func singular(table string) string {
	if d := lookupTable(table); d != nil {
		return d.singular
	}
	return table
}

// validateRowKey checks the primary key of a row of table.
func validateRowKey(table, key string) error {
	d := lookupTable(table)
	if d == nil {
		return fmt.Errorf("%w: %q", ErrUnknownTable, table)
	}
	return d.checkKey(key)
}

// decodedRecord is a record decoded from its bytes without decrypting
// anything: enough to know its key and its index entries.
type decodedRecord struct {
	key        string
	idx        [][]byte
	insertedAt time.Time
	cert       *Certificate
	pool       *Pool
	be         *Backend
	obs        *Observation
	acme       *ACMERecord
	audit      *AuditEntry
}

// decodeRecord decodes the record bytes of a row of table.
func decodeRecord(table string, rec []byte) (decodedRecord, error) {
	d := lookupTable(table)
	if d == nil {
		return decodedRecord{}, fmt.Errorf("%w: %q", ErrUnknownTable, table)
	}
	return d.decode(rec)
}

// validateRecord checks what the store needs of a record it did not build
// itself (ApplyBatch, Ingest, Import): a valid key and valid indexed values.
func validateRecord(table string, d decodedRecord) error {
	def := lookupTable(table)
	if def == nil {
		return fmt.Errorf("%w: %q", ErrUnknownTable, table)
	}
	return def.validate(d)
}

// tableIndexes lists the index ids whose entries belong to rows of table.
func tableIndexes(table string) []byte {
	if d := lookupTable(table); d != nil {
		return d.indexes
	}
	return nil
}
