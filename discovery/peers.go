package discovery

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/singularity-ng/singularity-edge/internal/atomicfile"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// knownPeer is one member as last seen, kept on disk for a DNS outage.
type knownPeer struct {
	Name      string    `json:"name"`
	Addr      string    `json:"addr"` // gossip host:port
	MachineID string    `json:"machine_id,omitempty"`
	Region    string    `json:"region,omitempty"`
	LastSeen  time.Time `json:"last_seen"`
}

type peersFile struct {
	Format int         `json:"format"`
	Peers  []knownPeer `json:"peers"`
}

// loadPeers reads the last known members; a missing file is no peers.
func loadPeers(path string) ([]knownPeer, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var f peersFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if f.Format != 1 {
		return nil, fmt.Errorf("%s: format %d, want 1", path, f.Format)
	}
	return f.Peers, nil
}

// savePeers writes the file atomically (temp file, fsync, rename), so a
// crash leaves the old list or the new one.
func savePeers(path string, peers []knownPeer) error {
	sort.Slice(peers, func(i, j int) bool { return peers[i].Name < peers[j].Name })
	b, err := json.MarshalIndent(peersFile{Format: 1, Peers: peers}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(path, b)
}

// peersAsCandidates returns the peers seen within maxAge.
func peersAsCandidates(peers []knownPeer, now time.Time, maxAge time.Duration) []Candidate {
	var out []Candidate
	for _, p := range peers {
		if maxAge > 0 && now.Sub(p.LastSeen) > maxAge {
			continue
		}
		ap, err := netip.ParseAddrPort(p.Addr)
		if err != nil {
			continue
		}
		out = append(out, Candidate{Addr: ap.Addr().Unmap(), Port: ap.Port(), MachineID: p.MachineID, Region: p.Region, Source: "last-known"})
	}
	return out
}
