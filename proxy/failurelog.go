package proxy

import (
	"context"
	"errors"
	"net"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/singularity-ng/singularity-edge/pools"
)

// backendError is a failed exchange with the backend it was tried on last,
// so the failure log and the access log can name the address.
type backendError struct {
	addr string
	err  error
}

func (e *backendError) Error() string { return "backend " + e.addr + ": " + e.err.Error() }
func (e *backendError) Unwrap() error { return e.err }

// backendAddrOf returns the address of the backend err happened on, or "".
func backendAddrOf(err error) string {
	var be *backendError
	if errors.As(err, &be) {
		return be.addr
	}
	return ""
}

// failureReason names the class of a failed exchange: the key the failure
// log aggregates by and the access log's error field.
func failureReason(err error) string {
	var te *backendTLSError
	var oe *net.OpError
	switch {
	case err == nil:
		return ""
	case errors.Is(err, pools.ErrNoBackend):
		return "no_available_backend"
	case isTimeout(err):
		return "timeout"
	case errors.As(err, &te):
		return "backend_tls"
	case errors.As(err, &oe) && oe.Op == "dial":
		return "connect_failed"
	case errors.Is(err, errResponseHeadTooLarge):
		return "response_head_too_large"
	default:
		return "backend_error"
	}
}

// logUpstreamFailure reports a request answered 502, 503 or 504 (status;
// 0 for a passthrough connection, which has none) at warn level,
// aggregated per pool and reason: a flood is one line per burst with a
// count, a few backend addresses and the last error. A client that went
// away is not a failure of the backend.
func (s *Server) logUpstreamFailure(pool string, status int, err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	reason := failureReason(err)
	addr := backendAddrOf(err)
	if addr == "" {
		addr = "-"
	}
	fields := []zap.Field{zap.String("pool", pool), zap.String("reason", reason)}
	if status != 0 {
		fields = append(fields, zap.Int("status", status))
	}
	s.failLog.Event(zapcore.WarnLevel, "upstream\x00"+pool+"\x00"+reason, "proxy: requests failed", addr, err, fields...)
}

// logTLSFailure reports a refused or failed client TLS handshake at warn
// level, aggregated per reason (and pool when there is one), naming a few
// server names.
func (s *Server) logTLSFailure(reason, pool, sni string, err error) {
	if sni == "" {
		sni = "(no SNI)"
	}
	fields := []zap.Field{zap.String("reason", reason)}
	if pool != "" {
		fields = append(fields, zap.String("pool", pool))
	}
	s.failLog.Event(zapcore.WarnLevel, "tls\x00"+reason+"\x00"+pool, "tls: handshakes failed", sni, err, fields...)
}
