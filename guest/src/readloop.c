/*
 * readloop: the per-call cost of reading a /proc file from user space, for
 * bench/patch_bench (how much a live patch's redirection adds to the
 * patched function: /proc/cmdline is cmdline_proc_show, example patch 1).
 *
 *   readloop FILE CALLS
 *
 * Opens FILE once, then pread()s it at offset 0 CALLS times (each pread at
 * offset 0 makes seq_file run the file's show function again) and prints
 * one line:
 *
 *   calls=N wall_ns_per_call=W cpu_ns_per_call=C first=<first line read>
 *
 * wall is CLOCK_MONOTONIC; cpu is CLOCK_THREAD_CPUTIME_ID (this thread's
 * time on a CPU, user + system: not the time spent waiting for one, which
 * on the busy test guest is most of the difference). `first` shows which
 * version of the function answered. Exit status 1 on any error.
 *
 * Built by scripts/build-test-guest with `gcc -static -O2` into /bin.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ns(clockid_t clock) {
    struct timespec ts;
    if (clock_gettime(clock, &ts) != 0) {
        perror("readloop: clock_gettime");
        exit(1);
    }
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: readloop FILE CALLS\n");
        return 1;
    }
    char* end = NULL;
    errno = 0;
    long calls = strtol(argv[2], &end, 10);
    if (errno || *end || calls < 1 || calls > 100000000) {
        fprintf(stderr, "readloop: bad CALLS '%s' (1..100000000)\n", argv[2]);
        return 1;
    }
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "readloop: open %s: %s\n", argv[1], strerror(errno));
        return 1;
    }

    char first[4096];
    ssize_t first_len = pread(fd, first, sizeof first - 1, 0);
    if (first_len < 0) {
        fprintf(stderr, "readloop: pread %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    first[first_len] = '\0';
    first[strcspn(first, "\n")] = '\0';

    char buf[4096];
    double wall0 = now_ns(CLOCK_MONOTONIC), cpu0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
    for (long i = 0; i < calls; ++i) {
        if (pread(fd, buf, sizeof buf, 0) < 0) {
            fprintf(stderr, "readloop: pread %s (call %ld): %s\n", argv[1], i, strerror(errno));
            return 1;
        }
    }
    double cpu1 = now_ns(CLOCK_THREAD_CPUTIME_ID), wall1 = now_ns(CLOCK_MONOTONIC);
    close(fd);

    printf("calls=%ld wall_ns_per_call=%.0f cpu_ns_per_call=%.0f first=%s\n", calls, (wall1 - wall0) / calls,
           (cpu1 - cpu0) / calls, first);
    return 0;
}
