/*
 * readloop: the per-call cost of reading a /proc file from user space, for
 * bench/patch_bench (how much a live patch's redirection adds to the
 * patched function: /proc/cmdline is cmdline_proc_show, example patch 1).
 *
 *   readloop FILE CALLS [ROUNDS]
 *
 * Opens FILE once, then, ROUNDS times (default 1), pread()s it at offset 0
 * CALLS times (each pread at offset 0 makes seq_file run the file's show
 * function again), and prints one line, in ns per call:
 *
 *   calls=N rounds=R best_wall_ns=B mean_wall_ns=W mean_cpu_ns=C first=<line>
 *
 * best: the fastest round by CLOCK_MONOTONIC, the one least disturbed by
 * other tasks and the host's load (many short rounds make an undisturbed one
 * likely). mean: over all rounds; cpu is CLOCK_THREAD_CPUTIME_ID (this
 * thread's time on a CPU, user + system, not the time waiting for one). The
 * CPU clock is only taken over the whole run: under TCG the test guest finds
 * its TSC unstable and its scheduler clock may advance a tick (4 ms) at a
 * time, too coarse for one short round. `first` is the first line read: which
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
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: readloop FILE CALLS [ROUNDS]\n");
        return 1;
    }
    char* end = NULL;
    errno = 0;
    long calls = strtol(argv[2], &end, 10);
    if (errno || *end || calls < 1 || calls > 100000000) {
        fprintf(stderr, "readloop: bad CALLS '%s' (1..100000000)\n", argv[2]);
        return 1;
    }
    long rounds = 1;
    if (argc == 4) {
        errno = 0;
        rounds = strtol(argv[3], &end, 10);
        if (errno || *end || rounds < 1 || rounds > 1000) {
            fprintf(stderr, "readloop: bad ROUNDS '%s' (1..1000)\n", argv[3]);
            return 1;
        }
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
    double best_wall = -1, total_wall = 0;
    double cpu_start = now_ns(CLOCK_THREAD_CPUTIME_ID);
    for (long round = 0; round < rounds; ++round) {
        double wall0 = now_ns(CLOCK_MONOTONIC);
        for (long i = 0; i < calls; ++i) {
            if (pread(fd, buf, sizeof buf, 0) < 0) {
                fprintf(stderr, "readloop: pread %s (call %ld): %s\n", argv[1], i, strerror(errno));
                return 1;
            }
        }
        double wall = now_ns(CLOCK_MONOTONIC) - wall0;
        total_wall += wall;
        if (best_wall < 0 || wall < best_wall) best_wall = wall;
    }
    double cpu = now_ns(CLOCK_THREAD_CPUTIME_ID) - cpu_start;
    close(fd);

    double all_calls = (double)calls * rounds;
    printf("calls=%ld rounds=%ld best_wall_ns=%.0f mean_wall_ns=%.0f mean_cpu_ns=%.0f first=%s\n", calls, rounds,
           best_wall / calls, total_wall / all_calls, cpu / all_calls, first);
    return 0;
}
