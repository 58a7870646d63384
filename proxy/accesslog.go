package proxy

import (
	"time"

	"go.uber.org/zap"

	"github.com/singularity-ng/singularity-edge/pools"
)

// accessEntry is one access log line. It holds no header values, bodies or
// query strings: those carry credentials.
type accessEntry struct {
	pool, method, host, path, proto string
	status                          int
	bytes                           int64
	duration                        time.Duration
	client                          string
	backend                         *pools.Backend
	requestID                       string
	// failure is why the proxy answered instead of a backend (502, 503,
	// 504); timing is the backend exchange's, when there was one.
	failure error
	timing  upstreamTiming
}

func (s *Server) logAccess(e accessEntry) {
	backend := ""
	if e.backend != nil {
		backend = e.backend.Addr
	} else if e.failure != nil {
		backend = backendAddrOf(e.failure)
	}
	fields := make([]zap.Field, 0, 16)
	fields = append(fields,
		zap.String("request_id", e.requestID),
		zap.String("client", e.client),
		zap.String("proto", e.proto),
		zap.String("method", e.method),
		zap.String("host", e.host),
		zap.String("path", e.path),
		zap.String("pool", e.pool),
		zap.String("backend", backend),
		zap.Int("status", e.status),
		zap.Int64("bytes", e.bytes),
		zap.Duration("duration", e.duration),
		zap.Duration("upstream_connect", e.timing.connect),
		zap.Duration("upstream_first_byte", e.timing.firstByte),
		zap.Duration("upstream_total", e.timing.total),
	)
	if e.failure != nil {
		fields = append(fields, zap.String("error", failureReason(e.failure)), zap.String("error_detail", e.failure.Error()))
	}
	s.log.Info("access", fields...)
}

// sampled reports whether this request gets an access log line.
func (s *Server) sampled() bool {
	switch s.logEvery {
	case 0:
		return false
	case 1:
		return true
	default:
		return s.logCount.Add(1)%s.logEvery == 0
	}
}

func protoName(minor int, https bool) string {
	switch {
	case minor == 0 && https:
		return "HTTP/1.0+TLS"
	case minor == 0:
		return "HTTP/1.0"
	case https:
		return "HTTP/1.1+TLS"
	default:
		return "HTTP/1.1"
	}
}
