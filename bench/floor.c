/* The fan-out floor: the least a server can do to deliver one WebSocket frame
 * to N loopback clients.
 *
 * It is a WebSocket server just good enough for the bench clients: it accepts N
 * connections, answers the opening handshake with the Sec-WebSocket-Accept of the
 * fixed key the clients send (harness/wire.py), then, on command, writes the same
 * unmasked binary frame to every socket.  "BCAST M SIZE K" sends M frames to each
 * socket, K frames per send(): K = 1 is the one-syscall-per-delivery floor, K > 1
 * the coalesced floor (K frames memcpy'd into one buffer, one send() per socket).
 * Sockets stay blocking: when a client lags, send() sleeps instead of spinning, so
 * the CPU time this process reports is the floor's cost and nothing else.
 *
 * Control: one command per line on stdin, one reply per line on stdout, the same
 * protocol as harness/server_main.py:
 *   (start)            -> PORT <port> {json}
 *   WAIT <n> <timeout> -> CONNECTED <n>          (accept + handshake until n clients)
 *   BCAST <m> <size> <k> -> SENT <wall_s> <delivered> <dropped> <failed>
 *   STATS              -> STATS <utime_s> <stime_s> <maxrss_kb>
 *   GC                 -> OK
 *   QUIT               -> (exit)
 *
 * Build: cc -O2 -o floor floor.c   (the benchmark does this itself)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 20000
#define FIXED_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define FIXED_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

static int conns[MAX_CONNS];
static int n_conns = 0;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* Read the upgrade request (until the blank line) and answer 101.  Returns 0 on
 * success, -1 if the request is not the bench client's. */
static int handshake(int fd, double deadline) {
    char buf[4096];
    size_t used = 0;
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        int left_ms = (int)((deadline - now()) * 1000);
        if (left_ms <= 0) return -1;
        int r = poll(&p, 1, left_ms);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        ssize_t got = recv(fd, buf + used, sizeof(buf) - 1 - used, 0);
        if (got <= 0) return -1;
        used += (size_t)got;
        buf[used] = 0;
        if (strstr(buf, "\r\n\r\n")) break;
        if (used >= sizeof(buf) - 1) return -1;
    }
    if (!strstr(buf, "Sec-WebSocket-Key: " FIXED_KEY "\r\n")) return -1;
    static const char resp[] =
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Accept: " FIXED_ACCEPT "\r\n\r\n";
    size_t off = 0, len = sizeof(resp) - 1;
    while (off < len) {
        ssize_t w = send(fd, resp + off, len - off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        off += (size_t)w;
    }
    return 0;
}

/* Same bytes as harness/wire.py make_payload(). */
static unsigned char *make_frames(long size, long k, size_t *out_len) {
    size_t header = size < 126 ? 2 : (size < 65536 ? 4 : 10);
    size_t flen = header + (size_t)size;
    unsigned char *buf = malloc(flen * (size_t)k);
    if (!buf) die("malloc");
    unsigned char *f = buf;
    f[0] = 0x82;
    if (size < 126) {
        f[1] = (unsigned char)size;
    } else if (size < 65536) {
        f[1] = 126;
        f[2] = (unsigned char)(size >> 8);
        f[3] = (unsigned char)(size & 0xff);
    } else {
        f[1] = 127;
        for (int i = 0; i < 8; i++) f[2 + i] = (unsigned char)((unsigned long)size >> (8 * (7 - i)));
    }
    for (long i = 0; i < size; i++) f[header + i] = (unsigned char)(i % 251);
    for (long j = 1; j < k; j++) memcpy(buf + j * flen, buf, flen);
    *out_len = flen * (size_t)k;
    return buf;
}

static int send_all(int fd, const unsigned char *buf, size_t len) {
    size_t off = 0;
    while (off < len) {
        ssize_t w = send(fd, buf + off, len - off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        off += (size_t)w;
    }
    return 0;
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    int ls = socket(AF_INET, SOCK_STREAM, 0);
    if (ls < 0) die("socket");
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (bind(ls, (struct sockaddr *)&addr, sizeof(addr)) < 0) die("bind");
    if (listen(ls, 4096) < 0) die("listen");
    socklen_t alen = sizeof(addr);
    if (getsockname(ls, (struct sockaddr *)&addr, &alen) < 0) die("getsockname");
    printf("PORT %d {\"implementation\": \"c\", \"loop\": \"blocking send()\"}\n", ntohs(addr.sin_port));

    char line[256];
    while (fgets(line, sizeof(line), stdin)) {
        long a = 0, b = 0, c = 0;
        double t = 0;
        if (sscanf(line, "WAIT %ld %lf", &a, &t) >= 1) {
            if (t <= 0) t = 60;
            double deadline = now() + t;
            if (a > MAX_CONNS) a = MAX_CONNS;
            while (n_conns < a) {
                struct pollfd p = {ls, POLLIN, 0};
                int left_ms = (int)((deadline - now()) * 1000);
                if (left_ms <= 0) break;
                int r = poll(&p, 1, left_ms);
                if (r < 0 && errno == EINTR) continue;
                if (r <= 0) break;
                int fd = accept(ls, NULL, NULL);
                if (fd < 0) {
                    if (errno == EINTR || errno == EAGAIN) continue;
                    die("accept");
                }
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                if (handshake(fd, deadline) < 0) {
                    close(fd);
                    continue;
                }
                conns[n_conns++] = fd;
            }
            printf("CONNECTED %d\n", n_conns);
        } else if (sscanf(line, "BCAST %ld %ld %ld", &a, &b, &c) == 3) {
            long m = a, size = b, k = c < 1 ? 1 : c;
            size_t len;
            unsigned char *buf = make_frames(size, k, &len);
            long failed = 0, delivered = 0;
            double t0 = now();
            for (long it = 0; it < m / k; it++) {
                for (int i = 0; i < n_conns; i++) {
                    if (conns[i] < 0) continue;
                    if (send_all(conns[i], buf, len) < 0) {
                        failed++;
                        close(conns[i]);
                        conns[i] = -1;
                    } else {
                        delivered += k;
                    }
                }
            }
            double wall = now() - t0;
            free(buf);
            printf("SENT %.6f %ld 0 %ld\n", wall, delivered, failed);
        } else if (strncmp(line, "STATS", 5) == 0) {
            struct rusage ru;
            getrusage(RUSAGE_SELF, &ru);
            printf("STATS %.6f %.6f %ld\n", ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
                   ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6, ru.ru_maxrss);
        } else if (strncmp(line, "GC", 2) == 0) {
            printf("OK\n");
        } else if (strncmp(line, "QUIT", 4) == 0) {
            break;
        } else {
            printf("ERROR unknown command\n");
        }
    }
    for (int i = 0; i < n_conns; i++)
        if (conns[i] >= 0) close(conns[i]);
    close(ls);
    return 0;
}
