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
	// suspect is told the name of a member this node's own probe found
	// unreachable (nil: not told).
	suspect func(name string)
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
	if name, ok := suspectName(msg); ok && b.suspect != nil {
		b.suspect(name)
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

// suspectName returns the member named by memberlist's line for a probe
// that got no ack, direct or indirect ("memberlist: Suspect NAME has
// failed, no acks received"), after which it suspects the member. That
// line is the only sign of it: memberlist keeps a member's state in a
// field its Members() does not return (the Node it hands out always says
// alive), and calls no delegate on suspicion.
func suspectName(msg string) (string, bool) {
	const prefix, suffix = "memberlist: Suspect ", " has failed, no acks received"
	if !strings.HasPrefix(msg, prefix) || !strings.HasSuffix(msg, suffix) {
		return "", false
	}
	name := msg[len(prefix) : len(msg)-len(suffix)]
	return name, name != ""
}
