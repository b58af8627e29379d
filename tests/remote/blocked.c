/* A target for tests/remote.rs: two threads blocked in system calls while the tracker attaches
 * and registers (which stops them under ptrace). A thread sleeps 0.6 s in nanosleep (no retry on
 * EINTR: an interrupted sleep shows up as a short one); the main thread reads a line from stdin
 * (an interrupted read shows up as an error). Prints "ready", then "slept S" and "got LINE". */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void *sleeper(void *arg) {
    (void)arg;
    double t0 = now();
    struct timespec ts = { 0, 600 * 1000 * 1000 };
    if (nanosleep(&ts, NULL) != 0) printf("nanosleep: %s\n", strerror(errno));
    printf("slept %.3f\n", now() - t0);
    fflush(stdout);
    return NULL;
}

int main(void) {
    pthread_t t;
    if (pthread_create(&t, NULL, sleeper, NULL) != 0) { perror("pthread_create"); return 1; }
    printf("ready\n");
    fflush(stdout);
    char buf[256];
    ssize_t n = read(0, buf, sizeof buf - 1);
    if (n < 0) printf("got error %s\n", strerror(errno));
    else { buf[n] = 0; buf[strcspn(buf, "\n")] = 0; printf("got %s\n", buf); }
    fflush(stdout);
    pthread_join(t, NULL);
    return 0;
}
