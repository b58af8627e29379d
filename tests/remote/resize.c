/* A target for tests/remote.rs: resizes and moves one mapping as fast as it can.
 * Each round moves the mapping to a fresh place (mremap MREMAP_FIXED: the tracker must register
 * it again there), then grows it in place a few times (mremap: the kernel extends the mapping).
 * mremap moves only a range that is one mapping: a tracker that registers a range the target
 * has grown meanwhile splits the mapping, and the next move fails here with EFAULT.
 * Usage: resize. Prints "ready" when set up, "rounds N" every 1000 rounds. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#define KIB 1024

int main(void) {
    size_t len = 256 * KIB;
    char *b = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b == MAP_FAILED) { perror("mmap"); return 1; }
    memset(b, 1, len);
    printf("ready\n");
    fflush(stdout);
    for (unsigned long round = 1;; round++) {
        /* A fresh place with room to grow after it: reserve 4 MiB, keep the first part. */
        char *dst = mmap(NULL, 4096 * KIB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (dst == MAP_FAILED) { perror("mmap dst"); return 1; }
        munmap(dst + len, 4096 * KIB - len);
        char *nb = mremap(b, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
        if (nb == MAP_FAILED) { perror("mremap fixed"); return 2; }
        b = nb;
        for (int i = 0; i < 8; i++) {
            size_t nl = len + 64 * KIB;
            nb = mremap(b, len, nl, MREMAP_MAYMOVE);
            if (nb == MAP_FAILED) { perror("mremap grow"); return 3; }
            b = nb;
            len = nl;
            b[len - 1] = (char)round;
        }
        if (len > 2048 * KIB) {
            nb = mremap(b, len, 256 * KIB, 0);
            if (nb == MAP_FAILED) { perror("mremap shrink"); return 4; }
            len = 256 * KIB;
        }
        b[round % len] = (char)round;
        if (round % 1000 == 0) { printf("rounds %lu\n", round); fflush(stdout); }
    }
}
