package discovery

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/memberlist"
)

// ErrNoGossipKey is returned when gossip is enabled without a key: the
// cluster never runs unencrypted, because Fly's private network spans the
// whole organization.
var ErrNoGossipKey = errors.New("EDGE_GOSSIP_KEY is not set: gossip is always encrypted (generate one with `openssl rand -base64 32`)")

// Keys are the gossip secrets: Primary encrypts what this node sends, and
// every key decrypts. Rotation takes two rolling deploys: first add the new
// key to EDGE_GOSSIP_KEYS everywhere, then make it EDGE_GOSSIP_KEY with the
// old one in EDGE_GOSSIP_KEYS; the old key can go in any later deploy.
type Keys struct {
	Primary []byte
	Extra   [][]byte
}

// ParseKeys reads EDGE_GOSSIP_KEY (primary) and EDGE_GOSSIP_KEYS (extra
// accepted keys, comma-separated). Each key is 16, 24 or 32 bytes (AES-128,
// -192, -256) in standard base64.
func ParseKeys(primary, extra string) (Keys, error) {
	var k Keys
	if strings.TrimSpace(primary) == "" {
		return k, ErrNoGossipKey
	}
	p, err := parseKey(primary)
	if err != nil {
		return k, fmt.Errorf("EDGE_GOSSIP_KEY: %w", err)
	}
	k.Primary = p
	for i, s := range strings.Split(extra, ",") {
		if strings.TrimSpace(s) == "" {
			continue
		}
		e, err := parseKey(s)
		if err != nil {
			return Keys{}, fmt.Errorf("EDGE_GOSSIP_KEYS key %d: %w", i+1, err)
		}
		if !bytes.Equal(e, p) {
			k.Extra = append(k.Extra, e)
		}
	}
	return k, nil
}

func parseKey(s string) ([]byte, error) {
	// Base64 only: a hex string of 32 characters is also valid base64 (of
	// 24 bytes), so accepting both would read some keys two ways.
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, errors.New("not standard base64")
	}
	switch len(b) {
	case 16, 24, 32:
		return b, nil
	}
	return nil, fmt.Errorf("%d bytes, want 16, 24 or 32", len(b))
}

// All returns the primary key first, then the extra ones.
func (k Keys) All() [][]byte {
	out := make([][]byte, 0, 1+len(k.Extra))
	out = append(out, k.Primary)
	return append(out, k.Extra...)
}

// Keyring builds memberlist's keyring: every key installed, Primary used.
func (k Keys) Keyring() (*memberlist.Keyring, error) {
	if len(k.Primary) == 0 {
		return nil, ErrNoGossipKey
	}
	return memberlist.NewKeyring(k.All(), k.Primary)
}
