/*
 * checkpoint.c: the dirtytrack C API in one small program.
 *
 * Creates a tracker, maps a region, registers it, writes some pages, collects, prints the dirty
 * runs and checks that exactly the written pages were reported. Two rounds, so the second shows
 * that a collect resets the pages it reported. Exit code 0 on success, 1 on any failure.
 *
 * Build against the installed library (scripts/check-capi does this too):
 *   make -C capi install PREFIX=$HOME/.local
 *   export PKG_CONFIG_PATH=$HOME/.local/lib/pkgconfig LD_LIBRARY_PATH=$HOME/.local/lib
 *   cc -Wall -Wextra -Werror capi/examples/checkpoint.c $(pkg-config --cflags --libs dirtytrack) \
 *      -o checkpoint
 */
#include "dirtytrack.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#define PAGES 64

static int failed = 0;

/* Reports a failed call with the library's explanation and jumps to cleanup. */
#define CHECK(call)                                                                            \
    do {                                                                                       \
        dt_status st_ = (call);                                                                \
        if (st_ != DT_OK) {                                                                    \
            fprintf(stderr, "checkpoint: %s failed: %s: %s\n", #call, dt_status_name(st_),      \
                    dt_last_error_message());                                                  \
            failed = 1;                                                                        \
            goto out;                                                                          \
        }                                                                                      \
    } while (0)

/* Prints the runs of `set` and checks its pages against `want` (one flag per page of `base`). */
static int verify(const dt_dirty_set *set, const char *base, size_t ps, const int *want) {
    int seen[PAGES] = {0};
    int ok = 1;
    size_t len = 0, nruns = 0;
    if (dt_dirty_set_len(set, &len) != DT_OK || dt_dirty_set_run_count(set, &nruns) != DT_OK) {
        fprintf(stderr, "checkpoint: reading the set failed: %s\n", dt_last_error_message());
        return 0;
    }
    printf("  %zu dirty pages in %zu runs:\n", len, nruns);

    /* Runs, through a small buffer: each call resumes at index i. */
    dt_run runs[4];
    size_t n = 0;
    for (size_t i = 0; dt_dirty_set_runs(set, i, runs, 4, &n) == DT_OK && n > 0; i += n) {
        for (size_t k = 0; k < n; k++) {
            size_t first = (runs[k].start - (uintptr_t)base) / ps;
            printf("    pages %2zu..%2zu  (%#lx, %zu bytes)\n", first, first + runs[k].len / ps - 1,
                   (unsigned long)runs[k].start, runs[k].len);
        }
    }

    /* Pages, one by one. */
    uintptr_t pages[8];
    size_t total = 0;
    for (size_t i = 0; dt_dirty_set_pages(set, i, pages, 8, &n) == DT_OK && n > 0; i += n) {
        for (size_t k = 0; k < n; k++) {
            uintptr_t off = pages[k] - (uintptr_t)base;
            if (pages[k] < (uintptr_t)base || off / ps >= PAGES) {
                fprintf(stderr, "checkpoint: page %#lx is outside the region\n",
                        (unsigned long)pages[k]);
                ok = 0;
                continue;
            }
            seen[off / ps] = 1;
            total++;
        }
    }
    if (total != len) {
        fprintf(stderr, "checkpoint: iterated %zu pages, dt_dirty_set_len says %zu\n", total, len);
        ok = 0;
    }
    for (size_t p = 0; p < PAGES; p++) {
        bool dirty = false;
        if (dt_dirty_set_contains(set, (uintptr_t)(base + p * ps), &dirty) != DT_OK) {
            ok = 0;
        }
        if (seen[p] != want[p] || (int)dirty != want[p]) {
            fprintf(stderr, "checkpoint: page %zu: written %d, reported %d (contains %d)\n", p,
                    want[p], seen[p], (int)dirty);
            ok = 0;
        }
    }
    return ok;
}

int main(void) {
    const size_t ps = dt_page_size();
    const size_t len = PAGES * ps;
    dt_tracker *t = NULL;
    dt_dirty_set *dirty = NULL;
    uint64_t id = 0;
    dt_mode mode;

    char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("checkpoint: mmap");
        return 1;
    }
    memset(mem, 0xaa, len); /* the "full dump" state: every page populated */

    CHECK(dt_tracker_new(&t));
    CHECK(dt_tracker_mode(t, &mode));
    printf("tracker in %s mode, page size %zu\n", mode == DT_MODE_ASYNC ? "async" : "sync", ps);
    CHECK(dt_tracker_register(t, mem, len, &id));
    printf("registered %zu pages at %p as range %llu\n", (size_t)PAGES, (void *)mem,
           (unsigned long long)id);

    /* Round 1: write pages 0-2, 10, 20-21 and 63 (one byte each, or a whole page). */
    int want1[PAGES] = {0};
    const int round1[] = {0, 1, 2, 10, 20, 21, 63};
    for (size_t i = 0; i < sizeof round1 / sizeof round1[0]; i++) {
        mem[round1[i] * ps + 17] = 1;
        want1[round1[i]] = 1;
    }
    memset(mem + 21 * ps, 2, ps);
    CHECK(dt_tracker_collect(t, &dirty));
    printf("collect 1:\n");
    if (!verify(dirty, mem, ps, want1)) {
        failed = 1;
    }
    CHECK(dt_dirty_set_free(dirty));
    dirty = NULL;

    /* Round 2: only what was written since collect 1 is reported. */
    int want2[PAGES] = {0};
    const int round2[] = {2, 3, 40};
    for (size_t i = 0; i < sizeof round2 / sizeof round2[0]; i++) {
        mem[round2[i] * ps] ^= 0x55;
        want2[round2[i]] = 1;
    }
    CHECK(dt_tracker_collect(t, &dirty));
    printf("collect 2:\n");
    if (!verify(dirty, mem, ps, want2)) {
        failed = 1;
    }

    CHECK(dt_tracker_unregister(t, id));

out:
    dt_dirty_set_free(dirty); /* NULL is fine */
    dt_tracker_free(t);
    munmap(mem, len);
    if (dt_open_handles() != 0) {
        fprintf(stderr, "checkpoint: %zu handles leaked\n", dt_open_handles());
        failed = 1;
    }
    printf("checkpoint: %s\n", failed ? "FAILED" : "ok, exactly the written pages were reported");
    return failed ? 1 : 0;
}
