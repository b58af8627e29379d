/* A target for tests/remote.rs: resizes and moves one mapping as fast as it can.
 * Each round moves the mapping to a fresh place (mremap MREMAP_FIXED: the tracker must register
 * it again there), then grows it in place a few times (mremap: the kernel extends the mapping).
 * mremap moves only a range that is one mapping: a tracker that registers a range the target
 * has grown meanwhile splits the mapping, and the next move fails here with EFAULT.
 * Usage: resize. Prints "ready" when set up, "rounds N" every 1000 rounds. On a failed call it
 * prints the mappings near the moving one (all of them with RESIZE_ALL set), with VmFlags ("uw":
 * registered), and its last 16 calls. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define KIB 1024

/* The last calls, printed on failure. */
static struct { const char *op; void *addr; size_t old, new; void *ret; } hist[16];
static unsigned nhist;
static void *note(const char *op, void *addr, size_t old, size_t new, void *ret) {
    hist[nhist % 16].op = op; hist[nhist % 16].addr = addr; hist[nhist % 16].old = old;
    hist[nhist % 16].new = new; hist[nhist % 16].ret = ret; nhist++;
    return ret;
}

/* On failure: the mappings near [b, b + len) from /proc/self/smaps, with their VmFlags (a split
 * shows as two lines, "uw" on one part only). */
static void show(const char *what, char *b, size_t len) {
    fprintf(stderr, "%s: %p..%p (%zu KiB)\n", what, (void *)b, (void *)(b + len), len / KIB);
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return;
    char line[512];
    int near = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long s, e;
        if (sscanf(line, "%lx-%lx ", &s, &e) == 2) {
            near = getenv("RESIZE_ALL") || (e > (unsigned long)b - 4096 * KIB && s < (unsigned long)b + len + 4096 * KIB);
            if (near) fprintf(stderr, "  %s", line);
        } else if (near && strncmp(line, "VmFlags:", 8) == 0) {
            fprintf(stderr, "    %s", line);
        }
    }
    fclose(f);
    for (unsigned i = nhist > 16 ? nhist - 16 : 0; i < nhist; i++)
        fprintf(stderr, "  #%u %s(%p, %zu KiB, %zu KiB) = %p\n", i, hist[i % 16].op,
                hist[i % 16].addr, hist[i % 16].old / KIB, hist[i % 16].new / KIB, hist[i % 16].ret);
}

int main(void) {
    size_t len = 256 * KIB;
    char *b = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b == MAP_FAILED) { perror("mmap"); return 1; }
    memset(b, 1, len);
    printf("ready\n");
    fflush(stdout);
    for (unsigned long round = 1;; round++) {
        /* A fresh place with room to grow after it: reserve 4 MiB, keep the first part. */
        char *dst = note("mmap", NULL, 0, 4096 * KIB, mmap(NULL, 4096 * KIB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        if (dst == MAP_FAILED) { perror("mmap dst"); return 1; }
        note("munmap", dst + len, 4096 * KIB - len, 0, (void *)(long)munmap(dst + len, 4096 * KIB - len));
        char *nb = note("mremap fixed", b, len, len, mremap(b, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst));
        if (nb == MAP_FAILED) { perror("mremap fixed"); show("mremap fixed", b, len); return 2; }
        b = nb;
        for (int i = 0; i < 8; i++) {
            size_t nl = len + 64 * KIB;
            nb = note("mremap grow", b, len, nl, mremap(b, len, nl, MREMAP_MAYMOVE));
            if (nb == MAP_FAILED) { perror("mremap grow"); show("mremap grow", b, len); return 3; }
            b = nb;
            len = nl;
            b[len - 1] = (char)round;
        }
        if (len > 2048 * KIB) {
            nb = note("mremap shrink", b, len, 256 * KIB, mremap(b, len, 256 * KIB, 0));
            if (nb == MAP_FAILED) { perror("mremap shrink"); show("mremap shrink", b, len); return 4; }
            len = 256 * KIB;
        }
        b[round % len] = (char)round;
        if (round % 1000 == 0) { printf("rounds %lu\n", round); fflush(stdout); }
    }
}
