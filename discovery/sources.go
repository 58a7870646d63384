package discovery

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
)

// Candidate is a node a source says should be part of the cluster. Addr is
// the host part only (an IP literal); the gossip port is the cluster's.
type Candidate struct {
	Addr      netip.Addr
	Port      uint16 // 0: the cluster's gossip port
	MachineID string // "" when the source does not know it
	Region    string
	Source    string
}

// JoinAddr returns the host:port to join.
func (c Candidate) JoinAddr(defaultPort uint16) string {
	p := c.Port
	if p == 0 {
		p = defaultPort
	}
	return net.JoinHostPort(c.Addr.Unmap().String(), strconv.Itoa(int(p)))
}

// Source lists candidates. A source that fails returns an error; the others
// are still used.
type Source interface {
	Name() string
	Candidates(ctx context.Context) ([]Candidate, error)
}

// StaticSource is the --join list: host:port or bare IP literals (which use
// the cluster's gossip port).
type StaticSource struct {
	seeds []Candidate
}

// NewStaticSource parses seeds. Host names are refused: joins go to IP
// literals, so a seed list cannot depend on a resolver the agent does not
// control.
func NewStaticSource(seeds []string) (*StaticSource, error) {
	s := &StaticSource{}
	for _, seed := range seeds {
		c, err := parseSeed(seed)
		if err != nil {
			return nil, fmt.Errorf("--join %q: %w", seed, err)
		}
		s.seeds = append(s.seeds, c)
	}
	return s, nil
}

func parseSeed(seed string) (Candidate, error) {
	if a, err := netip.ParseAddr(seed); err == nil {
		return Candidate{Addr: a.Unmap(), Source: "static"}, nil
	}
	ap, err := netip.ParseAddrPort(seed)
	if err != nil {
		return Candidate{}, fmt.Errorf("want an IP address or IP:port (e.g. 10.0.0.2:7946 or [fdaa::2]:7946): %w", err)
	}
	return Candidate{Addr: ap.Addr().Unmap(), Port: ap.Port(), Source: "static"}, nil
}

// Name is "static".
func (s *StaticSource) Name() string { return "static" }

// Candidates returns the seeds.
func (s *StaticSource) Candidates(context.Context) ([]Candidate, error) {
	return append([]Candidate(nil), s.seeds...), nil
}

// mergeCandidates merges lists by join address; a later source fills in the
// machine id and region an earlier one did not know.
func mergeCandidates(defaultPort uint16, lists ...[]Candidate) []Candidate {
	byAddr := map[string]Candidate{}
	for _, list := range lists {
		for _, c := range list {
			key := c.JoinAddr(defaultPort)
			old, ok := byAddr[key]
			if !ok {
				byAddr[key] = c
				continue
			}
			if old.MachineID == "" {
				old.MachineID = c.MachineID
			}
			if old.Region == "" {
				old.Region = c.Region
			}
			byAddr[key] = old
		}
	}
	out := make([]Candidate, 0, len(byAddr))
	for _, c := range byAddr {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].JoinAddr(defaultPort) < out[j].JoinAddr(defaultPort) })
	return out
}
