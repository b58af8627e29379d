/* A target for tests/remote.rs, driven line by line on stdin; it answers each command with one
 * line on stdout.
 *   grow     grows its mapping b in place from L to 2L (the tracker sees a new part), writes 0xbb
 *            on the first new page                                                  -> "ok"
 *   replace  unmaps b and maps a new anonymous mapping with the same bounds, writes 0xcc on its
 *            second page only (the others held 0xaa and now read as zeros)           -> "ok"
 *   move     grows b to 3L, moving it if needed (one mremap: fails on a split mapping)
 *                                                                     -> "ok" or "mremap: ..."
 *   hide     writes 0xdd on b's third page, then makes all of b inaccessible (PROT_NONE; the
 *            contents stay)                                         -> "ok" or "mprotect: ..."
 * Prints "ready ADDR L" when set up (L: 16 pages). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(void) {
    size_t ps = (size_t)sysconf(_SC_PAGESIZE), l = 16 * ps;
    /* Room for 2L after b: reserve 4L, keep L, free the rest. */
    char *r = mmap(NULL, 4 * l, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED) { perror("mmap"); return 1; }
    char *b = mmap(r, l, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (b == MAP_FAILED) { perror("mmap b"); return 1; }
    munmap(r + l, 3 * l);
    memset(b, 0xaa, l);
    size_t len = l;
    printf("ready %lx %zu\n", (unsigned long)b, l);
    fflush(stdout);
    char cmd[64];
    while (fgets(cmd, sizeof cmd, stdin)) {
        if (strncmp(cmd, "grow", 4) == 0) {
            if (mremap(b, len, 2 * l, 0) == MAP_FAILED) { printf("mremap: %s\n", strerror(errno)); fflush(stdout); continue; }
            len = 2 * l;
            b[l] = (char)0xbb;
        } else if (strncmp(cmd, "replace", 7) == 0) {
            munmap(b, len);
            if (mmap(b, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) { perror("mmap again"); return 1; }
            memset(b + ps, 0xcc, ps);
        } else if (strncmp(cmd, "hide", 4) == 0) {
            memset(b + 2 * ps, 0xdd, ps);
            if (mprotect(b, len, PROT_NONE)) { printf("mprotect: %s\n", strerror(errno)); fflush(stdout); continue; }
        } else if (strncmp(cmd, "move", 4) == 0) {
            char *nb = mremap(b, len, 3 * l, MREMAP_MAYMOVE);
            if (nb == MAP_FAILED) { printf("mremap: %s\n", strerror(errno)); fflush(stdout); continue; }
            b = nb;
            len = 3 * l;
        }
        printf("ok\n");
        fflush(stdout);
    }
    return 0;
}
