/* kuml-udp: the two ends of a UDP stream for bench/net.sh --streams. The same program runs on
 * the measuring side and, statically linked and appended to the guest's initramfs, in the guest
 * (whose busybox nc has no UDP mode).
 *
 *   kuml-udp sink PORT IDLE_S          count the datagrams that reach PORT; stop IDLE_S seconds
 *                                      after the last one (or 120 s after starting, if none came)
 *   kuml-udp send ADDR PORT BYTES SIZE send BYTES in SIZE-byte datagrams to ADDR:PORT
 *
 * The sender first sends one-byte probes, one every 100 ms, until the sink answers one (it never
 * streams into a port nobody listens on yet; it gives up after 60 s), then the stream as fast as
 * its socket takes it: no pacing, so what arrives is what the path delivers. The sink answers
 * probes and counts every larger datagram.
 * Output, one line each (the figures bench/net_streams.py reads):
 *   sent <datagrams> <bytes> <seconds from the first to the last datagram>
 *   received <datagrams> <bytes> <seconds from the first to the last datagram>
 * Exit status 0, or 1 with a message on stderr naming what failed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_DATAGRAM 65507

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "kuml-udp: %s: %s\n", what, strerror(errno));
    exit(1);
}

static long number(const char *what, const char *text, long min, long max)
{
    char *end;
    errno = 0;
    long n = strtol(text, &end, 0);
    if (errno || end == text || *end || n < min || n > max) {
        fprintf(stderr, "kuml-udp: %s '%s' is not a number from %ld to %ld\n", what, text, min,
                max);
        exit(2);
    }
    return n;
}

static int udp_socket(void)
{
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0)
        die("socket");
    /* A deep receive queue, so that the figure is the path's and not this queue's: FORCE where
     * allowed (root), else as much as rmem_max lets us have. */
    int size = 8 << 20;
    if (setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) < 0)
        setsockopt(s, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    return s;
}

static int sink(int port, int idle_s)
{
    static char buf[MAX_DATAGRAM + 1];
    int s = udp_socket();
    struct sockaddr_in me = { .sin_family = AF_INET, .sin_port = htons(port) };
    if (bind(s, (struct sockaddr *)&me, sizeof me) < 0)
        die("bind");
    long long datagrams = 0, bytes = 0;
    double first = 0, last = 0, start = now();
    for (;;) {
        int wait_ms = datagrams ? idle_s * 1000 : (int)((start + 120 - now()) * 1000);
        if (wait_ms <= 0)
            break;
        struct pollfd p = { .fd = s, .events = POLLIN };
        int r = poll(&p, 1, wait_ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            die("poll");
        if (r == 0)
            break;
        for (;;) {
            struct sockaddr_in from;
            socklen_t fromlen = sizeof from;
            ssize_t n = recvfrom(s, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from,
                                 &fromlen);
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    break;
                die("recvfrom");
            }
            if (n == 1) {
                /* A probe: say we are here (a lost answer is followed by another probe). */
                sendto(s, "r", 1, 0, (struct sockaddr *)&from, fromlen);
                continue;
            }
            last = now();
            if (!datagrams)
                first = last;
            datagrams++;
            bytes += n;
        }
    }
    printf("received %lld %lld %.6f\n", datagrams, bytes, last - first);
    return 0;
}

static int send_stream(const char *addr, int port, long long total, int size)
{
    static char buf[MAX_DATAGRAM];
    int s = udp_socket();
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(port) };
    if (inet_pton(AF_INET, addr, &to.sin_addr) != 1) {
        fprintf(stderr, "kuml-udp: '%s' is not an IPv4 address\n", addr);
        return 2;
    }
    if (connect(s, (struct sockaddr *)&to, sizeof to) < 0)
        die("connect");
    double give_up = now() + 60;
    for (;;) {
        if (now() > give_up) {
            fprintf(stderr, "kuml-udp: no sink answered at %s:%d for 60 s\n", addr, port);
            return 1;
        }
        /* ECONNREFUSED: an ICMP port unreachable for an earlier probe; try again. */
        if (send(s, "p", 1, 0) < 0 && errno != ECONNREFUSED)
            die("send probe");
        struct pollfd p = { .fd = s, .events = POLLIN };
        if (poll(&p, 1, 100) > 0 && recv(s, buf, sizeof buf, MSG_DONTWAIT) == 1)
            break;
    }
    memset(buf, 'k', size);
    long long datagrams = 0, bytes = 0;
    double first = now();
    while (bytes < total) {
        if (send(s, buf, size, 0) < 0) {
            /* A full device queue or an ICMP error from the far end: not sent, go on. */
            if (errno == ENOBUFS || errno == EAGAIN || errno == ECONNREFUSED || errno == EINTR)
                continue;
            die("send");
        }
        datagrams++;
        bytes += size;
    }
    printf("sent %lld %lld %.6f\n", datagrams, bytes, now() - first);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "sink"))
        return sink(number("port", argv[2], 1, 65535), number("idle seconds", argv[3], 1, 600));
    if (argc == 6 && !strcmp(argv[1], "send"))
        return send_stream(argv[2], number("port", argv[3], 1, 65535),
                           number("bytes", argv[4], 1, 1LL << 40),
                           number("datagram size", argv[5], 2, MAX_DATAGRAM));
    fprintf(stderr, "usage: kuml-udp sink PORT IDLE_S | kuml-udp send ADDR PORT BYTES SIZE\n");
    return 2;
}
