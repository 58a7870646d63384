package discovery

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// metaFormat is the version of the metadata encoding. A newer agent
// appends fields after the ones below and keeps the format byte; it changes
// the byte only for an encoding older agents cannot read at all.
const metaFormat = 1

// maxMetaSize is memberlist's limit on node metadata (MetaMaxSize).
const maxMetaSize = 512

// ErrMeta reports node metadata that cannot be decoded.
var ErrMeta = errors.New("invalid node metadata")

// Meta is what a node tells the others about itself through gossip.
type Meta struct {
	ClusterID       string // members of other clusters are refused
	NodeID          string // the store's node id (origin of its writes)
	MachineID       string // Fly Machine id, "" off Fly
	Region          string
	ReplicationAddr string // host:port of the replication listener
	AdminAddr       string // host:port of the admin API
	AgentVersion    string
	Ready           bool // holds the cluster's state and serves traffic
	// Leaving is set just before a graceful leave, so the others report
	// the member "left", not "dead".
	Leaving bool
	// Health is the node's own readiness verdict, what its /healthz
	// answers: "ok", or the status that says why it cannot do its job
	// ("disk_full", "store_not_ready", "starting", "draining", ...).
	// Ready above only says it holds the cluster's state, which a node
	// with a full disk still does. Encoded after the fields an older
	// agent knows (which it skips); "" from an older agent.
	Health string
	// CookieKeyFP is the fingerprint of the key that signs sticky-session
	// cookies (a keyed hash, never the key), so that members whose keys
	// differ are told; empty from an agent older than the field. Raw
	// bytes (a string keeps Meta comparable).
	CookieKeyFP string
}

const (
	metaFlagReady   = 1 << 0
	metaFlagLeaving = 1 << 1
)

// Encode returns the compact encoding: a format byte, a flags byte, then
// each string as a uvarint length and its bytes, in a fixed order.
func (m Meta) Encode() ([]byte, error) {
	b := make([]byte, 0, 64)
	b = append(b, metaFormat)
	var flags byte
	if m.Ready {
		flags |= metaFlagReady
	}
	if m.Leaving {
		flags |= metaFlagLeaving
	}
	b = append(b, flags)
	for _, s := range m.strings() {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	if len(b) > maxMetaSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMeta, len(b), maxMetaSize)
	}
	return b, nil
}

func (m *Meta) strings() []string {
	return []string{m.ClusterID, m.NodeID, m.MachineID, m.Region, m.ReplicationAddr, m.AdminAddr, m.AgentVersion, m.Health, m.CookieKeyFP}
}

func (m *Meta) fields() []*string {
	return []*string{&m.ClusterID, &m.NodeID, &m.MachineID, &m.Region, &m.ReplicationAddr, &m.AdminAddr, &m.AgentVersion, &m.Health, &m.CookieKeyFP}
}

// requiredFields is how many of fields() every agent sends; the later ones
// were appended by newer agents and may be absent.
const requiredFields = 7

// DecodeMeta decodes metadata written by Encode of this or a newer agent
// (trailing fields it does not know are ignored).
func DecodeMeta(b []byte) (Meta, error) {
	var m Meta
	if len(b) < 2 {
		return m, fmt.Errorf("%w: %d bytes", ErrMeta, len(b))
	}
	if b[0] != metaFormat {
		return m, fmt.Errorf("%w: format %d, this agent reads %d", ErrMeta, b[0], metaFormat)
	}
	if len(b) > maxMetaSize {
		return m, fmt.Errorf("%w: %d bytes, limit %d", ErrMeta, len(b), maxMetaSize)
	}
	m.Ready = b[1]&metaFlagReady != 0
	m.Leaving = b[1]&metaFlagLeaving != 0
	rest := b[2:]
	for i, f := range m.fields() {
		if i >= requiredFields && len(rest) == 0 {
			break // from an agent older than this field
		}
		n, k := binary.Uvarint(rest)
		if k <= 0 || n > uint64(len(rest)-k) {
			return Meta{}, fmt.Errorf("%w: field %d truncated", ErrMeta, i+1)
		}
		*f = string(rest[k : k+int(n)])
		rest = rest[k+int(n):]
	}
	return m, nil
}
