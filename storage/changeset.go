package storage

import (
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// Change is one row written by a transaction.
type Change struct {
	Table   string
	Key     string
	Deleted bool
	Version Version
	Value   []byte // the encoded record (private keys sealed); nil for a delete
	// Expires is when the row stops counting (Unix ms; observation and TTL
	// tables), 0 for never.
	Expires int64

	// keys opens sealed private keys in Certificate. Set on changes handed
	// out by the store (feed, change log); nil after UnmarshalChangeSet.
	keys *keyring
}

// ChangeSet is one committed transaction: every row it wrote, under the
// origin node's id and per-origin sequence number. It is the unit of the
// change log, the change feed and replication. Every change of a set
// carries the set's version {HLC, Origin, Seq}. A set read back from the
// store holds the rows that still have that version (the others were
// overwritten and travel with their newer set); a set with none left is
// not returned at all, its seq is "cleared" (see ChangeSets).
type ChangeSet struct {
	Origin  string
	Seq     uint64
	HLC     HLC
	Changes []Change
}

// Event is one change-feed entry: a change set committed on this node
// (written locally or applied from a peer) at commit Index.
type Event struct {
	Index uint64
	Set   ChangeSet
}

// Change-set wire format (format byte then protobuf fields, see codec.go):
//
//	byte 0  format version (1)
//	1 origin, 2 seq, 3 hlc, 4 change (repeated):
//	  1 table, 2 key, 3 deleted, 4 version {1 hlc, 2 origin, 3 seq}, 5 value,
//	  6 expires (Unix ms)

// Marshal encodes cs for the change log and the wire.
func (cs ChangeSet) Marshal() []byte {
	e := encoder{b: []byte{formatV1}}
	e.str(1, cs.Origin)
	e.uint(2, cs.Seq)
	e.uint(3, uint64(cs.HLC))
	for _, c := range cs.Changes {
		var m encoder
		m.str(1, c.Table)
		m.str(2, c.Key)
		m.bool(3, c.Deleted)
		m.msg(4, encodeVersion(c.Version), false)
		if c.Value != nil {
			m.msg(5, c.Value, true)
		}
		if c.Expires > 0 {
			m.uint(6, uint64(c.Expires))
		}
		e.msg(4, m.b, true)
	}
	return e.b
}

// UnmarshalChangeSet decodes a change set. It checks the structure only;
// Apply validates the contents.
func UnmarshalChangeSet(b []byte) (ChangeSet, error) {
	var cs ChangeSet
	body, err := checkFormat(b)
	if err != nil {
		return cs, err
	}
	err = decodeChangeSetFields(body, &cs, func(m []byte) error {
		var c Change
		if err := unmarshalChange(m, &c); err != nil {
			return err
		}
		cs.Changes = append(cs.Changes, c)
		return nil
	})
	if err != nil {
		return ChangeSet{}, fmt.Errorf("change set: %w", err)
	}
	return cs, nil
}

// decodeChangeSetFields decodes the fields of a change set (of either
// format) into cs, and hands each nested change message to change.
func decodeChangeSetFields(body []byte, cs *ChangeSet, change func(m []byte) error) error {
	return decodeFields(body, func(f field) error {
		switch f.num {
		case 1:
			return f.str(&cs.Origin)
		case 2:
			return f.uint64(&cs.Seq)
		case 3:
			var h uint64
			if err := f.uint64(&h); err != nil {
				return err
			}
			cs.HLC = HLC(h)
		case 4:
			if err := f.want(protowire.BytesType); err != nil {
				return err
			}
			return change(f.b)
		}
		return nil
	})
}

// unmarshalChange decodes a change message onto c: the fields the message
// leaves out keep c's values.
func unmarshalChange(b []byte, c *Change) error {
	return decodeFields(b, func(f field) error {
		switch f.num {
		case 1:
			return f.str(&c.Table)
		case 2:
			return f.str(&c.Key)
		case 3:
			return f.bool(&c.Deleted)
		case 4:
			if err := f.want(protowire.BytesType); err != nil {
				return err
			}
			v, err := decodeVersion(f.b)
			c.Version = v
			return err
		case 5:
			if err := f.bytes(&c.Value); err != nil {
				return err
			}
			if c.Value == nil {
				c.Value = []byte{}
			}
		case 6:
			var ms uint64
			if err := f.uint64(&ms); err != nil {
				return err
			}
			// Past MaxInt64 the conversion turns an expiry into a negative
			// one, which Marshal would drop: the set would not be the one sent.
			if ms > math.MaxInt64 {
				return errWire("field 6: expiry %d out of range", ms)
			}
			c.Expires = int64(ms)
		}
		return nil
	})
}

// size is roughly the encoded size of cs, for answer budgets and the feed
// cache.
func (cs *ChangeSet) size() int {
	n := setSizeBase + len(cs.Origin)
	for i := range cs.Changes {
		c := &cs.Changes[i]
		n += changeSize(c.Table, c.Key, c.Value, c.Version.Origin)
	}
	return n
}

// setSizeBase and changeSize make up ChangeSet.size, for callers that
// weigh a set before building it.
const setSizeBase = 24

func changeSize(table, key string, value []byte, origin string) int {
	return 32 + len(table) + len(key) + len(value) + len(origin)
}

func (c Change) check(table string) error {
	if c.Table != table {
		return fmt.Errorf("%w: change is in table %q, not %q", ErrInvalid, c.Table, table)
	}
	if c.Deleted {
		return fmt.Errorf("%s %q deleted: %w", table, c.Key, ErrNotFound)
	}
	return nil
}

// Pool decodes the row of a change in the pools table. A delete returns an
// error wrapping ErrNotFound (check Deleted first).
func (c Change) Pool() (Pool, error) {
	if err := c.check(TablePools); err != nil {
		return Pool{}, err
	}
	p, err := decodePool(c.Value)
	p.Version = c.Version
	return p, err
}

// Backend decodes the row of a change in the backends table.
func (c Change) Backend() (Backend, error) {
	if err := c.check(TableBackends); err != nil {
		return Backend{}, err
	}
	b, err := decodeBackend(c.Value)
	b.Version = c.Version
	return b, err
}

// Observation decodes the row of a change in the observations table.
func (c Change) Observation() (Observation, error) {
	if err := c.check(TableObservations); err != nil {
		return Observation{}, err
	}
	o, err := decodeObservation(c.Value)
	o.Version = c.Version
	return o, err
}

// Certificate decodes the row of a change in the certificates table and
// decrypts its private key. Changes from the store's feed and change log
// carry the store's key; a change set decoded by UnmarshalChangeSet does not,
// so a certificate with a private key fails with ErrEncryptionKey there.
func (c Change) Certificate() (Certificate, error) {
	if err := c.check(TableCertificates); err != nil {
		return Certificate{}, err
	}
	cert, sealed, err := decodeCertificate(c.Value)
	if err != nil {
		return Certificate{}, err
	}
	cert.Version = c.Version
	if sealed != nil {
		pem, err := c.keys.openPrivateKey(cert.ID, sealed)
		if err != nil {
			return Certificate{}, err
		}
		cert.PrivateKeyPEM = pem
	}
	return cert, nil
}

// withKeys returns cs with every change able to open sealed keys.
func (cs ChangeSet) withKeys(k *keyring) ChangeSet {
	for i := range cs.Changes {
		cs.Changes[i].keys = k
	}
	return cs
}
