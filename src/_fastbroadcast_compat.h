/* Portability shim for reinhardt_ws._fastbroadcast: a scatter-gather socket write
 * that never raises SIGPIPE and never blocks.  Where there is no such call (Windows)
 * RWS_HAVE_DIRECT is 0 and the module always hands frames to the transport. */
#ifndef RWS_FASTBROADCAST_COMPAT_H
#define RWS_FASTBROADCAST_COMPAT_H

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

#endif
