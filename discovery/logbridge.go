package discovery

import (
	"bytes"
	"strings"

	"go.uber.org/zap"
)

// logBridge turns memberlist's log lines into zap entries and counts the
// packets and streams memberlist drops, which it only logs: a frame from a
// node without the key, with another app's label, or malformed.
type logBridge struct {
	log     *zap.Logger
	dropped func(reason string)
}

// Write takes one log line ("[ERR] memberlist: ...").
func (b *logBridge) Write(p []byte) (int, error) {
	line := string(bytes.TrimRight(p, "\n"))
	level, msg := "", line
	if strings.HasPrefix(line, "[") {
		if i := strings.IndexByte(line, ']'); i > 0 {
			level, msg = line[1:i], strings.TrimSpace(line[i+1:])
		}
	}
	if reason := dropReason(msg); reason != "" {
		b.dropped(reason)
	}
	switch level {
	case "ERR":
		b.log.Warn(msg) // a peer's bad packet is not our error
	case "WARN":
		b.log.Info(msg)
	default:
		b.log.Debug(msg)
	}
	return len(p), nil
}

// dropReason classifies the log lines that mean "an inbound packet or
// stream was discarded".
func dropReason(msg string) string {
	msg = strings.ToLower(msg)
	switch {
	case strings.Contains(msg, "decrypt packet failed"),
		strings.Contains(msg, "no installed keys could decrypt"),
		strings.Contains(msg, "encryption is configured but remote state is not encrypted"):
		return "decrypt"
	case strings.Contains(msg, "unacceptable label"),
		strings.Contains(msg, "label header"):
		return "label"
	case strings.Contains(msg, "invalid checksum"),
		strings.Contains(msg, "failed to decode"),
		strings.Contains(msg, "missing message type byte"),
		strings.Contains(msg, "not supported"),
		strings.Contains(msg, "received invalid msgtype"),
		strings.Contains(msg, "failed to receive"),
		strings.Contains(msg, "failed to receive"),
		strings.Contains(msg, "failed to read remote state"):
		return "malformed"
	}
	return ""
}
