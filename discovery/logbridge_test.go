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

func TestLogBridgeTellsSuspects(t *testing.T) {
	tests := []struct{ line, name string }{
		{"[INFO] memberlist: Suspect b has failed, no acks received\n", "b"},
		{"[INFO] memberlist: Suspect node with space has failed, no acks received\n", "node with space"},
		{"[INFO] memberlist: Marking b as failed, suspect timeout reached (0 peer confirmations)\n", ""},
		{"[ERR] memberlist: Failed to send UDP compound ping and suspect message to 1.2.3.4:7946: x\n", ""},
		{"[WARN] memberlist: Refuting a suspect message (from: b)\n", ""},
	}
	for _, tc := range tests {
		got := ""
		b := &logBridge{log: zap.NewNop(), dropped: func(string) {}, suspect: func(n string) { got = n }}
		if _, err := b.Write([]byte(tc.line)); err != nil {
			t.Fatal(err)
		}
		if got != tc.name {
			t.Errorf("%q: suspect %q, want %q", tc.line, got, tc.name)
		}
	}
}
