// The event loop behind package tunnelloop (see doc.go for why it is C).
#ifndef TUNNELLOOP_LOOP_H
#define TUNNELLOOP_LOOP_H

#include <stdint.h>

typedef struct tl_loop tl_loop;
typedef struct tl_tunnel tl_tunnel;

// Why a tunnel ended.
enum {
	TL_END_EOF = 1,    // both directions ended with a FIN, delivered
	TL_END_RESET = 2,  // a socket failed (reset, broken pipe); the other was reset
	TL_END_IDLE = 3,   // nothing received either way for the idle timeout
	TL_END_KILLED = 4, // tl_kill or the loop's stop
};

// Records the loop hands to Go (tl_take).
enum {
	TL_REC_DONE = 2,    // the tunnel ended; a = bytes moved per direction
	TL_REC_STOPPED = 3, // the loop thread is gone; no record follows
};

typedef struct {
	uint64_t cookie;
	int32_t kind;
	int32_t reason; // TL_END_*, for TL_REC_DONE
	int32_t err;    // errno of the failure, for TL_END_RESET
	int32_t pad;
	uint64_t a[2];  // [0]: fd0 -> fd1, [1]: fd1 -> fd0
} tl_record;

// tl_loop_new starts a loop thread. idle_ms: idle timeout; buf: read
// buffer size; pipe: splice pipe size. NULL with errno set on failure.
tl_loop *tl_loop_new(int64_t idle_ms, uint32_t buf, uint32_t pipe);
// tl_loop_moved is the bytes the loop delivered so far, every tunnel and
// direction together (read from any thread).
uint64_t tl_loop_moved(tl_loop *l);
// tl_loop_notify_fd is the eventfd that becomes readable when records wait.
int tl_loop_notify_fd(tl_loop *l);
// tl_loop_stop asks the thread to end every tunnel and exit; TL_REC_STOPPED
// is the last record.
void tl_loop_stop(tl_loop *l);
// tl_loop_free joins the thread and frees everything, tunnels included.
void tl_loop_free(tl_loop *l);

// tl_add takes over two connected, non-blocking TCP sockets. On success
// (0) the loop owns fd0 and fd1 and reports a TL_REC_DONE for cookie
// exactly once; *out is the handle for tl_kill and tl_release. On failure
// (an errno) nothing is owned.
int tl_add(tl_loop *l, int fd0, int fd1, uint64_t cookie, tl_tunnel **out);
// tl_kill ends a tunnel (TL_END_KILLED) unless it already ended. Only
// before its TL_REC_DONE record was taken.
void tl_kill(tl_loop *l, tl_tunnel *t);
// tl_release frees a tunnel once its TL_REC_DONE was taken.
void tl_release(tl_loop *l, tl_tunnel *t);
// tl_take moves up to max waiting records into out; returns how many.
int tl_take(tl_loop *l, tl_record *out, int max);

#endif
