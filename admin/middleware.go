package admin

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

type requestInfoKey struct{}

// requestInfo travels in the request context from the outermost middleware
// to the router, which fills in the matched route for logs and metrics.
type requestInfo struct {
	id    string
	route string
	// endWrite lets a write request out of the write gate once it has
	// committed (nil for reads); calling it again does nothing.
	endWrite func()
}

func infoFrom(ctx context.Context) *requestInfo {
	info, _ := ctx.Value(requestInfoKey{}).(*requestInfo)
	return info
}

func requestID(ctx context.Context) string {
	if info := infoFrom(ctx); info != nil {
		return info.id
	}
	return ""
}

// withRequestContext gives every request an id: the client's X-Request-Id
// when it is a sane token (so a CLI or proxy can correlate), else a random
// one. The id is echoed on every response.
func (s *Server) withRequestContext(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-Id")
		if !validRequestID(id) {
			id = newRequestID()
		}
		w.Header().Set("X-Request-Id", id)
		w.Header().Set("X-Content-Type-Options", "nosniff")
		info := &requestInfo{id: id}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, info)))
	})
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.', c == ':':
		default:
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b[:])
}

// withRecover turns a handler panic into a logged 500 in the JSON shape.
// http.ErrAbortHandler is re-raised: it is net/http's way to abort a
// response on purpose.
func (s *Server) withRecover(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw, _ := w.(*statusWriter)
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v)
			}
			s.logger.Error("admin handler panicked",
				zap.String("request_id", requestID(r.Context())),
				zap.String("method", r.Method),
				zap.String("path", r.URL.Path),
				zap.Any("panic", v),
				zap.Stack("stack"))
			if sw == nil || sw.status == 0 {
				s.writeError(w, r, errInternal(errors.New("handler panicked")))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// withAccessLog logs one structured line per request (never bodies, never
// the query string, which is where a careless client might put a token) and
// feeds the request metrics.
func (s *Server) withAccessLog(next http.Handler) http.Handler {
	inner := s.withRecover(next)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		inner.ServeHTTP(sw, r)
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		elapsed := time.Since(start)
		route := "unmatched"
		if info := infoFrom(r.Context()); info != nil && info.route != "" {
			route = info.route
		}
		s.metrics.observe(route, r.Method, status, elapsed)

		// Reads that succeed are polls (the dashboard, probes, scrapes)
		// arriving every few seconds: debug. Writes are audited and
		// refusals matter, so they stay at info; server errors warn.
		level := zapcore.InfoLevel
		switch {
		case status >= 500:
			level = zapcore.WarnLevel
		case status < 400 && (r.Method == http.MethodGet || r.Method == http.MethodHead):
			level = zapcore.DebugLevel
		}
		if ce := s.logger.Check(level, "admin request"); ce != nil {
			ce.Write(
				zap.String("request_id", requestID(r.Context())),
				zap.String("method", r.Method),
				zap.String("path", r.URL.Path),
				zap.String("route", route),
				zap.Int("status", status),
				zap.Duration("duration", elapsed),
				zap.Int64("bytes", sw.bytes),
				zap.String("remote", r.RemoteAddr),
			)
		}
	})
}

// statusWriter records the status and size of a response. Unwrap lets
// http.ResponseController reach the connection (long operations extend
// their write deadline through it).
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// statusLabel keeps the status label's cardinality to the codes we send.
func statusLabel(status int) string { return strconv.Itoa(status) }
