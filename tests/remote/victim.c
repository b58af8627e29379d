/* A target for tests/remote.rs's kill sweeps: the tracker is killed at every ptrace step, and
 * this program must go on unharmed. The main thread (the one the injector borrows) computes in
 * floating point, checking every result (a register or vector state left wrong shows as an
 * error or a crash), and sleeps briefly every 64 rounds (so it is found both in user mode and
 * inside a system call); a second thread answers each line on stdin with
 * "pong ROUNDS ERRORS SIGUSR1S". SIGUSR1 is counted (a handler that must keep running). */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_long rounds, errors, usr1;

static void on_usr1(int sig) {
    (void)sig;
    atomic_fetch_add(&usr1, 1);
}

static void *pinger(void *arg) {
    (void)arg;
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        printf("pong %ld %ld %ld\n", atomic_load(&rounds), atomic_load(&errors), atomic_load(&usr1));
        fflush(stdout);
    }
    return NULL;
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGUSR1, &sa, NULL) != 0) { perror("sigaction"); return 1; }
    pthread_t t;
    if (pthread_create(&t, NULL, pinger, NULL) != 0) { perror("pthread_create"); return 1; }
    printf("ready\n");
    fflush(stdout);
    for (long i = 0;; i++) {
        volatile double seed = (double)(i & 0xffff);
        double x = seed, acc = 0;
        for (int k = 0; k < 2000; k++) acc += x * 0.5 + k;
        double expect = 2000 * x * 0.5 + 1999000.0;
        if (acc != expect) atomic_fetch_add(&errors, 1);
        if (i % 64 == 0) {
            struct timespec ts = { 0, 100 * 1000 };
            nanosleep(&ts, NULL);
        }
        atomic_fetch_add(&rounds, 1);
    }
}
