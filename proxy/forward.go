package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/singularity-ng/singularity-edge/pools"
)

// outRequest is a request ready for a backend. The head does not depend on
// the backend, so a retry resends the same bytes.
type outRequest struct {
	head   []byte // request head for the backend
	inline []byte // body bytes sent in the same write as the head
	// stream sends the rest of the body; nil when inline is all of it. It
	// runs in its own goroutine while the response head is awaited (a
	// backend may answer before it read the body, and Expect: 100-continue
	// needs the interim response relayed while the body waits).
	// stream calls progress.markRead once the last body byte was read
	// from the client (only the final write remains).
	stream func(uc *upConn, progress *bodyProgress) (int64, error)
	// abort unblocks stream (which may be waiting for the client).
	abort      func()
	idempotent bool
	isHEAD     bool
	// track, when set, holds the backend connection in use so that a
	// shutdown or a cancelled client can interrupt a blocked read.
	track *atomic.Pointer[net.Conn]
	// cancel, when set, is the HTTP/2 stream's cancellation hook: each
	// backend connection is attached to it before a byte is sent.
	cancel *cancelHook
	// ctx, when set, is the client's request context: failures after it
	// ended are the client's doing and not held against the backend.
	ctx context.Context
}

// clientGone reports whether the client abandoned the request.
func (r *outRequest) clientGone() bool { return r.ctx != nil && r.ctx.Err() != nil }

func (r *outRequest) replayable() bool { return r.stream == nil }

// exchange is a request whose response head has been read from a backend.
type exchange struct {
	backend  *pools.Backend
	attempt  *pools.Attempt
	uc       *upConn
	resp     responseHead
	bodyDone chan bodyResult // result of outRequest.stream; nil when there is none
	// bodyErr is the request body's failure once bodyDone was received.
	bodyErr  error
	progress bodyProgress
	// respBytes counts bytes read from the backend in this attempt.
	respBytes int64
	bytesOut  int64
	started   time.Time
	// timing of the last attempt, for the access log (measured only
	// when it is on): connect is 0 on a reused connection.
	timing upstreamTiming
}

// upstreamTiming is how long the last attempt took to connect to the
// backend, to receive the first byte of its response head, and in all
// (until the response was relayed or the attempt failed).
type upstreamTiming struct {
	connect, firstByte, total time.Duration
}

// bodyProgress tells the response side how far a streamed request body
// got: the backend's time to answer is counted from the end of the body,
// not from the head, so slow uploads do not turn into 504s.
type bodyProgress struct {
	readAt atomic.Int64 // Unix ns when the client's last body byte was read; 0 before
}

func (p *bodyProgress) markRead()  { p.readAt.Store(time.Now().UnixNano()) }
func (p *bodyProgress) read() bool { return p.readAt.Load() != 0 }

// responseDeadline extends the wait for a response head while a request
// body is still being sent; ok=false means ResponseHeaderTimeout has passed
// since the body ended.
func (ex *exchange) responseDeadline(now time.Time, timeout time.Duration) (time.Time, bool) {
	at := ex.progress.readAt.Load()
	if at == 0 {
		return now.Add(timeout), true // the client is still uploading (bounded by ReadTimeout)
	}
	end := time.Unix(0, at).Add(timeout)
	return end, end.After(now)
}

// bodyResult is what the request body goroutine reports.
type bodyResult struct {
	n   int64
	err error
}

// Errors of an attempt, mapped to statuses by statusForError.
var (
	errResponseHeadTooLarge = errors.New("backend response head too large")
)

// clientBodyError is a request body the client failed to deliver: too
// slowly (MinBodyRate, ReadTimeout), malformed, or cut short. It is the
// client's doing: it matches context.Canceled, so the attempt is not held
// against the backend and no upstream failure is logged.
type clientBodyError struct{ err error }

func (e *clientBodyError) Error() string        { return "request body: " + e.err.Error() }
func (e *clientBodyError) Unwrap() error        { return e.err }
func (e *clientBodyError) Is(target error) bool { return target == context.Canceled }

// statusForError maps a failed exchange to the status the client gets:
// 408 when the client sent its request body too slowly, 400 when the body
// was malformed or cut short, 503 when no backend could be picked, 504
// when a backend did not connect or answer in time, 502 otherwise.
func statusForError(err error) int {
	var be *clientBodyError
	switch {
	case errors.As(err, &be):
		if isTimeout(be.err) {
			return 408
		}
		return 400
	case errors.Is(err, pools.ErrNoBackend):
		return 503
	case isTimeout(err):
		return 504
	default:
		return 502
	}
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// idempotentMethod reports RFC 9110 9.2.2 idempotent methods.
func idempotentMethod(m []byte) bool {
	switch string(m) {
	case "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE":
		return true
	}
	return false
}

// upstreamCache remembers the connection pools of the last backends a
// client connection used, so the request path skips the sync.Map lookup.
type upstreamCache struct {
	entries [4]struct {
		b  *pools.Backend
		up *upstream
	}
	next int
}

func (c *upstreamCache) get(u *upstreams, p *pools.Pool, b *pools.Backend) *upstream {
	for i := range c.entries {
		if c.entries[i].b == b {
			return c.entries[i].up
		}
	}
	up := u.forBackend(p, b)
	e := &c.entries[c.next]
	e.b, e.up = b, up
	c.next = (c.next + 1) % len(c.entries)
	return up
}

// roundTrip picks a backend and exchanges req with it, retrying on other
// backends when no connection could be opened, or when the request is
// idempotent and replayable and the failure happened before any response
// byte (reset, closed).
// On success ex holds the backend, the attempt (to be ended by the caller)
// and the response head. On failure it returns the error; the attempts
// are ended.
func (s *Server) roundTrip(ex *exchange, cache *upstreamCache, pool *pools.Pool, pick pools.PickRequest, req *outRequest, interim func(*exchange) error, now time.Time) error {
	var excludeBuf [4]*pools.Backend
	excluded := excludeBuf[:0]
	// No attempt yet: the access log must not show a previous request's.
	ex.timing, ex.started = upstreamTiming{}, time.Time{}
	// Any request may go to another backend when the connection could not
	// be opened (nothing was sent); after bytes were sent only idempotent,
	// replayable ones may (attemptOn decides).
	tries := 1 + s.cfg.MaxRetries
	var lastErr error
	for try := 0; try < tries; try++ {
		if req.clientGone() {
			// Nothing to send a request for (an HTTP/2 stream reset).
			if lastErr == nil {
				lastErr = fmt.Errorf("client went away: %w", context.Canceled)
			}
			return lastErr
		}
		pick.Exclude = excluded
		b, err := pool.Pick(pick)
		if err != nil {
			if lastErr == nil {
				return err
			}
			return lastErr
		}
		excluded = append(excluded, b)
		if try > 0 {
			b.NoteRetry()
		}
		ex.backend = b
		up := cache.get(&s.upstreams, pool, b)
		ex.attempt = b.Begin()
		if try > 0 {
			now = time.Now()
		}
		retry, err := s.attemptOn(ex, up, req, interim, now)
		if err == nil {
			return nil
		}
		if req.clientGone() {
			ex.attempt.End(pools.Result{Err: context.Canceled, BytesOut: ex.bytesOut, BytesIn: ex.respBytes})
			ex.attempt = nil
			return fmt.Errorf("client went away: %w", context.Canceled)
		}
		ex.attempt.End(pools.Result{Err: err, BytesOut: ex.bytesOut, BytesIn: ex.respBytes})
		ex.attempt = nil
		lastErr = &backendError{addr: b.Addr, err: err}
		if !retry {
			break
		}
	}
	return lastErr
}

// attemptOn sends req on a connection of up and reads the response head.
// retry says whether another backend may be tried.
func (s *Server) attemptOn(ex *exchange, up *upstream, req *outRequest, interim func(*exchange) error, now time.Time) (retry bool, err error) {
	ex.started = now
	ex.respBytes, ex.bytesOut = 0, 0
	timed := s.logEvery != 0
	ex.timing = upstreamTiming{}
	uc := up.take(now, s.cfg.BackendIdleTimeout)
	for {
		if uc == nil {
			var dialStart time.Time
			if timed {
				dialStart = time.Now()
			}
			uc, err = s.upstreams.dial(up)
			if timed {
				ex.timing.connect = time.Since(dialStart)
			}
			if err != nil {
				// Nothing was sent: another backend may take it. A dial
				// timeout is a 504 like any timeout.
				return true, err
			}
		}
		ex.uc = uc
		if req.track != nil {
			req.track.Store(&uc.c)
		}
		if req.cancel != nil && !req.cancel.attach(uc.c) {
			// The stream was cancelled before anything was sent: the
			// connection is as good as it was (the hook never saw it).
			ex.uc = nil
			uc.up.put(uc, time.Now(), s.cfg.MaxIdleConnsPerBackend)
			return false, fmt.Errorf("client went away: %w", context.Canceled)
		}
		err = s.send(ex, uc, req)
		if err == nil {
			err = s.readResponseHead(ex, uc, req, interim)
		}
		if err == nil {
			if timed {
				ex.timing.firstByte = time.Since(ex.started)
			}
			return false, nil
		}
		s.abandon(ex, req)
		// The request was (at least partly) written: the backend may have
		// read and acted on it even though it closed without answering.
		// RFC 9112 9.3.1.1: only idempotent requests are sent again.
		if ex.respBytes == 0 && req.idempotent && req.replayable() && !isTimeout(err) {
			if uc.reused {
				// The backend closed the pooled connection as we reused
				// it: try a fresh connection to the same backend.
				uc = nil
				ex.bytesOut = 0
				continue
			}
			return true, err
		}
		return false, err
	}
}

// abandon closes the connection of a failed exchange and stops the body
// goroutine.
func (s *Server) abandon(ex *exchange, req *outRequest) {
	if ex.uc != nil {
		ex.uc.close()
		ex.uc = nil
	}
	if ex.bodyDone != nil {
		if req.abort != nil {
			req.abort()
		}
		r := <-ex.bodyDone
		ex.bytesOut += r.n
		ex.bodyErr = r.err
		ex.bodyDone = nil
	}
}

// send writes the head and inline body, and starts the body goroutine.
func (s *Server) send(ex *exchange, uc *upConn, req *outRequest) error {
	uc.setWriteDeadline(ex.started, s.cfg.WriteTimeout)
	var err error
	var n int
	if _, raw := uc.c.(*rawTCPConn); raw && req.stream == nil && len(req.head)+len(req.inline) <= 16<<10 {
		// A request that fits one write: readResponseHead sends it and
		// waits for the answer in one go (writeThenRead), without the
		// recv that would find the socket still empty.
		uc.pending = append(req.head, req.inline...)
		return nil
	}
	if len(req.inline) == 0 {
		n, err = uc.c.Write(req.head)
	} else {
		// One write when the body is small (the common POST), so that the
		// backend sees one segment.
		if len(req.head)+len(req.inline) <= 16<<10 {
			buf := append(req.head, req.inline...)
			n, err = uc.c.Write(buf)
		} else {
			bufs := net.Buffers{req.head, req.inline}
			var n64 int64
			n64, err = bufs.WriteTo(uc.c)
			n = int(n64)
		}
	}
	ex.bytesOut += int64(n)
	if err != nil {
		return err
	}
	if req.stream != nil {
		done := make(chan bodyResult, 1)
		ex.bodyDone = done
		ex.bodyErr = nil
		ex.progress.readAt.Store(0)
		go func() {
			n, err := req.stream(uc, &ex.progress)
			c := uc.c
			done <- bodyResult{n, err}
			var be *clientBodyError
			if errors.As(err, &be) {
				// The response head may be awaited with the backend
				// still waiting for the rest of the body: wake the
				// reader so the client is answered (408, 400) now. The
				// connection is never reused after a failed body.
				_ = c.SetReadDeadline(time.Now())
			}
		}()
	}
	return nil
}

// readResponseHead reads the final response head into ex.resp. Interim
// 1xx responses (except 101) are passed to interim and skipped.
func (s *Server) readResponseHead(ex *exchange, uc *upConn, req *outRequest, interim func(*exchange) error) error {
	uc.setReadDeadline(ex.started, s.cfg.ResponseHeaderTimeout)
	if uc.pending == nil {
		// The backend cannot have answered yet: let the other
		// connections run first so that the read below finds the
		// response instead of costing an EAGAIN read(2) before parking
		// (see yieldBeforeRead). A pending request needs no yield: it
		// is sent and answered by one writeThenRead.
		yieldBeforeRead()
	}
	for {
		data := uc.buf[uc.r:uc.w]
		if len(data) > 0 {
			if end := findHeadEnd(data); end >= 0 {
				if err := parseResponseHead(&ex.resp, data[:end], ex.resp.fields, req.isHEAD); err != nil {
					return err
				}
				if ex.resp.status < 200 && ex.resp.status != 101 {
					if interim != nil {
						if err := interim(ex); err != nil {
							return err
						}
					}
					uc.r += end
					continue
				}
				return nil
			}
			if len(data) >= s.cfg.MaxResponseHeaderBytes {
				return errResponseHeadTooLarge
			}
		}
		uc.compact()
		if uc.w == len(uc.buf) {
			grown := make([]byte, min(2*len(uc.buf), s.cfg.MaxResponseHeaderBytes+upBufSize))
			copy(grown, uc.buf[:uc.w])
			uc.releaseBuf()
			uc.buf = grown
		}
		if ex.bodyDone != nil {
			// A body that already failed on the client's side may have
			// woken this reader before the deadline above replaced its
			// wake-up.
			if berr := ex.pollBody(); berr != nil {
				return berr
			}
		}
		var n int
		var err error
		if uc.pending != nil {
			n, err = s.sendPending(ex, uc)
		} else {
			n, err = uc.c.Read(uc.buf[uc.w:])
		}
		uc.w += n
		ex.respBytes += int64(n)
		if err != nil && n == 0 {
			if req.stream != nil && isTimeout(err) && !req.clientGone() {
				if ex.bodyDone != nil {
					if berr := ex.pollBody(); berr != nil {
						return berr
					}
				}
				if next, ok := ex.responseDeadline(time.Now(), s.cfg.ResponseHeaderTimeout); ok {
					_ = uc.c.SetReadDeadline(next)
					uc.rdl = next
					continue
				}
			}
			if err == io.EOF {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
}

// sendPending writes the request send left pending and reads the first
// bytes of the answer (see rawTCPConn.writeThenRead).
func (s *Server) sendPending(ex *exchange, uc *upConn) (int, error) {
	p := uc.pending
	uc.pending = nil
	rc := uc.c.(*rawTCPConn)
	wn, n, full, err := rc.writeThenRead(p, uc.buf[uc.w:])
	ex.bytesOut += int64(wn)
	if !full {
		return n, err
	}
	// The socket took only part of it: the rest under the write deadline
	// send set, then an ordinary read.
	m, err := uc.c.Write(p[wn:])
	ex.bytesOut += int64(m)
	if err != nil {
		return 0, err
	}
	return uc.c.Read(uc.buf[uc.w:])
}

// yieldBeforeRead gives the processor to other goroutines before a read
// that would almost certainly find an empty socket. In request/response
// traffic a read right after a write returns EAGAIN and the goroutine
// parks; that failed read(2) is a whole syscall (strace on the S1
// benchmark: 4 reads per request, half of them EAGAIN). After a yield,
// the other connections' work has run and the answer is usually there
// (2.15 reads per request, 7% EAGAIN, about 13% less CPU at saturation),
// at a cost in tail latency: the yielded goroutine waits behind every
// runnable one.
//
// Go's netpoller resets readiness at the start of every Read, so "wait
// for readability first" is only safe when the write happens after that
// reset, inside the same RawConn.Read: that is writeThenRead, which now
// sends requests that fit one write and waits for the backend's answer
// with no EAGAIN read and no yield. The yield stays before the client's
// next request, where the write (our response) is long done. Counted on
// one core with the S1 load, recv calls per request (3 is the floor: the
// request, the response, the pooled connection's peek): 4.57 with both
// yields, 3.68 with writeThenRead and the client-side yield, 3.87 with
// writeThenRead and no yield, 5.08 with neither.
func yieldBeforeRead() { runtime.Gosched() }

// compact moves unread bytes to the front of the buffer.
func (uc *upConn) compact() {
	if uc.r == 0 {
		return
	}
	n := copy(uc.buf, uc.buf[uc.r:uc.w])
	uc.r, uc.w = 0, n
}

func (uc *upConn) releaseBuf() {
	if cap(uc.buf) == upBufSize {
		b := uc.buf[:upBufSize]
		uc.up.owner.bufs.Put(&b)
	}
	uc.buf = nil
}

// Deadlines are coarse: a deadline is only moved when it would otherwise
// be early by more than an eighth of its timeout. Keep-alive traffic then
// touches the runtime timer once every few seconds per connection instead
// of several times per request.
func needDeadline(cur, want time.Time, d time.Duration) bool {
	return cur.After(want) || want.Sub(cur) > d/8
}

func (uc *upConn) setReadDeadline(now time.Time, d time.Duration) {
	want := now.Add(d)
	if needDeadline(uc.rdl, want, d) {
		_ = uc.c.SetReadDeadline(want)
		uc.rdl = want
	}
}

func (uc *upConn) setWriteDeadline(now time.Time, d time.Duration) {
	want := now.Add(d)
	if needDeadline(uc.wdl, want, d) {
		_ = uc.c.SetWriteDeadline(want)
		uc.wdl = want
	}
}

// finishBody waits for the request body goroutine after the response was
// relayed. It reports whether the body was completely sent; when the
// backend answered early the goroutine is stopped.
func (ex *exchange) finishBody(req *outRequest) bool {
	if ex.bodyDone == nil {
		return true
	}
	if ex.progress.read() {
		// The client sent the whole body; the last write to the backend
		// is in progress or done (the backend answered after reading it).
		r := <-ex.bodyDone
		ex.bodyDone = nil
		ex.bytesOut += r.n
		ex.bodyErr = r.err
		return r.err == nil
	}
	if req.abort != nil {
		req.abort()
	}
	if ex.uc != nil {
		ex.uc.close()
		ex.uc = nil
	}
	r := <-ex.bodyDone
	ex.bytesOut += r.n
	ex.bodyErr = r.err
	ex.bodyDone = nil
	return false
}

// pollBody collects the body goroutine's result if it has ended; it
// returns its error, if any.
func (ex *exchange) pollBody() error {
	select {
	case r := <-ex.bodyDone:
		ex.bodyDone = nil
		ex.bytesOut += r.n
		ex.bodyErr = r.err
		if r.err == nil {
			return nil
		}
		var be *clientBodyError
		if errors.As(r.err, &be) {
			return r.err
		}
		return fmt.Errorf("sending the request body: %w", r.err)
	default:
		return nil
	}
}

// clientBodyFailed reports whether the request body failed on the
// client's side (then a failed backend read is not the backend's fault:
// the body goroutine cut it).
func (ex *exchange) clientBodyFailed() bool {
	// The body senders return *clientBodyError unwrapped; a type check
	// keeps errors.As (and its allocation) off the request path.
	_, ok := ex.bodyErr.(*clientBodyError)
	return ok
}
