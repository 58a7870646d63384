package discovery

import (
	"testing"

	"go.uber.org/zap"
)

func TestLogBridgeCountsDrops(t *testing.T) {
	tests := []struct {
		line, reason string
	}{
		{"[ERR] memberlist: Decrypt packet failed: cipher: message authentication failed from=1.2.3.4:7946\n", "decrypt"},
		{"[ERR] memberlist: failed to receive: No installed keys could decrypt the message from=1.2.3.4:5\n", "decrypt"},
		{"[ERR] memberlist: failed to receive: Encryption is configured but remote state is not encrypted from=x\n", "decrypt"},
		{"[ERR] memberlist: discarding packet with unacceptable label \"other\": from=x\n", "label"},
		{"[WARN] memberlist: Got invalid checksum for UDP packet: 1, 2\n", "malformed"},
		{"[ERR] memberlist: Failed to decode ping request: EOF from=x\n", "malformed"},
		{"[DEBUG] memberlist: Stream connection from=1.2.3.4:5\n", ""},
		{"[INFO] memberlist: Marking b as failed, suspect timeout reached\n", ""},
	}
	for _, tc := range tests {
		got := ""
		b := &logBridge{log: zap.NewNop(), dropped: func(r string) { got = r }}
		if n, err := b.Write([]byte(tc.line)); err != nil || n != len(tc.line) {
			t.Fatalf("write: %d %v", n, err)
		}
		if got != tc.reason {
			t.Errorf("%q: reason %q, want %q", tc.line, got, tc.reason)
		}
	}
}
