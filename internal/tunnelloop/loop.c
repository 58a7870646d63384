//go:build linux && cgo

// The event loop behind package tunnelloop: one thread per loop, blocked in
// epoll_wait, relaying every direction of every tunnel it owns. doc.go
// explains why this is C; loop.h is the interface.
//
// Threading: the loop thread owns every field of an active tunnel. Go
// threads touch only the command queue and the record queue, each under
// its mutex, and tl_add's epoll_ctl calls (before the tunnel is handed to
// the loop).

#define _GNU_SOURCE
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

// One direction of a tunnel: bytes read from fd[i] and written to fd[1-i].
typedef struct {
	char *buf;          // read mode's buffer, held only while it has bytes
	uint32_t off, len;  // buf[off:len] still to send
	int pr, pw;         // bulk mode's pipe (-1 until bulk traffic is seen)
	uint32_t piped;     // bytes in the pipe
	int bulk;           // splice instead of recv/send
	int readable;       // src may hold data or an end (edge seen, not drained)
	int rdhup;          // src reported its peer's FIN (or an error)
	int blocked;        // dst's send buffer was full; wait for EPOLLOUT
	int eof;            // src returned end of stream
	int shut;           // the end was passed on (shutdown(dst, SHUT_WR))
	uint64_t moved;     // bytes delivered to dst
} tl_dir;

typedef struct {
	tl_tunnel *t;
	int idx;
} tl_sock;

struct tl_tunnel {
	int fd[2];
	tl_sock sock[2];
	tl_dir dir[2];
	int active;  // ADD processed: the loop pumps it
	int ended;   // fds closed, TL_REC_DONE pushed
	int64_t last; // ms (monotonic) data was last received either way
	uint64_t cookie;
	tl_tunnel *prev, *next;   // LRU of active tunnels, least recently active first
	tl_tunnel *aprev, *anext; // every tunnel not yet released (under mu)
};

enum { CMD_ADD = 1, CMD_KILL, CMD_RELEASE };

typedef struct {
	int op;
	tl_tunnel *t;
} tl_cmd;

#define TL_MAX_EVENTS 256
#define TL_FREE_BUFS 64

struct tl_loop {
	int ep;  // epoll
	int wfd; // eventfd: commands wait (data.ptr NULL in ep)
	int nfd; // eventfd: records wait (read by Go)
	int64_t idle_ms;
	uint32_t bufsz, pipesz;
	uint64_t moved; // written by the loop thread only, read atomically by others
	pthread_t thread;
	int started;
	int64_t now;

	tl_tunnel *head, *tail; // LRU (loop thread only)
	char *free_bufs[TL_FREE_BUFS];
	int nfree;

	pthread_mutex_t mu; // commands, stopping, the all-tunnels list
	tl_cmd *cmds;
	int ncmds, capcmds;
	int stopping;
	tl_tunnel *all;

	pthread_mutex_t rmu; // records
	tl_record *recs;
	int nrecs, caprecs;
};

static int64_t mono_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void wake(int fd) {
	uint64_t one = 1;
	// EAGAIN means the counter is already non-zero: the reader wakes anyway.
	while (write(fd, &one, sizeof one) < 0 && errno == EINTR) {
	}
}

static void push_record(tl_loop *l, int kind, tl_tunnel *t, int reason, int err) {
	tl_record r;
	memset(&r, 0, sizeof r);
	r.kind = kind;
	r.reason = reason;
	r.err = err;
	if (t != NULL) {
		r.cookie = t->cookie;
		r.a[0] = t->dir[0].moved;
		r.a[1] = t->dir[1].moved;
	}
	pthread_mutex_lock(&l->rmu);
	if (l->nrecs == l->caprecs) {
		int cap = l->caprecs ? 2 * l->caprecs : 64;
		tl_record *n = realloc(l->recs, (size_t)cap * sizeof *n);
		if (n == NULL) {
			// Out of memory: a record must not be lost (its caller
			// waits for it), so wait for memory.
			pthread_mutex_unlock(&l->rmu);
			usleep(1000);
			push_record(l, kind, t, reason, err);
			return;
		}
		l->recs = n;
		l->caprecs = cap;
	}
	int was_empty = l->nrecs == 0;
	l->recs[l->nrecs++] = r;
	pthread_mutex_unlock(&l->rmu);
	if (was_empty) {
		wake(l->nfd);
	}
}

int tl_take(tl_loop *l, tl_record *out, int max) {
	pthread_mutex_lock(&l->rmu);
	int n = l->nrecs < max ? l->nrecs : max;
	memcpy(out, l->recs, (size_t)n * sizeof *out);
	memmove(l->recs, l->recs + n, (size_t)(l->nrecs - n) * sizeof *out);
	l->nrecs -= n;
	pthread_mutex_unlock(&l->rmu);
	return n;
}

static int push_cmd(tl_loop *l, int op, tl_tunnel *t) {
	// Under l->mu.
	if (l->ncmds == l->capcmds) {
		int cap = l->capcmds ? 2 * l->capcmds : 64;
		tl_cmd *n = realloc(l->cmds, (size_t)cap * sizeof *n);
		if (n == NULL) {
			return ENOMEM;
		}
		l->cmds = n;
		l->capcmds = cap;
	}
	int was_empty = l->ncmds == 0;
	l->cmds[l->ncmds].op = op;
	l->cmds[l->ncmds].t = t;
	l->ncmds++;
	if (was_empty) {
		wake(l->wfd);
	}
	return 0;
}

static void lru_unlink(tl_loop *l, tl_tunnel *t) {
	if (t->prev) t->prev->next = t->next; else l->head = t->next;
	if (t->next) t->next->prev = t->prev; else l->tail = t->prev;
	t->prev = t->next = NULL;
}

static void lru_append(tl_loop *l, tl_tunnel *t) {
	t->prev = l->tail;
	t->next = NULL;
	if (l->tail) l->tail->next = t; else l->head = t;
	l->tail = t;
}

// touch records that data was received: the tunnel is not idle.
static void touch(tl_loop *l, tl_tunnel *t) {
	t->last = l->now;
	if (l->tail != t) {
		lru_unlink(l, t);
		lru_append(l, t);
	}
}

static char *get_buf(tl_loop *l) {
	if (l->nfree > 0) {
		return l->free_bufs[--l->nfree];
	}
	return malloc(l->bufsz);
}

static void put_buf(tl_loop *l, tl_dir *d) {
	if (d->buf == NULL) {
		return;
	}
	if (l->nfree < TL_FREE_BUFS) {
		l->free_bufs[l->nfree++] = d->buf;
	} else {
		free(d->buf);
	}
	d->buf = NULL;
	d->off = d->len = 0;
}

static void end(tl_loop *l, tl_tunnel *t, int reason, int err) {
	if (t->ended) {
		return;
	}
	t->ended = 1;
	if (reason == TL_END_RESET) {
		// Pass the failure on: the peer that did not fail sees a reset,
		// as it would with no proxy in between, not a clean end.
		struct linger lg = {1, 0};
		setsockopt(t->fd[0], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
		setsockopt(t->fd[1], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
	}
	// Removed explicitly: closing a descriptor leaves it in the epoll set
	// while another descriptor of the socket is open (the caller's, for a
	// moment after tl_add).
	epoll_ctl(l->ep, EPOLL_CTL_DEL, t->fd[0], NULL);
	epoll_ctl(l->ep, EPOLL_CTL_DEL, t->fd[1], NULL);
	close(t->fd[0]);
	close(t->fd[1]);
	for (int i = 0; i < 2; i++) {
		tl_dir *d = &t->dir[i];
		put_buf(l, d);
		if (d->pr >= 0) {
			close(d->pr);
			close(d->pw);
			d->pr = d->pw = -1;
		}
	}
	if (t->active) {
		lru_unlink(l, t);
	}
	push_record(l, TL_REC_DONE, t, reason, err);
}

static void moved(tl_loop *l, tl_dir *d, size_t n) {
	d->moved += n;
	// A plain store (no locked add): this thread is the only writer.
	__atomic_store_n(&l->moved, l->moved + n, __ATOMIC_RELAXED);
}

uint64_t tl_loop_moved(tl_loop *l) { return __atomic_load_n(&l->moved, __ATOMIC_RELAXED); }

static int make_pipe(tl_loop *l, tl_dir *d) {
	int p[2];
	if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0) {
		return 0;
	}
	// A larger pipe halves the syscalls of bulk transfers; the default
	// (64 KiB) still works when the limit refuses it.
	fcntl(p[1], F_SETPIPE_SZ, (int)l->pipesz);
	d->pr = p[0];
	d->pw = p[1];
	return 1;
}

// pump moves direction i of t as far as it can without waiting.
static void pump(tl_loop *l, tl_tunnel *t, int i) {
	tl_dir *d = &t->dir[i];
	int src = t->fd[i], dst = t->fd[1 - i];
	while (!t->ended) {
		if (d->piped > 0) {
			if (d->blocked) return;
			ssize_t n = splice(d->pr, NULL, dst, NULL, d->piped, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n < 0) {
				if (errno == EINTR) continue;
				if (errno == EAGAIN) { d->blocked = 1; return; }
				end(l, t, TL_END_RESET, errno);
				return;
			}
			d->piped -= (uint32_t)n;
			moved(l, d, (size_t)n);
			continue;
		}
		if (d->off < d->len) {
			if (d->blocked) return;
			ssize_t n = send(dst, d->buf + d->off, d->len - d->off, MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EINTR) continue;
				if (errno == EAGAIN) { d->blocked = 1; return; }
				end(l, t, TL_END_RESET, errno);
				return;
			}
			d->off += (uint32_t)n;
			moved(l, d, (size_t)n);
			continue;
		}
		put_buf(l, d); // nothing pending: an idle direction holds no buffer
		if (d->eof) {
			if (!d->shut) {
				d->shut = 1;
				// A failure here (the peer already gone) is found by the
				// other direction's next send or by the peer's reset.
				shutdown(dst, SHUT_WR);
				if (t->dir[1 - i].shut) {
					end(l, t, TL_END_EOF, 0);
				}
			}
			return;
		}
		if (!d->readable) return;
		if (d->bulk) {
			if (d->pr < 0 && !make_pipe(l, d)) {
				d->bulk = 0; // out of descriptors: stay with recv/send
				continue;
			}
			ssize_t n = splice(src, NULL, d->pw, NULL, l->pipesz, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n < 0) {
				if (errno == EINTR) continue;
				if (errno == EAGAIN) { d->readable = 0; return; }
				end(l, t, TL_END_RESET, errno);
				return;
			}
			if (n == 0) { d->eof = 1; continue; }
			touch(l, t);
			d->piped = (uint32_t)n;
			if ((size_t)n < l->bufsz) d->bulk = 0; // small again: recv's short read is cheaper
			continue;
		}
		if (d->buf == NULL && (d->buf = get_buf(l)) == NULL) {
			end(l, t, TL_END_RESET, ENOMEM);
			return;
		}
		ssize_t n = recv(src, d->buf, l->bufsz, 0);
		if (n < 0) {
			if (errno == EINTR) continue;
			if (errno == EAGAIN) { d->readable = 0; continue; }
			end(l, t, TL_END_RESET, errno);
			return;
		}
		if (n == 0) { d->eof = 1; continue; }
		touch(l, t);
		d->off = 0;
		d->len = (uint32_t)n;
		if ((uint32_t)n == l->bufsz) {
			d->bulk = 1; // the next read splices, once this buffer is sent
		} else if (!d->rdhup) {
			// A short read took everything the socket held (nginx's
			// rule): anything arriving later raises a new edge, so no
			// recv is spent to hear EAGAIN. A FIN or an error that came
			// with this data was flagged by its event (rdhup), and then
			// the next recv reports it.
			d->readable = 0;
		}
	}
}

static int sock_error(int fd) {
	int e = 0;
	socklen_t len = sizeof e;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0) {
		return errno;
	}
	return e;
}

static void on_event(tl_loop *l, tl_sock *s, uint32_t ev) {
	tl_tunnel *t = s->t;
	int i = s->idx;
	if (t->ended) {
		return; // ended earlier in this batch
	}
	if ((ev & EPOLLERR) && t->active && t->dir[i].eof) {
		// fd[i] is not read any more, so no recv would report its
		// failure; while it is read, the recv reports it after the data
		// that came before it.
		int e = sock_error(t->fd[i]);
		if (e != 0) {
			end(l, t, TL_END_RESET, e);
			return;
		}
	}
	if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
		t->dir[i].readable = 1;
		if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
			t->dir[i].rdhup = 1;
		}
	}
	if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
		t->dir[1 - i].blocked = 0;
	}
	if (t->active) {
		pump(l, t, i);
		pump(l, t, 1 - i);
	}
}

static void run_cmds(tl_loop *l, int *stopping) {
	pthread_mutex_lock(&l->mu);
	tl_cmd *cmds = l->cmds;
	int n = l->ncmds;
	l->cmds = NULL;
	l->ncmds = l->capcmds = 0;
	*stopping = l->stopping;
	pthread_mutex_unlock(&l->mu);
	for (int k = 0; k < n; k++) {
		tl_tunnel *t = cmds[k].t;
		switch (cmds[k].op) {
		case CMD_ADD:
			t->active = 1;
			t->last = l->now;
			lru_append(l, t);
			// Readiness at registration was reported as an event (epoll
			// queues a ready file on EPOLL_CTL_ADD, edge-triggered too),
			// whose flags wait here.
			pump(l, t, 0);
			pump(l, t, 1);
			break;
		case CMD_KILL:
			end(l, t, TL_END_KILLED, 0);
			break;
		case CMD_RELEASE:
			pthread_mutex_lock(&l->mu);
			if (t->aprev) t->aprev->anext = t->anext; else l->all = t->anext;
			if (t->anext) t->anext->aprev = t->aprev;
			pthread_mutex_unlock(&l->mu);
			free(t);
			break;
		}
	}
	free(cmds);
}

static void *run(void *arg) {
	tl_loop *l = arg;
	// Named so that an operator's top -H (and the tests) can tell the
	// loops from the Go runtime's threads.
	pthread_setname_np(pthread_self(), "edge-tunnel");
	struct epoll_event evs[TL_MAX_EVENTS];
	for (;;) {
		int timeout = -1;
		if (l->head != NULL) {
			int64_t left = l->head->last + l->idle_ms - mono_ms();
			timeout = left <= 0 ? 0 : (left > 60000 ? 60000 : (int)left) + 1;
		}
		int n = epoll_wait(l->ep, evs, TL_MAX_EVENTS, timeout);
		if (n < 0 && errno != EINTR) {
			break; // cannot happen with valid arguments; stop rather than spin
		}
		l->now = mono_ms();
		int cmds = 0;
		for (int k = 0; k < n; k++) {
			if (evs[k].data.ptr == NULL) {
				uint64_t v;
				while (read(l->wfd, &v, sizeof v) < 0 && errno == EINTR) {
				}
				cmds = 1;
				continue;
			}
			on_event(l, evs[k].data.ptr, evs[k].events);
		}
		int stopping = 0;
		if (cmds) {
			run_cmds(l, &stopping);
		}
		while (l->head != NULL && l->head->last + l->idle_ms <= l->now) {
			end(l, l->head, TL_END_IDLE, 0);
		}
		if (stopping) {
			break;
		}
	}
	// Stopped (or epoll failed): tl_add refuses from now on; tunnels
	// added before are activated, then everything left is ended.
	// Commands queued after this are KILL and RELEASE only, of ended
	// tunnels: tl_loop_free frees what they name.
	pthread_mutex_lock(&l->mu);
	l->stopping = 1;
	pthread_mutex_unlock(&l->mu);
	int stopping;
	run_cmds(l, &stopping);
	while (l->head != NULL) {
		end(l, l->head, TL_END_KILLED, 0);
	}
	push_record(l, TL_REC_STOPPED, NULL, 0, 0);
	return NULL;
}

tl_loop *tl_loop_new(int64_t idle_ms, uint32_t buf, uint32_t pipe) {
	tl_loop *l = calloc(1, sizeof *l);
	if (l == NULL) {
		return NULL;
	}
	l->idle_ms = idle_ms;
	l->bufsz = buf;
	l->pipesz = pipe;
	l->ep = epoll_create1(EPOLL_CLOEXEC);
	l->wfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	l->nfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	pthread_mutex_init(&l->mu, NULL);
	pthread_mutex_init(&l->rmu, NULL);
	int err = 0;
	if (l->ep < 0 || l->wfd < 0 || l->nfd < 0) {
		err = errno;
	} else {
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
		if (epoll_ctl(l->ep, EPOLL_CTL_ADD, l->wfd, &ev) < 0) {
			err = errno;
		}
	}
	if (err == 0) {
		// The thread takes no signals: the Go runtime's threads do.
		pthread_attr_t attr;
		sigset_t all;
		sigfillset(&all);
		pthread_attr_init(&attr);
		pthread_attr_setsigmask_np(&attr, &all);
		err = pthread_create(&l->thread, &attr, run, l);
		pthread_attr_destroy(&attr);
		l->started = err == 0;
	}
	if (err != 0) {
		tl_loop_free(l);
		errno = err;
		return NULL;
	}
	return l;
}

int tl_loop_notify_fd(tl_loop *l) { return l->nfd; }

void tl_loop_stop(tl_loop *l) {
	pthread_mutex_lock(&l->mu);
	if (!l->stopping) {
		l->stopping = 1;
		wake(l->wfd);
	}
	pthread_mutex_unlock(&l->mu);
}

void tl_loop_free(tl_loop *l) {
	if (l->started) {
		tl_loop_stop(l);
		pthread_join(l->thread, NULL);
	}
	while (l->all != NULL) {
		tl_tunnel *t = l->all;
		l->all = t->anext;
		free(t);
	}
	for (int k = 0; k < l->nfree; k++) {
		free(l->free_bufs[k]);
	}
	free(l->cmds);
	free(l->recs);
	if (l->ep >= 0) close(l->ep);
	if (l->wfd >= 0) close(l->wfd);
	if (l->nfd >= 0) close(l->nfd);
	pthread_mutex_destroy(&l->mu);
	pthread_mutex_destroy(&l->rmu);
	free(l);
}

int tl_add(tl_loop *l, int fd0, int fd1, uint64_t cookie, tl_tunnel **out) {
	tl_tunnel *t = calloc(1, sizeof *t);
	if (t == NULL) {
		return ENOMEM;
	}
	t->cookie = cookie;
	for (int i = 0; i < 2; i++) {
		t->fd[i] = i == 0 ? fd0 : fd1;
		t->sock[i].t = t;
		t->sock[i].idx = i;
		t->dir[i].pr = t->dir[i].pw = -1;
	}
	pthread_mutex_lock(&l->mu);
	if (l->stopping) {
		pthread_mutex_unlock(&l->mu);
		free(t);
		return ESHUTDOWN;
	}
	t->anext = l->all;
	if (l->all) l->all->aprev = t;
	l->all = t;
	pthread_mutex_unlock(&l->mu);

	// Registered from this thread so that a failure is reported to the
	// caller, who keeps the sockets. Events that arrive before the ADD
	// command only set flags (the tunnel is not active yet).
	int err = 0, added = 0;
	for (int i = 0; i < 2 && err == 0; i++) {
		struct epoll_event ev = {
			.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
			.data.ptr = &t->sock[i],
		};
		if (epoll_ctl(l->ep, EPOLL_CTL_ADD, t->fd[i], &ev) < 0) {
			err = errno;
		} else {
			added++;
		}
	}
	pthread_mutex_lock(&l->mu);
	if (err == 0) {
		err = push_cmd(l, CMD_ADD, t);
	}
	if (err != 0) {
		for (int i = 0; i < added; i++) {
			epoll_ctl(l->ep, EPOLL_CTL_DEL, t->fd[i], NULL);
		}
		// The loop may hold an event for t from before the removal
		// (it only sets flags of an inactive tunnel): it frees t after
		// that batch, or tl_loop_free does when even this fails.
		(void)push_cmd(l, CMD_RELEASE, t);
	}
	pthread_mutex_unlock(&l->mu);
	if (err == 0) {
		*out = t;
	}
	return err;
}

void tl_kill(tl_loop *l, tl_tunnel *t) {
	pthread_mutex_lock(&l->mu);
	push_cmd(l, CMD_KILL, t); // out of memory: the tunnel ends by idleness instead
	pthread_mutex_unlock(&l->mu);
}

void tl_release(tl_loop *l, tl_tunnel *t) {
	pthread_mutex_lock(&l->mu);
	push_cmd(l, CMD_RELEASE, t); // out of memory: tl_loop_free frees t
	pthread_mutex_unlock(&l->mu);
}
