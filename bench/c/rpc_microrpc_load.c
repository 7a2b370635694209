/* Pipelined load client speaking the microrpc wire format (docs/wire.md, version 1),
 * used by bench/rpc_bench.py to measure what a microrpc server can do when the client
 * is not the bottleneck (a pyzmq or Python client tops out well below a C one).
 *
 *   rpc_microrpc_load ADDR INFLIGHT WARMUP_SECONDS SECONDS
 *       ADDR is tcp://127.0.0.1:PORT or unix:///path. Keeps INFLIGHT "echo" REQUEST
 *       frames (codec 0 = raw, 32-byte body, session 0, deadline 0, credit 0) in flight,
 *       counts RESPONSE frames for WARMUP_SECONDS, then counts again for SECONDS and
 *       prints {"completed": n, "elapsed_ns": t, "inflight": k} on stdout.
 *
 * Like any load generator it batches: every RESPONSE parsed out of one recv() is
 * replaced by a new REQUEST, and all of them go out in one send(). Each response is
 * checked (magic, version, kind, body) and matched to an outstanding call id; an ERROR
 * frame or a mismatch ends the run with exit status 2 and a message on stderr. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define HDR 32
#define BODY 32
#define NAME "echo"
#define NAME_LEN 4
#define REQ_LEN (HDR + NAME_LEN + BODY)
#define KIND_REQUEST 1
#define KIND_RESPONSE 2
#define KIND_ERROR 3
#define KIND_CREDIT 4
#define MAX_INFLIGHT 4096
/* Call ids are handed out sequentially, so a ring much larger than the window tells
 * "outstanding" from "already answered" or "never sent". */
#define RING (1u << 16)
#define MAX_FRAME (1u << 20)

static void die(const char *what) { perror(what); exit(2); }

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void put_u16(unsigned char *p, uint16_t v) { p[0] = v & 0xff; p[1] = v >> 8; }
static void put_u32(unsigned char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (v >> (8 * i)) & 0xff; }
static void put_u64(unsigned char *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (v >> (8 * i)) & 0xff; }
static uint16_t get_u16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get_u32(const unsigned char *p) { uint32_t v = 0; for (int i = 3; i >= 0; i--) v = (v << 8) | p[i]; return v; }
static uint64_t get_u64(const unsigned char *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = (v << 8) | p[i]; return v; }

static unsigned char pending[RING];
static uint64_t next_id = 1;

/* Appends one REQUEST frame to out and marks its call id outstanding. */
static size_t encode_request(unsigned char *out) {
    memset(out, 0, HDR);
    out[0] = 0xB5; out[1] = 'R'; out[2] = 1; out[3] = KIND_REQUEST;
    out[4] = 0;               /* flags */
    out[5] = 0;               /* codec: raw */
    put_u16(out + 6, NAME_LEN);
    put_u64(out + 8, next_id);
    put_u32(out + 16, 0);     /* session */
    put_u32(out + 20, 0);     /* deadline_us: none */
    put_u32(out + 24, 0);     /* credit (demand) */
    put_u32(out + 28, BODY);
    memcpy(out + HDR, NAME, NAME_LEN);
    memset(out + HDR + NAME_LEN, 'x', BODY);
    pending[next_id & (RING - 1)] = 1;
    next_id++;
    return REQ_LEN;
}

static int connect_to(const char *addr) {
    if (strncmp(addr, "tcp://", 6) == 0) {
        char host[64];
        const char *colon = strrchr(addr + 6, ':');
        if (!colon || (size_t)(colon - (addr + 6)) >= sizeof(host)) { fprintf(stderr, "bad address %s\n", addr); exit(2); }
        memcpy(host, addr + 6, colon - (addr + 6));
        host[colon - (addr + 6)] = 0;
        struct sockaddr_in sin;
        memset(&sin, 0, sizeof(sin));
        sin.sin_family = AF_INET;
        sin.sin_port = htons((uint16_t)atoi(colon + 1));
        if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) { fprintf(stderr, "bad host %s\n", host); exit(2); }
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) die("connect");
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        return fd;
    }
    if (strncmp(addr, "unix://", 7) == 0) {
        struct sockaddr_un sun;
        memset(&sun, 0, sizeof(sun));
        sun.sun_family = AF_UNIX;
        if (strlen(addr + 7) >= sizeof(sun.sun_path)) { fprintf(stderr, "path too long\n"); exit(2); }
        strcpy(sun.sun_path, addr + 7);
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) die("connect");
        return fd;
    }
    fprintf(stderr, "unsupported address %s\n", addr);
    exit(2);
}

static void send_all(int fd, const unsigned char *buf, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
        if (w < 0) { if (errno == EINTR) continue; die("send"); }
        buf += w;
        n -= (size_t)w;
    }
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s ADDR INFLIGHT WARMUP_SECONDS SECONDS\n", argv[0]);
        return 2;
    }
    int inflight = atoi(argv[2]);
    double warm_s = atof(argv[3]), run_s = atof(argv[4]);
    if (inflight < 1 || inflight > MAX_INFLIGHT) { fprintf(stderr, "INFLIGHT must be 1..%d\n", MAX_INFLIGHT); return 2; }
    alarm((unsigned)(warm_s + run_s) + 30);
    int fd = connect_to(argv[1]);

    static unsigned char out[MAX_INFLIGHT * REQ_LEN];
    size_t inbuf_cap = 1u << 20;
    unsigned char *in = malloc(inbuf_cap);
    if (!in) die("malloc");
    size_t have = 0;

    size_t olen = 0;
    for (int i = 0; i < inflight; i++) olen += encode_request(out + olen);
    send_all(fd, out, olen);

    int64_t start = now_ns();
    int64_t measure_from = start + (int64_t)(warm_s * 1e9);
    int64_t stop_at = measure_from + (int64_t)(run_s * 1e9);
    int64_t t_first = 0;
    long completed = 0;
    int measuring = 0;
    for (;;) {
        if (have == inbuf_cap) { fprintf(stderr, "receive buffer full\n"); return 2; }
        ssize_t r = recv(fd, in + have, inbuf_cap - have, 0);
        if (r == 0) { fprintf(stderr, "server closed the connection\n"); return 2; }
        if (r < 0) { if (errno == EINTR) continue; die("recv"); }
        have += (size_t)r;
        size_t pos = 0;
        int answered = 0;
        while (have - pos >= HDR) {
            unsigned char *h = in + pos;
            if (h[0] != 0xB5 || h[1] != 'R' || h[2] != 1) { fprintf(stderr, "bad frame header\n"); return 2; }
            uint16_t name_len = get_u16(h + 6);
            uint32_t body_len = get_u32(h + 28);
            if (name_len != 0 || body_len > MAX_FRAME) { fprintf(stderr, "bad response sizes\n"); return 2; }
            if (have - pos < HDR + body_len) break;
            uint64_t id = get_u64(h + 8);
            if (h[3] == KIND_RESPONSE) {
                if (id == 0 || id >= next_id || !pending[id & (RING - 1)]) { fprintf(stderr, "response to unknown call %llu\n", (unsigned long long)id); return 2; }
                if (body_len != BODY || h[HDR] != 'x') { fprintf(stderr, "echo body mismatch\n"); return 2; }
                pending[id & (RING - 1)] = 0;
                answered++;
            } else if (h[3] == KIND_ERROR) {
                fprintf(stderr, "server answered ERROR for call %llu (%u body bytes)\n", (unsigned long long)id, body_len);
                return 2;
            } else if (h[3] != KIND_CREDIT) {
                fprintf(stderr, "unexpected frame kind %u\n", h[3]);
                return 2;
            }
            pos += HDR + body_len;
        }
        memmove(in, in + pos, have - pos);
        have -= pos;

        int64_t t = now_ns();
        if (!measuring && t >= measure_from) { measuring = 1; t_first = t; completed = 0; }
        else if (measuring) completed += answered;
        if (measuring && t >= stop_at) {
            printf("{\"completed\": %ld, \"elapsed_ns\": %lld, \"inflight\": %d}\n", completed, (long long)(t - t_first), inflight);
            close(fd);
            return 0;
        }
        olen = 0;
        for (int i = 0; i < answered; i++) olen += encode_request(out + olen);
        if (olen) send_all(fd, out, olen);
    }
}
