/* Portability shim for reinhardt_ws._fastbroadcast: a scatter-gather socket write
 * that never raises SIGPIPE and never blocks.  Where there is no such call (Windows)
 * RWS_HAVE_DIRECT is 0 and the module always hands frames to the transport. */
#ifndef RWS_FASTBROADCAST_COMPAT_H
#define RWS_FASTBROADCAST_COMPAT_H

/* The picows release the build compiled Listener against (setup.py defines it). */
#ifndef RWS_PICOWS_VERSION
#define RWS_PICOWS_VERSION ""
#endif

#include <errno.h>
#include <string.h>

#if defined(_WIN32)
#define RWS_HAVE_DIRECT 0
typedef struct { void *iov_base; size_t iov_len; } rws_iovec;
static Py_ssize_t rws_sendv(int fd, rws_iovec *iov, int n) {
    (void)fd; (void)iov; (void)n;
    errno = ENOSYS;
    return -1;
}
#else
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#define RWS_HAVE_DIRECT 1
#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* macOS: Python ignores SIGPIPE anyway */
#endif
#ifndef MSG_DONTWAIT
#define MSG_DONTWAIT 0 /* asyncio sockets are non-blocking */
#endif
typedef struct iovec rws_iovec;
static Py_ssize_t rws_sendv(int fd, rws_iovec *iov, int n) {
    ssize_t r;
    if (n == 1) {
        r = send(fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL | MSG_DONTWAIT);
    } else {
        struct msghdr m;
        memset(&m, 0, sizeof(m));
        m.msg_iov = iov;
        m.msg_iovlen = (size_t)n;
        r = sendmsg(fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    return (Py_ssize_t)r;
}
#endif

/* A hint that *p* will be read soon (the flush loop's next members); no-op
 * where the compiler has no such builtin. */
#if defined(__GNUC__) || defined(__clang__)
#define rws_prefetch(p) __builtin_prefetch((p), 0, 2)
#else
#define rws_prefetch(p) ((void)(p))
#endif

/* The flush's per-member questions, asked without an attribute lookup: *descr* is
 * the attribute as found on the object's type, looked up once per peer.  A
 * descriptor (picows' is_close_frame_sent) is read through its __get__ slot; a
 * function (the transport's is_closing, get_write_buffer_size) is called with
 * the object as its one argument, as `type(obj).name(obj)` would. */
static PyObject *rws_descr_get(PyObject *descr, PyObject *obj) {
    descrgetfunc get = Py_TYPE(descr)->tp_descr_get;
    if (get == NULL) {
        Py_INCREF(descr);
        return descr;
    }
    return get(descr, obj, (PyObject *)Py_TYPE(obj));
}

static PyObject *rws_call_unbound(PyObject *func, PyObject *obj) {
    PyObject *args[1] = {obj};
    return PyObject_Vectorcall(func, args, 1, NULL);
}

static int rws_would_block(int err) {
#if defined(EWOULDBLOCK) && EWOULDBLOCK != EAGAIN
    if (err == EWOULDBLOCK) return 1;
#endif
    return err == EAGAIN || err == EINTR || err == ENOBUFS;
}

/* The held flush's timer where the kernel has one to the nanosecond (Linux): a
 * timerfd on CLOCK_MONOTONIC, armed for an absolute deadline, that the event
 * loop watches like a socket.  uvloop's own timers count whole milliseconds, so
 * armed in a busy loop they fire anywhere in the last millisecond before their
 * deadline (half the hold lost on average for 1 ms); this one fires at it.
 * Elsewhere RWS_HAVE_TIMERFD is 0 and the hub uses loop.call_at. */
#if defined(__linux__)
#include <stdint.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>
#define RWS_HAVE_TIMERFD 1
static double rws_monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
static int rws_timer_new(void) {
    return timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
}
/* Arm *fd* for *deadline* (seconds of CLOCK_MONOTONIC), or disarm it (*deadline*
 * < 0).  A deadline already past fires at once. */
static int rws_timer_set(int fd, double deadline) {
    struct itimerspec its;
    memset(&its, 0, sizeof(its));
    if (deadline >= 0.0) {
        its.it_value.tv_sec = (time_t)deadline;
        its.it_value.tv_nsec = (long)((deadline - (double)its.it_value.tv_sec) * 1e9);
        if (its.it_value.tv_nsec >= 1000000000L) {
            its.it_value.tv_sec += 1;
            its.it_value.tv_nsec -= 1000000000L;
        }
        if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
            its.it_value.tv_nsec = 1; /* all zero would disarm */
    }
    return timerfd_settime(fd, TFD_TIMER_ABSTIME, &its, NULL);
}
/* Consume the expirations (non-blocking: nothing to read is not an error). */
static void rws_timer_drain(int fd) {
    uint64_t expirations;
    ssize_t r = read(fd, &expirations, sizeof(expirations));
    (void)r;
}
static void rws_timer_close(int fd) { close(fd); }
#else
#define RWS_HAVE_TIMERFD 0
static double rws_monotonic(void) { return 0.0; }
static int rws_timer_new(void) { errno = ENOSYS; return -1; }
static int rws_timer_set(int fd, double deadline) {
    (void)fd; (void)deadline;
    errno = ENOSYS;
    return -1;
}
static void rws_timer_drain(int fd) { (void)fd; }
static void rws_timer_close(int fd) { (void)fd; }
#endif

#endif
