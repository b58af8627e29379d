/* A target for tests/remote.rs: changes its address space all the time.
 * Every few milliseconds it writes anonymous memory, forks a child that writes (and exits),
 * moves and grows a mapping with mremap, maps new memory and unmaps old memory, replaces a
 * mapping in place (MAP_FIXED), discards pages (MADV_DONTNEED), writes a memfd mapping, and
 * writes memory that it then makes inaccessible or read-only and executable (as a JIT does).
 * Usage: churn [exit-after-ms]   (0 or absent: run until killed). Prints "ready" when set up. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024 * 1024)

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

static void *map(size_t len) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(1); }
    return p;
}

static void scribble(char *p, size_t len, int n) {
    for (int i = 0; i < n; i++) p[next() % len] = (char)next();
}

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
    long exit_after = argc > 1 ? atol(argv[1]) : 0;
    size_t ps = (size_t)sysconf(_SC_PAGESIZE); /* 4 KiB, or 16 KiB on some arm64 kernels */
    size_t a_len = 16 * MIB, b_len = 1 * MIB;
    char *a = map(a_len);
    char *b = map(b_len);
    char *shared = mmap(NULL, MIB, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int mfd = memfd_create("churn", 0);
    if (shared == MAP_FAILED || mfd < 0 || ftruncate(mfd, 2 * MIB)) { perror("setup"); return 1; }
    char *m = mmap(NULL, 2 * MIB, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (m == MAP_FAILED) { perror("mmap memfd"); return 1; }
    memset(a, 1, a_len);
    memset(b, 2, b_len);
    char *d = map(256 * 1024);
    char *c = NULL;
    size_t c_len = 0;
    printf("ready\n");
    fflush(stdout);
    long start = now_ms();
    for (unsigned long iter = 0;; iter++) {
        if (exit_after && now_ms() - start > exit_after) return 0;
        scribble(a, a_len, 200);
        scribble(b, b_len, 20);
        scribble(shared, MIB, 10);
        scribble(m, 2 * MIB, 10);
        switch (iter % 8) {
        case 0: { /* fork: the child writes private and shared memory, then exits */
            pid_t pid = fork();
            if (pid == 0) { scribble(a, a_len, 100); scribble(shared, MIB, 50); _exit(0); }
            if (pid > 0) waitpid(pid, NULL, 0);
            break;
        }
        case 1: { /* mremap: grow (maybe moving) and write the new part */
            size_t nl = b_len < 4 * MIB ? b_len + 64 * 1024 : MIB;
            char *nb = mremap(b, b_len, nl, MREMAP_MAYMOVE);
            if (nb == MAP_FAILED) { perror("mremap"); return 1; }
            b = nb; b_len = nl;
            scribble(b, b_len, 50);
            break;
        }
        case 2: /* new memory, old unmapped */
            if (c) munmap(c, c_len);
            c_len = (1 + next() % 8) * 64 * 1024;
            c = map(c_len);
            scribble(c, c_len, 30);
            break;
        case 3: { /* replace part of a in place with fresh memory, then write it */
            size_t off = (next() % (a_len / ps - 16)) * ps;
            if (mmap(a + off, 16 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) { perror("MAP_FIXED"); return 1; }
            scribble(a + off, 16 * ps, 8);
            break;
        }
        case 4: { /* discard part of a */
            size_t off = (next() % (a_len / ps - 32)) * ps;
            if (madvise(a + off, 32 * ps, MADV_DONTNEED)) { perror("madvise"); return 1; }
            break;
        }
        case 5: { /* move b to a new place */
            char *dst = mmap(NULL, b_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            char *nb = mremap(b, b_len, b_len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
            if (nb == MAP_FAILED) { perror("mremap fixed"); return 1; }
            b = nb;
            break;
        }
        case 6: /* write, then make inaccessible (contents kept) */
            mprotect(d, 256 * 1024, PROT_READ | PROT_WRITE);
            scribble(d, 256 * 1024, 20);
            mprotect(d, 256 * 1024, PROT_NONE);
            break;
        case 7: /* write, then make read-only and executable */
            mprotect(d, 256 * 1024, PROT_READ | PROT_WRITE);
            scribble(d, 256 * 1024, 20);
            mprotect(d, 256 * 1024, PROT_READ | PROT_EXEC);
            break;
        }
        usleep(1000);
    }
}
