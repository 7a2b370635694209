/* Ping-pong floor for bench/rpc_bench.py: a 32-byte echo over TCP or a Unix socket,
 * written in plain C so the Python and microrpc rows can be read against what the
 * kernel alone costs on this machine.
 *
 *   rpc_pingpong server ADDR block|spin [MAX_SECONDS]
 *       ADDR is tcp://127.0.0.1:0 (port 0: pick a free one) or unix:///path.
 *       Prints "READY <bound address>" on stdout, serves ONE connection, exits at EOF.
 *   rpc_pingpong client ADDR block|spin CALLS WARMUP OUTFILE MAX_SECONDS
 *       Writes CALLS round-trip times (int64 ns, host byte order) to OUTFILE and prints
 *       {"calls": n, "truncated": 0|1} on stdout.
 *
 * "spin" sets the socket non-blocking and retries recv() until data is there, so neither
 * side ever sleeps in the kernel: that removes the ~25 us wake-up of a halted vCPU that
 * dominates cross-core round trips on this VM (see /work/shared/notes/rpc-peers.md).
 * Every process arms alarm() so nothing can outlive the harness's time bound. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MSG 32

static void die(const char *what) { perror(what); exit(2); }

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Parses tcp://HOST:PORT or unix:///PATH into a sockaddr; returns its length. */
static socklen_t parse_addr(const char *addr, struct sockaddr_storage *ss, int *family) {
    memset(ss, 0, sizeof(*ss));
    if (strncmp(addr, "tcp://", 6) == 0) {
        char host[64];
        const char *colon = strrchr(addr + 6, ':');
        if (!colon || (size_t)(colon - (addr + 6)) >= sizeof(host)) { fprintf(stderr, "bad address %s\n", addr); exit(2); }
        memcpy(host, addr + 6, colon - (addr + 6));
        host[colon - (addr + 6)] = 0;
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)atoi(colon + 1));
        if (inet_pton(AF_INET, host, &sin->sin_addr) != 1) { fprintf(stderr, "bad host %s\n", host); exit(2); }
        *family = AF_INET;
        return sizeof(*sin);
    }
    if (strncmp(addr, "unix://", 7) == 0) {
        struct sockaddr_un *sun = (struct sockaddr_un *)ss;
        if (strlen(addr + 7) >= sizeof(sun->sun_path)) { fprintf(stderr, "path too long\n"); exit(2); }
        sun->sun_family = AF_UNIX;
        strcpy(sun->sun_path, addr + 7);
        *family = AF_UNIX;
        return sizeof(*sun);
    }
    fprintf(stderr, "unsupported address %s\n", addr);
    exit(2);
}

static void set_nodelay(int fd, int family) {
    int one = 1;
    if (family == AF_INET && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
        die("TCP_NODELAY");
}

/* Reads exactly n bytes. Returns 0 at EOF before the first byte. In spin mode the fd is
 * non-blocking and EAGAIN just means "try again now". */
static int read_full(int fd, char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, buf + got, n - got, 0);
        if (r > 0) { got += (size_t)r; continue; }
        if (r == 0) { if (got == 0) return 0; fprintf(stderr, "short read\n"); exit(2); }
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
        die("recv");
    }
    return 1;
}

static void write_full(int fd, const char *buf, size_t n) {
    size_t put = 0;
    while (put < n) {
        ssize_t w = send(fd, buf + put, n - put, MSG_NOSIGNAL);
        if (w > 0) { put += (size_t)w; continue; }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
        die("send");
    }
}

static int run_server(const char *addr, int spin) {
    struct sockaddr_storage ss;
    int family;
    socklen_t len = parse_addr(addr, &ss, &family);
    int lfd = socket(family, SOCK_STREAM, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (family == AF_UNIX) unlink(((struct sockaddr_un *)&ss)->sun_path);
    if (bind(lfd, (struct sockaddr *)&ss, len) < 0) die("bind");
    if (listen(lfd, 4) < 0) die("listen");
    if (family == AF_INET) {
        struct sockaddr_in bound;
        socklen_t blen = sizeof(bound);
        getsockname(lfd, (struct sockaddr *)&bound, &blen);
        char host[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &bound.sin_addr, host, sizeof(host));
        printf("READY tcp://%s:%d\n", host, ntohs(bound.sin_port));
    } else {
        printf("READY %s\n", addr);
    }
    fflush(stdout);
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0) die("accept");
    set_nodelay(fd, family);
    if (spin) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    char buf[MSG];
    while (read_full(fd, buf, MSG)) write_full(fd, buf, MSG);
    close(fd);
    close(lfd);
    if (family == AF_UNIX) unlink(((struct sockaddr_un *)&ss)->sun_path);
    return 0;
}

static int run_client(const char *addr, int spin, long calls, long warmup, const char *out, double max_s) {
    struct sockaddr_storage ss;
    int family;
    socklen_t len = parse_addr(addr, &ss, &family);
    int fd = socket(family, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (struct sockaddr *)&ss, len) < 0) die("connect");
    set_nodelay(fd, family);
    if (spin) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    char req[MSG], rep[MSG];
    memset(req, 'x', MSG);
    for (long i = 0; i < warmup; i++) {
        write_full(fd, req, MSG);
        if (!read_full(fd, rep, MSG)) { fprintf(stderr, "server closed\n"); return 2; }
    }
    int64_t *lat = calloc((size_t)calls, sizeof(int64_t));
    if (!lat) die("calloc");
    int64_t deadline = now_ns() + (int64_t)(max_s * 1e9);
    long n = 0;
    int truncated = 0;
    for (; n < calls; n++) {
        int64_t t0 = now_ns();
        write_full(fd, req, MSG);
        if (!read_full(fd, rep, MSG)) { fprintf(stderr, "server closed\n"); return 2; }
        int64_t t1 = now_ns();
        lat[n] = t1 - t0;
        if (memcmp(req, rep, MSG) != 0) { fprintf(stderr, "echo mismatch\n"); return 2; }
        if (t1 > deadline) { n++; truncated = 1; break; }
    }
    close(fd);
    FILE *f = fopen(out, "wb");
    if (!f) die("fopen");
    if (fwrite(lat, sizeof(int64_t), (size_t)n, f) != (size_t)n) die("fwrite");
    fclose(f);
    printf("{\"calls\": %ld, \"truncated\": %d}\n", n, truncated);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "server") == 0) {
        alarm(argc >= 5 ? (unsigned)atoi(argv[4]) : 600);
        return run_server(argv[2], strcmp(argv[3], "spin") == 0);
    }
    if (argc >= 8 && strcmp(argv[1], "client") == 0) {
        double max_s = atof(argv[7]);
        alarm((unsigned)max_s + 30);
        return run_client(argv[2], strcmp(argv[3], "spin") == 0, atol(argv[4]), atol(argv[5]), argv[6], max_s);
    }
    fprintf(stderr, "usage: %s server ADDR block|spin [MAX_SECONDS] | client ADDR block|spin CALLS WARMUP OUTFILE MAX_SECONDS\n", argv[0]);
    return 2;
}
