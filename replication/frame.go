package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// A frame is a type byte, a big-endian uint32 payload length, and the
// payload. The length is checked against the limit before anything is
// allocated, so a peer cannot make us allocate more than MaxFrameSize.
const frameHeaderSize = 5

// DefaultMaxFrameSize bounds a frame's payload. A change set is capped by
// the store far below this, so one always fits.
const DefaultMaxFrameSize = 8 << 20

// ErrFrameTooLarge is returned for a frame over the size limit.
var ErrFrameTooLarge = errors.New("frame too large")

// ErrBadFrame is returned for a frame that does not decode.
var ErrBadFrame = errors.New("malformed frame")

type msgType byte

const (
	msgHello msgType = iota + 1
	msgReject
	msgPush
	msgAck
	msgSyncState
	msgSyncRequest
	msgSyncRows
	msgSyncDone
	msgSnapshotRequest
	msgSnapshotHeader
	msgSnapshotChunk
	msgSnapshotEnd
	msgMax // first unknown type
)

func (t msgType) String() string {
	names := [...]string{"", "hello", "reject", "push", "ack", "sync-state", "sync-request", "sync-rows", "sync-done",
		"snapshot-request", "snapshot-header", "snapshot-chunk", "snapshot-end"}
	if int(t) < len(names) && t > 0 {
		return names[t]
	}
	return fmt.Sprintf("type-%d", byte(t))
}

type frame struct {
	typ     msgType
	payload []byte
}

// readFrame reads one frame of at most max payload bytes.
func readFrame(r io.Reader, max int) (frame, error) {
	var h [frameHeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return frame{}, err
	}
	typ := msgType(h[0])
	n := binary.BigEndian.Uint32(h[1:])
	if typ == 0 || typ >= msgMax {
		return frame{}, fmt.Errorf("%w: unknown type %d", ErrBadFrame, h[0])
	}
	if uint64(n) > uint64(max) {
		return frame{}, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, max)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return frame{}, err
	}
	return frame{typ: typ, payload: p}, nil
}

// appendFrame appends a frame to dst.
func appendFrame(dst []byte, typ msgType, payload []byte) []byte {
	dst = append(dst, byte(typ))
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	return append(dst, payload...)
}
