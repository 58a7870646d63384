package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// HealthPath is the one route of the health listener.
const HealthPath = "/healthz"

// healthServer is the unauthenticated readiness endpoint for platform health
// checks. It answers GET /healthz with 200 "ok" when the agent can do its job
// and 503 with the cause otherwise (starting, draining on shutdown, leaving
// the cluster, a store that cannot commit or is still filling from a peer),
// and nothing else: no version, no node id, no configuration, no paths, so
// it may listen on every interface without a token.
//
// It is a readiness check, not a liveness check: nothing restarts the agent
// when it fails (Fly.io never restarts a Machine for a failing check; the
// process exiting is what its restart policy acts on), so a full disk may
// and does make it fail.
type healthServer struct {
	addr     string
	ready    func() error
	warnings func() []string

	srv *http.Server
	ln  net.Listener
}

// newHealthServer serves ready's verdict: nil when the agent can serve, else
// an error whose text is the cause put in the 503's body. Each of
// warnings (nil: none) follows on a line of its own, "warning: ...":
// they do not fail the check.
func newHealthServer(addr string, ready func() error, warnings func() []string) *healthServer {
	h := &healthServer{addr: addr, ready: ready, warnings: warnings}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+HealthPath, h.handle)
	h.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       5 * time.Second,
		WriteTimeout:      5 * time.Second,
		IdleTimeout:       30 * time.Second,
		MaxHeaderBytes:    8 << 10,
	}
	return h
}

func (h *healthServer) handle(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	var warnings []string
	if h.warnings != nil {
		warnings = h.warnings()
	}
	if err := h.ready(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, err)
	} else {
		fmt.Fprintln(w, "ok")
	}
	for _, warning := range warnings {
		fmt.Fprintln(w, "warning:", warning)
	}
}

// Start binds the listener and serves in the background.
func (h *healthServer) Start(ctx context.Context) error {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", h.addr)
	if err != nil {
		return err
	}
	h.ln = ln
	go func() { _ = h.srv.Serve(ln) }()
	return nil
}

// Addr is the bound address (nil before Start).
func (h *healthServer) Addr() net.Addr {
	if h.ln == nil {
		return nil
	}
	return h.ln.Addr()
}

// Shutdown closes the listener.
func (h *healthServer) Shutdown(ctx context.Context) error {
	if h.ln == nil {
		return nil
	}
	if err := h.srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
