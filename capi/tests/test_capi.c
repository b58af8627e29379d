/*
 * test_capi.c: tests of the dirtytrack C API, normal use and every error path a C program can
 * reach. Run by scripts/check-capi natively, under valgrind and under AddressSanitizer, linked
 * with the test library (feature `testing`: it has the dt__test_* hooks).
 *
 * Exit code: 0 if every check passed, 1 otherwise, 77 if this machine cannot create any tracker
 * (no userfaultfd: permissions or kernel), so there is nothing to test.
 *
 * Environment: DT_TEST_VALGRIND=1 skips the checks that block a thread until the tracker's
 * monitor thread reacts, which deadlock under valgrind: valgrind runs one guest thread at a time
 * and keeps its lock while a thread sits in a page fault or in munmap/madvise, so the monitor
 * never gets to run. Skipped: writes to sync-mode memory (a userfaultfd write fault), and munmap
 * or MADV_DONTNEED of registered memory (UFFD_EVENT_UNMAP / UFFD_EVENT_REMOVE wait for the
 * monitor), i.e. the range-lost and poisoned-tracker checks; and the dt_remote checks against a
 * fork child (attach, adopt under ptrace), since the child is a valgrind guest too.
 * scripts/check-capi runs the whole test natively and under AddressSanitizer as well; an ASan
 * build skips the dt_remote checks against a child (its instrumented child has TiB-sized shadow
 * mappings, which a remote collect reports whole), keeping their error paths.
 */
#define _GNU_SOURCE
#include "dirtytrack.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Test hooks: only in the library built with the capi crate's `testing` feature, not in the
 * header. */
dt_status dt__test_panic(void);
dt_status dt__test_poison(dt_tracker *t);

static int failures = 0;
static int checks = 0;
static size_t PS;

#define EXPECT(call, want)                                                                         \
    do {                                                                                           \
        dt_status got_ = (call);                                                                   \
        checks++;                                                                                  \
        if (got_ != (want)) {                                                                      \
            fprintf(stderr, "FAIL %s:%d: %s\n  returned %s, expected %s\n  message: %s\n",         \
                    __FILE__, __LINE__, #call, dt_status_name(got_), dt_status_name(want),         \
                    dt_last_error_message());                                                      \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

#define OK(call) EXPECT(call, DT_OK)

#define ASSERT(cond)                                                                               \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                        \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* The last error message starts with `prefix` (messages start with the function called). */
#define MESSAGE_STARTS(prefix)                                                                     \
    do {                                                                                           \
        checks++;                                                                                  \
        if (strncmp(dt_last_error_message(), (prefix), strlen(prefix)) != 0) {                     \
            fprintf(stderr, "FAIL %s:%d: message \"%s\" does not start with \"%s\"\n", __FILE__,  \
                    __LINE__, dt_last_error_message(), (prefix));                                  \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* The last error message contains `needle`. */
#define MESSAGE_HAS(needle)                                                                        \
    do {                                                                                           \
        checks++;                                                                                  \
        if (strstr(dt_last_error_message(), (needle)) == NULL) {                                   \
            fprintf(stderr, "FAIL %s:%d: message \"%s\" lacks \"%s\"\n", __FILE__, __LINE__,       \
                    dt_last_error_message(), (needle));                                            \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static void section(const char *name) {
    if (getenv("DT_TEST_DEBUG")) printf("    (open handles: %zu)\n", dt_open_handles());
    printf("  - %s\n", name);
    fflush(stdout);
}

static char *map(size_t pages) {
    char *p = mmap(NULL, pages * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    memset(p, 0x11, pages * PS);
    return p;
}

static size_t set_len(const dt_dirty_set *s) {
    size_t n = (size_t)-1;
    OK(dt_dirty_set_len(s, &n));
    return n;
}

static bool has(const dt_dirty_set *s, const void *addr) {
    bool b = false;
    OK(dt_dirty_set_contains(s, (uintptr_t)addr, &b));
    return b;
}

/* ------------------------------------------------------------------------------------------- */

static void test_statics(void) {
    section("status names, page size, last error message");
    ASSERT(strcmp(dt_status_name(DT_OK), "DT_OK") == 0);
    ASSERT(strcmp(dt_status_name(DT_ERR_NOT_MAPPED), "DT_ERR_NOT_MAPPED") == 0);
    ASSERT(strcmp(dt_status_name(DT_ERR_BUFFER_TOO_SMALL), "DT_ERR_BUFFER_TOO_SMALL") == 0);
    ASSERT(strcmp(dt_status_name(12345), "DT_ERR_UNKNOWN_CODE") == 0);
    ASSERT(PS >= 4096 && (PS & (PS - 1)) == 0);
    ASSERT(dt_last_error_message() != NULL);

    section("a panic inside the library becomes DT_ERR_PANIC");
    EXPECT(dt__test_panic(), DT_ERR_PANIC);
    MESSAGE_STARTS("dt__test_panic: internal error");
    MESSAGE_HAS("panic");
    MESSAGE_HAS("dt__test_panic was called");
    /* Like errno: successful calls keep the last failure's message ... */
    dt_dirty_set *s = NULL;
    OK(dt_dirty_set_new(&s));
    OK(dt_dirty_set_free(s));
    OK(dt_dirty_set_free(NULL));
    MESSAGE_HAS("dt__test_panic was called");
    /* ... and the next failing call replaces it. */
    EXPECT(dt_dirty_set_free(s), DT_ERR_INVALID_HANDLE);
    MESSAGE_STARTS("dt_dirty_set_free: ");
    MESSAGE_HAS("already freed");
    ASSERT(strstr(dt_last_error_message(), "dt__test_panic") == NULL);
}

static void test_probe_report(void) {
    section("dt_capabilities_probe_report: size query, full buffer, truncation, NULL buffer");
    size_t need = 0;
    EXPECT(dt_capabilities_probe_report(NULL, 0, &need), DT_ERR_BUFFER_TOO_SMALL);
    MESSAGE_HAS("call again with at least");
    ASSERT(need > 20);
    char *buf = malloc(need);
    OK(dt_capabilities_probe_report(buf, need, NULL));
    ASSERT(strlen(buf) == need - 1);
    ASSERT(strstr(buf, "async mode") != NULL && strstr(buf, "sync mode") != NULL);
    char small[8];
    size_t need2 = 0;
    EXPECT(dt_capabilities_probe_report(small, sizeof small, &need2), DT_ERR_BUFFER_TOO_SMALL);
    ASSERT(strlen(small) == sizeof small - 1 && strncmp(small, buf, sizeof small - 1) == 0);
    ASSERT(need2 == need);
    EXPECT(dt_capabilities_probe_report(NULL, 16, NULL), DT_ERR_NULL);
    free(buf);
}

static void test_tracker_creation(void) {
    section("tracker creation: NULL out, invalid modes");
    EXPECT(dt_tracker_new(NULL), DT_ERR_NULL);
    dt_tracker *t = (dt_tracker *)0x1;
    EXPECT(dt_tracker_new_with_mode(7, &t), DT_ERR_INVALID_ARGUMENT);
    ASSERT(t == NULL);
    MESSAGE_STARTS("dt_tracker_new_with_mode: 7 is not a dt_mode");
    EXPECT(dt_tracker_new_with_mode(-1, &t), DT_ERR_INVALID_ARGUMENT);
}

static void test_handles(dt_tracker *t) {
    section("NULL, garbage, wrong-type and misaligned arguments");
    uint64_t id = 0;
    char *mem = map(4);
    dt_dirty_set *set = NULL;
    dt_mode mode;

    EXPECT(dt_tracker_register(NULL, mem, PS, &id), DT_ERR_NULL);
    MESSAGE_STARTS("dt_tracker_register: ");
    MESSAGE_HAS("dt_tracker handle is NULL");
    EXPECT(dt_tracker_mode(NULL, &mode), DT_ERR_NULL);
    EXPECT(dt_tracker_collect(NULL, &set), DT_ERR_NULL);
    ASSERT(set == NULL);
    EXPECT(dt_tracker_clear(NULL), DT_ERR_NULL);
    size_t len = 0;
    EXPECT(dt_dirty_set_len(NULL, &len), DT_ERR_NULL);

    /* Garbage handles: never dereferenced, reported as invalid. */
    dt_tracker *garbage = (dt_tracker *)(uintptr_t)0xdeadbeef;
    EXPECT(dt_tracker_register(garbage, mem, PS, &id), DT_ERR_INVALID_HANDLE);
    MESSAGE_HAS("is not a live dt_tracker handle");
    int on_stack = 0;
    EXPECT(dt_tracker_clear((dt_tracker *)&on_stack), DT_ERR_INVALID_HANDLE);
    EXPECT(dt_tracker_free((dt_tracker *)mem), DT_ERR_INVALID_HANDLE);
    EXPECT(dt_dirty_set_free((dt_dirty_set *)(uintptr_t)0x1234567), DT_ERR_INVALID_HANDLE);
    EXPECT(dt_live_copy_free((dt_live_copy *)(uintptr_t)-1), DT_ERR_INVALID_HANDLE);
    EXPECT(dt_live_snapshot_free((dt_live_snapshot *)&on_stack), DT_ERR_INVALID_HANDLE);

    /* A handle of another type. */
    OK(dt_dirty_set_new(&set));
    EXPECT(dt_tracker_clear((dt_tracker *)set), DT_ERR_INVALID_HANDLE);
    MESSAGE_HAS("is a dt_dirty_set, not a dt_tracker");
    EXPECT(dt_dirty_set_free((dt_dirty_set *)t), DT_ERR_INVALID_HANDLE);
    MESSAGE_HAS("is a dt_tracker, not a dt_dirty_set");
    OK(dt_tracker_mode(t, &mode)); /* still alive after the wrong-type free */

    /* NULL out-parameters and buffers. */
    EXPECT(dt_tracker_register(t, mem, PS, NULL), DT_ERR_NULL);
    MESSAGE_HAS("out_range_id is NULL");
    EXPECT(dt_tracker_mode(t, NULL), DT_ERR_NULL);
    EXPECT(dt_tracker_collect(t, NULL), DT_ERR_NULL);
    EXPECT(dt_dirty_set_len(set, NULL), DT_ERR_NULL);
    EXPECT(dt_dirty_set_contains(set, 0, NULL), DT_ERR_NULL);
    size_t n = 99;
    EXPECT(dt_dirty_set_pages(set, 0, NULL, 4, &n), DT_ERR_NULL);
    EXPECT(dt_dirty_set_pages(set, 0, NULL, 0, NULL), DT_ERR_NULL);
    OK(dt_dirty_set_pages(set, 0, NULL, 0, &n)); /* cap 0: NULL buffer is fine */
    ASSERT(n == 0);
    EXPECT(dt_dirty_set_runs(set, 0, NULL, 1, &n), DT_ERR_NULL);

    /* Misaligned out-parameters are refused, not written. */
    uint64_t words[3] = {0, 0, 0};
    uint64_t *misaligned = (uint64_t *)((char *)words + 1);
    EXPECT(dt_tracker_register(t, mem, PS, misaligned), DT_ERR_INVALID_ARGUMENT);
    MESSAGE_HAS("not aligned");
    uintptr_t pages[4];
    EXPECT(dt_dirty_set_pages(set, 0, (uintptr_t *)((char *)pages + 2), 2, &n),
           DT_ERR_INVALID_ARGUMENT);
    ASSERT(words[0] == 0 && words[1] == 0);

    OK(dt_dirty_set_free(set));
    munmap(mem, 4 * PS);
}

static void test_register_errors(dt_tracker *t) {
    section("register: unaligned, zero, overflow, unmapped, overlap");
    char *mem = map(8);
    uint64_t id = 1234, id2 = 0;

    EXPECT(dt_tracker_register(t, mem + 1, PS, &id), DT_ERR_UNALIGNED);
    ASSERT(id == 0); /* set to 0 on failure */
    MESSAGE_STARTS("dt_tracker_register: address 0x");
    MESSAGE_HAS("is not a multiple of the page size");
    EXPECT(dt_tracker_register(t, mem, PS + 1, &id), DT_ERR_UNALIGNED);
    MESSAGE_HAS("length");
    EXPECT(dt_tracker_register(t, mem, 0, &id), DT_ERR_ZERO_LENGTH);
    MESSAGE_HAS("has length 0");
    void *top = (void *)(uintptr_t)(UINTPTR_MAX - PS + 1);
    EXPECT(dt_tracker_register(t, top, 2 * PS, &id), DT_ERR_ADDRESS_OVERFLOW);
    MESSAGE_HAS("overflows the address space");

    /* A hole in the middle. */
    munmap(mem + 4 * PS, PS);
    EXPECT(dt_tracker_register(t, mem, 8 * PS, &id), DT_ERR_NOT_MAPPED);
    MESSAGE_HAS("is not fully mapped");
    MESSAGE_HAS("map the whole range before calling dt_tracker_register");
    EXPECT(dt_tracker_register(t, mem + 4 * PS, PS, &id), DT_ERR_NOT_MAPPED);

    /* Overlap with a registered range. */
    OK(dt_tracker_register(t, mem, 4 * PS, &id));
    ASSERT(id != 0);
    EXPECT(dt_tracker_register(t, mem + 2 * PS, 2 * PS, &id2), DT_ERR_OVERLAP);
    MESSAGE_HAS("overlaps range ");
    {
        char fix[64];
        snprintf(fix, sizeof fix, "dt_tracker_unregister(t, %llu)", (unsigned long long)id);
        MESSAGE_HAS(fix);
    }
    EXPECT(dt_tracker_register(t, mem, 4 * PS, &id2), DT_ERR_OVERLAP);
    OK(dt_tracker_register(t, mem + 5 * PS, 3 * PS, &id2)); /* the part after the hole */
    ASSERT(id2 != id && id2 != 0);

    dt_range_info info;
    OK(dt_tracker_range(t, id, &info));
    ASSERT(info.id == id && info.addr == (uintptr_t)mem && info.len == 4 * PS && !info.lost);
    ASSERT(info.registered_addr == (uintptr_t)mem);
    EXPECT(dt_tracker_range(t, id, NULL), DT_ERR_NULL);

    OK(dt_tracker_unregister(t, id));
    OK(dt_tracker_unregister(t, id2));
    munmap(mem, 8 * PS);
}

static void test_unknown_ranges(dt_tracker *t) {
    section("unknown range ids");
    dt_dirty_set *s = (dt_dirty_set *)0x1;
    dt_range_info info;
    EXPECT(dt_tracker_unregister(t, 0), DT_ERR_UNKNOWN_RANGE);
    MESSAGE_STARTS("dt_tracker_unregister: range 0 is not registered with this tracker");
    MESSAGE_HAS("dt_tracker_ranges lists them");
    ASSERT(strstr(dt_last_error_message(), "RangeId") == NULL);
    EXPECT(dt_tracker_unregister(t, 987654), DT_ERR_UNKNOWN_RANGE);
    EXPECT(dt_tracker_collect_range(t, 987654, &s), DT_ERR_UNKNOWN_RANGE);
    MESSAGE_STARTS("dt_tracker_collect_range: range 987654 ");
    ASSERT(s == NULL);
    EXPECT(dt_tracker_peek_range(t, 987654, &s), DT_ERR_UNKNOWN_RANGE);
    EXPECT(dt_tracker_clear_range(t, 987654), DT_ERR_UNKNOWN_RANGE);
    EXPECT(dt_tracker_range(t, 987654, &info), DT_ERR_UNKNOWN_RANGE);

    /* An id that was valid once. */
    char *mem = map(2);
    uint64_t id = 0;
    OK(dt_tracker_register(t, mem, 2 * PS, &id));
    OK(dt_tracker_unregister(t, id));
    EXPECT(dt_tracker_unregister(t, id), DT_ERR_UNKNOWN_RANGE);
    EXPECT(dt_tracker_clear_range(t, id), DT_ERR_UNKNOWN_RANGE);
    munmap(mem, 2 * PS);
}

static void test_tracking(dt_tracker *t) {
    section("collect, peek, clear, and their per-range forms");
    char *a = map(16), *b = map(8);
    uint64_t ia = 0, ib = 0;
    dt_dirty_set *s = NULL;
    OK(dt_tracker_register(t, a, 16 * PS, &ia));
    OK(dt_tracker_register(t, b, 8 * PS, &ib));

    /* Nothing written yet. */
    OK(dt_tracker_collect(t, &s));
    ASSERT(set_len(s) == 0);
    OK(dt_dirty_set_free(s));

    a[0] = 1;
    a[5 * PS + 3] = 1;
    b[7 * PS] = 1;
    /* peek does not reset. */
    OK(dt_tracker_peek(t, &s));
    ASSERT(set_len(s) == 3 && has(s, a) && has(s, a + 5 * PS + 100) && has(s, b + 7 * PS));
    ASSERT(!has(s, a + PS) && !has(s, b));
    OK(dt_dirty_set_free(s));
    OK(dt_tracker_peek_range(t, ib, &s));
    ASSERT(set_len(s) == 1 && has(s, b + 7 * PS));
    OK(dt_dirty_set_free(s));

    /* collect_range resets only its range. */
    OK(dt_tracker_collect_range(t, ia, &s));
    ASSERT(set_len(s) == 2 && has(s, a) && !has(s, b + 7 * PS));
    OK(dt_dirty_set_free(s));
    OK(dt_tracker_collect(t, &s));
    ASSERT(set_len(s) == 1 && has(s, b + 7 * PS));
    OK(dt_dirty_set_free(s));

    /* clear and clear_range. */
    a[PS] = 2;
    b[PS] = 2;
    OK(dt_tracker_clear_range(t, ib));
    OK(dt_tracker_peek(t, &s));
    ASSERT(set_len(s) == 1 && has(s, a + PS));
    OK(dt_dirty_set_free(s));
    OK(dt_tracker_clear(t));
    OK(dt_tracker_collect(t, &s));
    ASSERT(set_len(s) == 0);
    OK(dt_dirty_set_free(s));

    /* Runs coalesce within a range. */
    for (int p = 3; p < 9; p++) {
        a[p * PS] = 3;
    }
    a[12 * PS] = 3;
    OK(dt_tracker_collect(t, &s));
    size_t nruns = 0, n = 0;
    OK(dt_dirty_set_run_count(s, &nruns));
    ASSERT(nruns == 2);
    dt_run runs[4];
    OK(dt_dirty_set_runs(s, 0, runs, 4, &n));
    ASSERT(n == 2);
    ASSERT(runs[0].start == (uintptr_t)(a + 3 * PS) && runs[0].len == 6 * PS);
    ASSERT(runs[1].start == (uintptr_t)(a + 12 * PS) && runs[1].len == PS);
    OK(dt_dirty_set_free(s));

    OK(dt_tracker_unregister(t, ia));
    OK(dt_tracker_unregister(t, ib));
    munmap(a, 16 * PS);
    munmap(b, 8 * PS);
}

static void test_iteration(dt_tracker *t) {
    section("page and run iteration with every buffer size, resume indices, end of set");
    enum { N = 300 };
    char *mem = map(N);
    uint64_t id = 0;
    int want[N] = {0};
    size_t expect_pages = 0;
    OK(dt_tracker_register(t, mem, N * PS, &id));
    for (int p = 0; p < N; p++) {
        if (p % 7 == 0 || (p >= 100 && p < 170) || p == N - 1) {
            mem[p * PS] = 9;
            want[p] = 1;
            expect_pages++;
        }
    }
    dt_dirty_set *s = NULL;
    OK(dt_tracker_collect(t, &s));
    ASSERT(set_len(s) == expect_pages);

    const size_t caps[] = {1, 2, 3, 5, 64, 1000};
    for (size_t c = 0; c < sizeof caps / sizeof caps[0]; c++) {
        size_t cap = caps[c], n = 0, total = 0;
        uintptr_t *buf = malloc(cap * sizeof *buf);
        uintptr_t prev = 0;
        int ok = 1;
        for (size_t i = 0; dt_dirty_set_pages(s, i, buf, cap, &n) == DT_OK && n > 0; i += n) {
            ASSERT(n <= cap);
            for (size_t k = 0; k < n; k++) {
                size_t p = (buf[k] - (uintptr_t)mem) / PS;
                ok &= p < N && want[p] && buf[k] > prev;
                prev = buf[k];
            }
            total += n;
        }
        ASSERT(ok && total == expect_pages);
        free(buf);

        /* Runs rebuilt into pages must give the same set. */
        dt_run *rbuf = malloc(cap * sizeof *rbuf);
        size_t rpages = 0;
        for (size_t i = 0; dt_dirty_set_runs(s, i, rbuf, cap, &n) == DT_OK && n > 0; i += n) {
            for (size_t k = 0; k < n; k++) {
                ASSERT(rbuf[k].len % PS == 0 && rbuf[k].len > 0);
                rpages += rbuf[k].len / PS;
            }
        }
        ASSERT(rpages == expect_pages);
        free(rbuf);
    }

    /* Past the end: nothing, not an error. */
    uintptr_t one;
    size_t n = 7;
    OK(dt_dirty_set_pages(s, expect_pages, &one, 1, &n));
    ASSERT(n == 0);
    OK(dt_dirty_set_pages(s, (size_t)-1, &one, 1, &n));
    ASSERT(n == 0);
    dt_run r;
    OK(dt_dirty_set_runs(s, 1u << 30, &r, 1, &n));
    ASSERT(n == 0);
    /* Resume in the middle of a run: page 100 + 5 is dirty page index... find it by address. */
    size_t idx = 0;
    for (int p = 0; p < 105; p++) {
        idx += want[p];
    }
    OK(dt_dirty_set_pages(s, idx, &one, 1, &n));
    ASSERT(n == 1 && one == (uintptr_t)(mem + 105 * PS));

    OK(dt_dirty_set_free(s));
    OK(dt_tracker_unregister(t, id));
    munmap(mem, N * PS);
}

static void test_sets(dt_tracker *t) {
    section("dirty sets: union (also with itself), empty sets, double free");
    char *mem = map(32);
    uint64_t id = 0;
    OK(dt_tracker_register(t, mem, 32 * PS, &id));
    dt_dirty_set *a = NULL, *b = NULL, *acc = NULL;
    mem[0] = 1;
    mem[10 * PS] = 1;
    OK(dt_tracker_collect(t, &a));
    mem[10 * PS] = 2;
    mem[20 * PS] = 2;
    OK(dt_tracker_collect(t, &b));

    OK(dt_dirty_set_new(&acc));
    ASSERT(set_len(acc) == 0);
    OK(dt_dirty_set_union(acc, a));
    ASSERT(set_len(acc) == 2);
    size_t nr = 0;
    OK(dt_dirty_set_run_count(acc, &nr)); /* builds the run table ... */
    ASSERT(nr == 2);
    OK(dt_dirty_set_union(acc, b)); /* ... which the union invalidates */
    ASSERT(set_len(acc) == 3 && has(acc, mem) && has(acc, mem + 10 * PS) && has(acc, mem + 20 * PS));
    OK(dt_dirty_set_run_count(acc, &nr));
    ASSERT(nr == 3);
    OK(dt_dirty_set_union(acc, acc));
    ASSERT(set_len(acc) == 3);
    OK(dt_dirty_set_union(b, a)); /* the other direction */
    ASSERT(set_len(b) == 3 && set_len(a) == 2);
    EXPECT(dt_dirty_set_union(NULL, a), DT_ERR_NULL);
    EXPECT(dt_dirty_set_union(acc, NULL), DT_ERR_NULL);
    EXPECT(dt_dirty_set_union(acc, (dt_dirty_set *)t), DT_ERR_INVALID_HANDLE);

    OK(dt_dirty_set_free(a));
    EXPECT(dt_dirty_set_free(a), DT_ERR_INVALID_HANDLE); /* double free detected */
    MESSAGE_HAS("already freed");
    EXPECT(dt_dirty_set_len(a, &nr), DT_ERR_INVALID_HANDLE); /* use after free detected */
    EXPECT(dt_dirty_set_union(acc, a), DT_ERR_INVALID_HANDLE);
    OK(dt_dirty_set_free(NULL));
    OK(dt_dirty_set_free(b));
    OK(dt_dirty_set_free(acc));
    OK(dt_tracker_unregister(t, id));
    munmap(mem, 32 * PS);
}

static void test_capabilities(dt_tracker *t) {
    section("dt_tracker_capabilities_report");
    size_t need = 0;
    EXPECT(dt_tracker_capabilities_report(t, NULL, 0, &need), DT_ERR_BUFFER_TOO_SMALL);
    char *buf = malloc(need);
    size_t need2 = 0;
    OK(dt_tracker_capabilities_report(t, buf, need, &need2));
    ASSERT(need2 == need && strlen(buf) == need - 1);
    ASSERT(strstr(buf, "DT_MODE_AUTO chooses DT_MODE_") != NULL);
    ASSERT(strstr(buf, "Mode::") == NULL);
    char tiny[1] = {'x'};
    EXPECT(dt_tracker_capabilities_report(t, tiny, 1, NULL), DT_ERR_BUFFER_TOO_SMALL);
    ASSERT(tiny[0] == '\0');
    EXPECT(dt_tracker_capabilities_report(NULL, buf, need, NULL), DT_ERR_NULL);
    free(buf);
}

static void test_message_persistence(dt_tracker *t) {
    section("the last failure's message survives the cleanup calls that follow it (errno rule)");
    dt_dirty_set *s = (dt_dirty_set *)0x1;
    EXPECT(dt_tracker_collect_range(t, 999999, &s), DT_ERR_UNKNOWN_RANGE);
    char saved[512];
    snprintf(saved, sizeof saved, "%s", dt_last_error_message());
    ASSERT(strstr(saved, "range 999999 is not registered") != NULL);
    /* A `goto fail` cleanup: every call succeeds, none erases the message. */
    dt_mode mode;
    OK(dt_dirty_set_free(s)); /* s was set to NULL */
    OK(dt_tracker_mode(t, &mode));
    dt_dirty_set *other = NULL;
    OK(dt_dirty_set_new(&other));
    OK(dt_dirty_set_free(other));
    (void)dt_page_size();
    (void)dt_open_handles();
    ASSERT(strcmp(dt_last_error_message(), saved) == 0);
}

static void test_builder(dt_tracker *t, int skip_sync_writes) {
    section("tracker builder: options, invalid values, build, free");
    EXPECT(dt_tracker_builder_new(NULL), DT_ERR_NULL);
    dt_tracker_builder *b = NULL;
    OK(dt_tracker_builder_new(&b));
    ASSERT(b != NULL);
    EXPECT(dt_tracker_builder_set_mode(b, 7), DT_ERR_INVALID_ARGUMENT);
    MESSAGE_HAS("7 is not a dt_mode");
    EXPECT(dt_tracker_builder_set_thp(b, 2), DT_ERR_INVALID_ARGUMENT);
    MESSAGE_HAS("is not a dt_thp");
    EXPECT(dt_tracker_builder_set_prefault(b, -1), DT_ERR_INVALID_ARGUMENT);
    MESSAGE_HAS("is not a dt_prefault");
    EXPECT(dt_tracker_builder_set_mode(NULL, DT_MODE_SYNC), DT_ERR_NULL);
    EXPECT(dt_tracker_builder_set_mode((dt_tracker_builder *)t, DT_MODE_SYNC),
           DT_ERR_INVALID_HANDLE);
    MESSAGE_HAS("is a dt_tracker, not a dt_tracker_builder");
    EXPECT(dt_tracker_builder_build(b, NULL), DT_ERR_NULL);
    dt_tracker *t2 = (dt_tracker *)0x1;
    EXPECT(dt_tracker_builder_build(NULL, &t2), DT_ERR_NULL);
    ASSERT(t2 == NULL);

    /* The same mode as `t`, THP disabled: tracks exactly like `t`. */
    dt_mode mode, mode2;
    OK(dt_tracker_mode(t, &mode));
    OK(dt_tracker_builder_set_mode(b, mode));
    OK(dt_tracker_builder_set_thp(b, DT_THP_DISABLE));
    OK(dt_tracker_builder_build(b, &t2));
    OK(dt_tracker_mode(t2, &mode2));
    ASSERT(mode2 == mode);
    char *mem = map(8);
    uint64_t id = 0;
    OK(dt_tracker_register(t2, mem, 8 * PS, &id));
    if (mode == DT_MODE_ASYNC || !skip_sync_writes) {
        mem[2 * PS] = 1;
        mem[7 * PS + 9] = 1;
        dt_dirty_set *s = NULL;
        OK(dt_tracker_collect(t2, &s));
        ASSERT(set_len(s) == 2 && has(s, mem + 2 * PS) && has(s, mem + 7 * PS));
        OK(dt_dirty_set_free(s));
    }
    OK(dt_tracker_unregister(t2, id));
    OK(dt_tracker_free(t2));
    munmap(mem, 8 * PS);

    /* Sync mode with an explicit prefault strategy, when this process can run sync mode. */
    dt_capabilities caps;
    OK(dt_capabilities_probe(&caps));
    if (caps.sync_status == DT_OK && caps.madv_populate_read) {
        OK(dt_tracker_builder_set_mode(b, DT_MODE_SYNC));
        OK(dt_tracker_builder_set_prefault(b, DT_PREFAULT_POPULATE_READ));
        OK(dt_tracker_builder_set_thp(b, DT_THP_LEAVE));
        OK(dt_tracker_builder_build(b, &t2));
        OK(dt_tracker_mode(t2, &mode2));
        ASSERT(mode2 == DT_MODE_SYNC);
        OK(dt_tracker_free(t2));
    } else {
        printf("  - SKIP builder in sync mode: %s\n", caps.sync_why_not);
    }
    /* The builder is not consumed by building; freed once, then invalid. */
    OK(dt_tracker_builder_free(b));
    EXPECT(dt_tracker_builder_free(b), DT_ERR_INVALID_HANDLE);
    EXPECT(dt_tracker_builder_set_mode(b, DT_MODE_AUTO), DT_ERR_INVALID_HANDLE);
    OK(dt_tracker_builder_free(NULL));
}

static void test_ranges(dt_tracker *t) {
    section("dt_tracker_ranges: count query, short buffer, full list, registration order");
    size_t n = 99;
    OK(dt_tracker_ranges(t, NULL, 0, &n));
    ASSERT(n == 0);
    char *a = map(4), *b = map(2), *c = map(1);
    uint64_t ia = 0, ib = 0, ic = 0;
    OK(dt_tracker_register(t, a, 4 * PS, &ia));
    OK(dt_tracker_register(t, b, 2 * PS, &ib));
    OK(dt_tracker_register(t, c, 1 * PS, &ic));
    EXPECT(dt_tracker_ranges(t, NULL, 0, &n), DT_ERR_BUFFER_TOO_SMALL);
    ASSERT(n == 3);
    MESSAGE_HAS("call again with at least 3");
    dt_range_info buf[4];
    memset(buf, 0, sizeof buf);
    EXPECT(dt_tracker_ranges(t, buf, 2, &n), DT_ERR_BUFFER_TOO_SMALL);
    ASSERT(n == 3 && buf[0].id == ia && buf[1].id == ib && buf[2].id == 0);
    OK(dt_tracker_ranges(t, buf, 4, &n));
    ASSERT(n == 3);
    ASSERT(buf[0].id == ia && buf[0].addr == (uintptr_t)a && buf[0].len == 4 * PS && !buf[0].lost);
    ASSERT(buf[1].id == ib && buf[1].addr == (uintptr_t)b && buf[1].len == 2 * PS);
    ASSERT(buf[2].id == ic && buf[2].registered_addr == (uintptr_t)c && buf[2].len == PS);
    EXPECT(dt_tracker_ranges(t, NULL, 1, &n), DT_ERR_NULL);
    EXPECT(dt_tracker_ranges(t, buf, 4, NULL), DT_ERR_NULL);
    EXPECT(dt_tracker_ranges(NULL, buf, 4, &n), DT_ERR_NULL);
    OK(dt_tracker_unregister(t, ib));
    OK(dt_tracker_ranges(t, buf, 4, &n));
    ASSERT(n == 2 && buf[0].id == ia && buf[1].id == ic);
    OK(dt_tracker_unregister(t, ia));
    OK(dt_tracker_unregister(t, ic));
    munmap(a, 4 * PS);
    munmap(b, 2 * PS);
    munmap(c, PS);
}

/* The string in a fixed char array is NUL-terminated within it. */
static int terminated(const char *s, size_t size) { return memchr(s, 0, size) != NULL; }

static void test_capabilities_struct(dt_tracker *t) {
    section("dt_capabilities: probe and tracker, modes and why not, C words");
    EXPECT(dt_capabilities_probe(NULL), DT_ERR_NULL);
    dt_capabilities c, ct;
    memset(&c, 0x7f, sizeof c);
    OK(dt_capabilities_probe(&c));
    ASSERT(terminated(c.kernel_release, DT_KERNEL_RELEASE_LEN));
    ASSERT(terminated(c.async_why_not, DT_REASON_LEN) && terminated(c.sync_why_not, DT_REASON_LEN));
    struct utsname u;
    ASSERT(uname(&u) == 0 && strcmp(u.release, c.kernel_release) == 0);
    ASSERT(c.features != 0 && (c.full_userfaultfd || c.user_mode_only_userfaultfd));
    ASSERT(c.prefault != DT_PREFAULT_BEST);
    /* Each mode: available, or a code and a reason in C words. */
    ASSERT((c.async_status == DT_OK) == (c.async_why_not[0] == '\0'));
    ASSERT((c.sync_status == DT_OK) == (c.sync_why_not[0] == '\0'));
    ASSERT(strstr(c.async_why_not, "Mode::") == NULL && strstr(c.sync_why_not, "Mode::") == NULL);
    /* Async needs UFFD_FEATURE_WP_ASYNC (1 << 15) and PAGEMAP_SCAN. */
    ASSERT(c.async_status != DT_OK || ((c.features & (1u << 15)) && c.pagemap_scan));
    dt_mode mode;
    OK(dt_tracker_mode(t, &mode)); /* t was built with DT_MODE_AUTO */
    ASSERT(c.auto_mode == mode);
    ASSERT(mode != DT_MODE_ASYNC || c.async_status == DT_OK);

    memset(&ct, 0, sizeof ct);
    OK(dt_tracker_capabilities(t, &ct));
    ASSERT(strcmp(ct.kernel_release, c.kernel_release) == 0 && ct.auto_mode == mode);
    ASSERT(ct.features == c.features && ct.async_status == c.async_status);
    EXPECT(dt_tracker_capabilities(NULL, &ct), DT_ERR_NULL);
    EXPECT(dt_tracker_capabilities(t, NULL), DT_ERR_NULL);
}

static void test_mark_dirty(dt_tracker *t) {
    section("dt_tracker_mark_dirty: unaligned spans, zero length, untracked memory, overflow");
    char *mem = map(8), *other = map(2);
    uint64_t id = 0;
    OK(dt_tracker_register(t, mem, 8 * PS, &id));
    dt_dirty_set *s = NULL;
    /* From inside page 3 to inside page 5: pages 3, 4 and 5. */
    OK(dt_tracker_mark_dirty(t, mem + 3 * PS + 10, 2 * PS));
    OK(dt_tracker_mark_dirty(t, mem + 7 * PS, 0)); /* nothing */
    OK(dt_tracker_collect(t, &s));
    ASSERT(set_len(s) == 3 && has(s, mem + 3 * PS) && has(s, mem + 4 * PS) && has(s, mem + 5 * PS));
    OK(dt_dirty_set_free(s));
    OK(dt_tracker_collect(t, &s)); /* the collect reset the marks */
    ASSERT(set_len(s) == 0);
    OK(dt_dirty_set_free(s));

    EXPECT(dt_tracker_mark_dirty(t, other, PS), DT_ERR_NOT_TRACKED);
    MESSAGE_HAS("is not tracked");
    MESSAGE_HAS("dt_tracker_mark_dirty records changes only for registered memory");
    /* A span that runs past the range marks nothing. */
    EXPECT(dt_tracker_mark_dirty(t, mem + 6 * PS, 4 * PS), DT_ERR_NOT_TRACKED);
    OK(dt_tracker_peek(t, &s));
    ASSERT(set_len(s) == 0);
    OK(dt_dirty_set_free(s));
    EXPECT(dt_tracker_mark_dirty(t, (void *)(UINTPTR_MAX - 10), 100), DT_ERR_ADDRESS_OVERFLOW);
    EXPECT(dt_tracker_mark_dirty(NULL, mem, PS), DT_ERR_NULL);
    OK(dt_tracker_unregister(t, id));
    EXPECT(dt_tracker_mark_dirty(t, mem, PS), DT_ERR_NOT_TRACKED);
    munmap(mem, 8 * PS);
    munmap(other, 2 * PS);
}

static void test_range_lost(dt_tracker *t) {
    section("an unmapped range is reported lost (DT_ERR_RANGE_LOST), then unregistered");
    char *mem = map(16), *keep = map(4);
    uint64_t id = 0, other = 0;
    OK(dt_tracker_register(t, mem, 16 * PS, &id));
    OK(dt_tracker_register(t, keep, 4 * PS, &other));
    munmap(mem + 4 * PS, 4 * PS);
    keep[PS] = 1;
    dt_dirty_set *s = NULL;
    EXPECT(dt_tracker_collect(t, &s), DT_ERR_RANGE_LOST);
    ASSERT(s == NULL);
    MESSAGE_STARTS("dt_tracker_collect: range ");
    MESSAGE_HAS("unregister it (dt_tracker_unregister(t, ");
    dt_range_info info;
    OK(dt_tracker_range(t, id, &info));
    ASSERT(info.lost);
    OK(dt_tracker_unregister(t, id));
    OK(dt_tracker_collect(t, &s)); /* nothing lost for the other range */
    ASSERT(has(s, keep + PS));
    OK(dt_dirty_set_free(s));
    OK(dt_tracker_unregister(t, other));
    munmap(mem, 16 * PS);
    munmap(keep, 4 * PS);
}

static void test_other_userfaultfd(dt_tracker *t) {
    section("memory owned by another tracker (DT_ERR_OWNED_BY_ANOTHER_USERFAULTFD)");
    dt_tracker *t2 = NULL;
    dt_mode mode;
    OK(dt_tracker_mode(t, &mode));
    OK(dt_tracker_new_with_mode(mode, &t2));
    char *mem = map(4);
    uint64_t id = 0, id2 = 0;
    OK(dt_tracker_register(t, mem, 4 * PS, &id));
    EXPECT(dt_tracker_register(t2, mem, 4 * PS, &id2), DT_ERR_OWNED_BY_ANOTHER_USERFAULTFD);
    MESSAGE_STARTS("dt_tracker_register: ");
    MESSAGE_HAS("already registered with another userfaultfd");
    MESSAGE_HAS("dt_tracker_free");
    OK(dt_tracker_unregister(t, id));
    OK(dt_tracker_free(t2));
    munmap(mem, 4 * PS);
}

static void test_needs_sync(dt_tracker *t) {
    dt_mode mode;
    OK(dt_tracker_mode(t, &mode));
    if (mode != DT_MODE_ASYNC) {
        return;
    }
    section("live snapshot of an async tracker (DT_ERR_NEEDS_SYNC_MODE)");
    char *mem = map(2);
    uint64_t id = 0;
    OK(dt_tracker_register(t, mem, 2 * PS, &id));
    dt_live_snapshot *ls = (dt_live_snapshot *)0x1;
    EXPECT(dt_tracker_live_snapshot(t, id, &ls), DT_ERR_NEEDS_SYNC_MODE);
    ASSERT(ls == NULL);
    MESSAGE_STARTS("dt_tracker_live_snapshot: ");
    MESSAGE_HAS("needs DT_MODE_SYNC");
    MESSAGE_HAS("dt_tracker_builder_set_mode(b, DT_MODE_SYNC)");
    ASSERT(strstr(dt_last_error_message(), "Tracker::") == NULL);
    OK(dt_tracker_unregister(t, id));
    munmap(mem, 2 * PS);
}

static int on_tmpfs(const char *path) {
    struct statfs fs;
    return statfs(path, &fs) == 0 && fs.f_type == 0x01021994; /* TMPFS_MAGIC */
}

static void test_sync_mode(int skip_writes) {
    dt_tracker *t = NULL;
    dt_status st = dt_tracker_new_with_mode(DT_MODE_SYNC, &t);
    if (st != DT_OK) {
        printf("  - SKIP sync mode: %s: %s\n", dt_status_name(st), dt_last_error_message());
        return;
    }
    section("sync mode: tracking, live snapshots (wait, in progress, free, double wait)");
    dt_mode mode;
    OK(dt_tracker_mode(t, &mode));
    ASSERT(mode == DT_MODE_SYNC);
    char *mem = map(32);
    for (int p = 0; p < 32; p++) {
        mem[p * PS] = (char)p;
    }
    uint64_t id = 0;
    OK(dt_tracker_register(t, mem, 32 * PS, &id));

    dt_dirty_set *s = NULL;
    if (!skip_writes) {
        mem[3 * PS] = 33;
        OK(dt_tracker_collect(t, &s));
        ASSERT(set_len(s) == 1 && has(s, mem + 3 * PS));
        OK(dt_dirty_set_free(s));
        mem[4 * PS] = 44; /* dirty before the instant */
    }

    dt_live_snapshot *ls = NULL, *ls2 = (dt_live_snapshot *)0x1;
    OK(dt_tracker_live_snapshot(t, id, &ls));
    EXPECT(dt_tracker_live_snapshot(t, id, &ls2), DT_ERR_SNAPSHOT_IN_PROGRESS);
    ASSERT(ls2 == NULL);
    MESSAGE_STARTS("dt_tracker_live_snapshot: a live snapshot of range ");
    MESSAGE_HAS("already in progress: wait for it first (dt_live_snapshot_wait)");
    if (!skip_writes) {
        mem[5 * PS] = 55; /* after the instant: copied before it goes through */
    }
    size_t copied = 0, total = 0;
    OK(dt_live_snapshot_progress(ls, &copied, &total));
    ASSERT(total == 32 && copied <= total);
    OK(dt_live_snapshot_progress(ls, NULL, NULL));
    EXPECT(dt_live_snapshot_wait(ls, NULL), DT_ERR_NULL); /* handle untouched */
    dt_live_copy *copy = NULL;
    OK(dt_live_snapshot_wait(ls, &copy));
    ASSERT(copy != NULL);
    dt_live_copy *again = (dt_live_copy *)0x1;
    EXPECT(dt_live_snapshot_wait(ls, &again), DT_ERR_INVALID_HANDLE); /* consumed */
    ASSERT(again == NULL);
    OK(dt_live_copy_commit(copy)); /* stored: page 4 is the copy's now */
    OK(dt_live_copy_commit(copy)); /* twice is harmless */
    EXPECT(dt_live_copy_commit(NULL), DT_ERR_NULL);
    EXPECT(dt_live_copy_commit((dt_live_copy *)t), DT_ERR_INVALID_HANDLE);
    OK(dt_live_copy_free(copy));
    EXPECT(dt_live_snapshot_free(ls), DT_ERR_INVALID_HANDLE);
    EXPECT(dt_live_snapshot_wait(NULL, &copy), DT_ERR_NULL);

    OK(dt_tracker_live_snapshot(t, id, &ls));
    OK(dt_live_snapshot_wait(ls, &copy));
    /* That second snapshot's instant was after every write above. */
    uintptr_t addr = 0;
    const uint8_t *data = NULL;
    size_t len = 0;
    OK(dt_live_copy_addr(copy, &addr));
    OK(dt_live_copy_data(copy, &data, &len));
    ASSERT(addr == (uintptr_t)mem && len == 32 * PS && data != NULL);
    ASSERT(data != NULL && memcmp(data, mem, len) == 0);
    dt_dirty_set *at = NULL;
    OK(dt_live_copy_dirty_at_instant(copy, &at));
    if (!skip_writes) {
        ASSERT(set_len(at) == 1 && has(at, mem + 5 * PS));
        mem[6 * PS] = 66; /* after the copy: the copy keeps the old byte */
        ASSERT(data[6 * PS] == 6);
    }
    OK(dt_dirty_set_free(at));
    EXPECT(dt_live_copy_data(copy, NULL, &len), DT_ERR_NULL);
    EXPECT(dt_live_copy_addr((dt_live_copy *)t, &addr), DT_ERR_INVALID_HANDLE);
    /* Freed without a commit: the pre-instant page (5) goes back to the tracker. */
    OK(dt_live_copy_free(copy));
    if (!skip_writes) {
        OK(dt_tracker_collect_range(t, id, &s));
        ASSERT(has(s, mem + 5 * PS) && has(s, mem + 6 * PS));
        OK(dt_dirty_set_free(s));
    }
    EXPECT(dt_live_copy_free(copy), DT_ERR_INVALID_HANDLE);
    OK(dt_live_copy_free(NULL));

    /* Abandoning a snapshot. */
    OK(dt_tracker_live_snapshot(t, id, &ls));
    OK(dt_live_snapshot_free(ls));
    OK(dt_live_snapshot_free(NULL));

    /* A regular file mapping on a disk file system cannot be tracked in sync mode. */
    if (!on_tmpfs(".")) {
        char path[] = "./dt-test-XXXXXX";
        int fd = mkstemp(path);
        if (fd >= 0 && ftruncate(fd, (off_t)(4 * PS)) == 0) {
            char *f = mmap(NULL, 4 * PS, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (f != MAP_FAILED) {
                uint64_t fid = 0;
                EXPECT(dt_tracker_register(t, f, 4 * PS, &fid), DT_ERR_MAPPING_NOT_SUPPORTED);
                MESSAGE_HAS("sync mode tracks anonymous");
                MESSAGE_HAS("in DT_MODE_SYNC (");
                MESSAGE_HAS("use DT_MODE_ASYNC");
                munmap(f, 4 * PS);
            }
        }
        if (fd >= 0) {
            close(fd);
            unlink(path);
        }
    } else {
        printf("  - SKIP mapping-not-supported: the current directory is on tmpfs\n");
    }

    OK(dt_tracker_unregister(t, id));
    OK(dt_tracker_free(t));
    munmap(mem, 32 * PS);
}

/*
 * Runs `fn(arg)` in a fork child and returns its result (0 = pass, 77 = skip, other = fail), or
 * -1 if the child died without reporting. The result travels through a pipe rather than the exit
 * status, because under valgrind the child's exit status reports valgrind's own findings: the
 * child has none of the parent's threads, so what their stacks own looks leaked there.
 */
static int in_child(int (*fn)(void *), void *arg) {
    int fds[2];
    if (pipe(fds) != 0) {
        return -1;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        unsigned char r = (unsigned char)fn(arg);
        ssize_t w = write(fds[1], &r, 1);
        _exit(w == 1 ? 0 : 1);
    }
    close(fds[1]);
    unsigned char r = 0;
    ssize_t got = pid > 0 ? read(fds[0], &r, 1) : -1;
    close(fds[0]);
    if (pid > 0) {
        waitpid(pid, NULL, 0);
    }
    return got == 1 ? r : -1;
}

static int collect_in_child(void *arg) {
    dt_dirty_set *s = NULL;
    dt_status st = dt_tracker_collect((dt_tracker *)arg, &s);
    return st == DT_ERR_FORKED_CHILD && s == NULL &&
                   strstr(dt_last_error_message(), "a fork child") != NULL
               ? 0
               : 1;
}

static void test_fork_child(dt_tracker *t) {
    section("a fork child gets DT_ERR_FORKED_CHILD");
    ASSERT(in_child(collect_in_child, t) == 0);
}

static int new_tracker_without_fds(void *arg) {
    (void)arg;
    struct rlimit lim = {.rlim_cur = 3, .rlim_max = 1024};
    if (setrlimit(RLIMIT_NOFILE, &lim) != 0) {
        return 77;
    }
    dt_tracker *t = NULL;
    dt_status st = dt_tracker_new(&t);
    return st == DT_ERR_RESOURCE_EXHAUSTED && t == NULL ? 0 : 1;
}

static void test_fd_exhaustion(void) {
    section("out of file descriptors (DT_ERR_RESOURCE_EXHAUSTED)");
    int r = in_child(new_tracker_without_fds, NULL);
    if (r == 77) {
        printf("  - SKIP: setrlimit(RLIMIT_NOFILE) refused here (valgrind reserves descriptors)\n");
        return;
    }
    ASSERT(r == 0);
}

static void test_poisoned(void) {
    section("a dead monitor thread poisons the tracker (DT_ERR_POISONED)");
    dt_tracker *t = NULL;
    OK(dt_tracker_new(&t));
    char *mem = map(8);
    uint64_t id = 0;
    OK(dt_tracker_register(t, mem, 8 * PS, &id));
    OK(dt__test_poison(t));
    /* A discard event wakes the monitor thread, which then panics. */
    madvise(mem, PS, MADV_DONTNEED);
    dt_dirty_set *s = NULL;
    dt_status st = DT_OK;
    for (int i = 0; i < 2000; i++) {
        st = dt_tracker_collect(t, &s);
        if (st != DT_OK) {
            break;
        }
        dt_dirty_set_free(s);
        s = NULL;
        struct timespec ms = {0, 5 * 1000 * 1000};
        nanosleep(&ms, NULL);
    }
    EXPECT(st, DT_ERR_POISONED);
    MESSAGE_HAS("poisoned");
    MESSAGE_HAS("free the tracker (dt_tracker_free) and create a new one (dt_tracker_new)");
    EXPECT(dt_tracker_register(t, mem, PS, &id), DT_ERR_POISONED);
    for (int p = 0; p < 8; p++) {
        mem[p * PS] = 1; /* writers are not blocked */
    }
    OK(dt_tracker_free(t));
    munmap(mem, 8 * PS);
}

/* ---- threads ---- */

struct shared {
    dt_tracker *t;
    pthread_barrier_t barrier;
    int bad;
};

static void *error_thread(void *arg) {
    struct shared *sh = arg;
    uint64_t id;
    /* This thread's error ... */
    dt_status st = dt_tracker_register(sh->t, (void *)(uintptr_t)1, PS, &id);
    pthread_barrier_wait(&sh->barrier); /* ... while the main thread succeeds and fails otherwise */
    pthread_barrier_wait(&sh->barrier);
    if (st != DT_ERR_UNALIGNED || strstr(dt_last_error_message(), "address 0x1 ") == NULL) {
        sh->bad = 1;
    }
    return NULL;
}

static void *collector(void *arg) {
    struct shared *sh = arg;
    for (int i = 0; i < 200; i++) {
        dt_dirty_set *s = NULL;
        dt_status st = (i % 2) ? dt_tracker_peek(sh->t, &s) : dt_tracker_collect(sh->t, &s);
        if (st == DT_ERR_INVALID_HANDLE) {
            break; /* freed by the main thread: a clean error, not a crash */
        }
        if (st != DT_OK) {
            sh->bad = 1;
            break;
        }
        size_t n;
        if (dt_dirty_set_len(s, &n) != DT_OK || dt_dirty_set_free(s) != DT_OK) {
            sh->bad = 1;
        }
    }
    return NULL;
}

static void test_threads(void) {
    section("threads: thread-local messages; concurrent collects; free while in use");
    struct shared sh = {.bad = 0};
    OK(dt_tracker_new(&sh.t));
    pthread_barrier_init(&sh.barrier, NULL, 2);
    pthread_t th;
    pthread_create(&th, NULL, error_thread, &sh);
    pthread_barrier_wait(&sh.barrier);
    EXPECT(dt_tracker_unregister(sh.t, 424242), DT_ERR_UNKNOWN_RANGE);
    pthread_barrier_wait(&sh.barrier);
    pthread_join(th, NULL);
    MESSAGE_STARTS("dt_tracker_unregister: range 424242");
    ASSERT(!sh.bad);

    char *mem = map(64);
    uint64_t id = 0;
    OK(dt_tracker_register(sh.t, mem, 64 * PS, &id));
    pthread_t c[4];
    for (int i = 0; i < 4; i++) {
        pthread_create(&c[i], NULL, collector, &sh);
    }
    for (int round = 0; round < 50; round++) {
        mem[(round % 64) * PS] = (char)round;
    }
    /* Free the tracker while the collectors may still be using it. */
    struct timespec ms = {0, 2 * 1000 * 1000};
    nanosleep(&ms, NULL);
    OK(dt_tracker_free(sh.t));
    for (int i = 0; i < 4; i++) {
        pthread_join(c[i], NULL);
    }
    ASSERT(!sh.bad);
    EXPECT(dt_tracker_free(sh.t), DT_ERR_INVALID_HANDLE); /* double free detected */
    pthread_barrier_destroy(&sh.barrier);
    munmap(mem, 64 * PS);
}

/* ------------------------------------------------------------------------------------------- */
/* Tracking another process (dt_remote_*): a fork child that writes pages of its buffer on
 * command. */

#if defined(__x86_64__) || defined(__aarch64__)
/* Under AddressSanitizer the fork child is instrumented too: its shadow memory (a 16 TiB rw-p
 * mapping and TiB-sized PROT_NONE reservations) is reported whole by a remote collect, which
 * takes minutes and gigabytes: the tests against a child are skipped there. */
#if defined(__SANITIZE_ADDRESS__)
#define DT_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DT_TEST_ASAN 1
#endif
#endif
#ifndef DT_TEST_ASAN
#define DT_TEST_ASAN 0
#endif
#define TARGET_PAGES 4096 /* 16 MiB with 4 KiB pages: much more than the child's code */

struct target {
    pid_t pid;
    int cmd;      /* parent -> child: 'w' + page index (uint32_t), or 'q' */
    int ack;      /* child -> parent: one byte per command; first the fd (int32_t) */
    int32_t uffd; /* the child's own userfaultfd (-1 if none) */
};

/* The child: maps and fills its buffer, creates its own tracking userfaultfd at fd 900 or above
 * if asked (as CRIU does through compel), reports it, then writes pages on command. */
static void target_main(int cmd, int ack, int own_uffd) {
    char *buf = mmap(NULL, TARGET_PAGES * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
    if (buf == MAP_FAILED) _exit(1);
    /* Base pages only, so that the written pages are reported exactly whatever THP does. */
    madvise(buf, TARGET_PAGES * PS, MADV_NOHUGEPAGE);
    memset(buf, 0x5a, TARGET_PAGES * PS);
    int32_t fd = -1;
    if (own_uffd) {
        int u = (int)syscall(SYS_userfaultfd, dt_remote_uffd_flags());
        if (u >= 0) {
            fd = fcntl(u, F_DUPFD_CLOEXEC, DT_REMOTE_MARK_FD_BASE);
            close(u);
        }
    }
    if (write(ack, &fd, sizeof fd) != sizeof fd) _exit(1);
    for (;;) {
        char c;
        if (read(cmd, &c, 1) != 1 || c == 'q') _exit(0);
        uint32_t page;
        if (read(cmd, &page, sizeof page) != sizeof page) _exit(1);
        buf[(size_t)page * PS] ^= 1;
        if (write(ack, &c, 1) != 1) _exit(1);
    }
}

static int start_target(struct target *t, int own_uffd) {
    int cmd[2], ack[2];
    if (pipe(cmd) != 0 || pipe(ack) != 0) return -1;
    fflush(stdout);
    fflush(stderr);
    t->pid = fork();
    if (t->pid == 0) {
        close(cmd[1]);
        close(ack[0]);
        target_main(cmd[0], ack[1], own_uffd);
    }
    close(cmd[0]);
    close(ack[1]);
    t->cmd = cmd[1];
    t->ack = ack[0];
    t->uffd = -1;
    if (t->pid < 0 || read(t->ack, &t->uffd, sizeof t->uffd) != sizeof t->uffd) return -1;
    return 0;
}

/* Makes the target write one byte in each of `n` pages of its buffer, and waits until it did. */
static void target_write(struct target *t, const uint32_t *pages, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char c = 'w', a;
        ASSERT(write(t->cmd, &c, 1) == 1 && write(t->cmd, &pages[i], sizeof pages[i]) == 4);
        ASSERT(read(t->ack, &a, 1) == 1);
    }
}

static void stop_target(struct target *t) {
    char c = 'q';
    ASSERT(write(t->cmd, &c, 1) == 1);
    close(t->cmd);
    close(t->ack);
    int status = 0;
    ASSERT(waitpid(t->pid, &status, 0) == t->pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* The target's buffer address: the mapping of TARGET_PAGES pages in its maps. */
static uintptr_t target_buffer(pid_t pid) {
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    uintptr_t found = 0;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long start, end;
        if (sscanf(line, "%lx-%lx", &start, &end) == 2 && end - start == TARGET_PAGES * PS) {
            found = start;
        }
    }
    if (f) fclose(f);
    return found;
}

/* How many pages of `s` lie in the target's buffer at `buf`. */
static size_t pages_in_buffer(const dt_dirty_set *s, uintptr_t buf) {
    dt_run runs[64];
    size_t n, pages = 0;
    uintptr_t end = buf + TARGET_PAGES * PS;
    for (size_t i = 0; dt_dirty_set_runs(s, i, runs, 64, &n) == DT_OK && n > 0; i += n) {
        for (size_t k = 0; k < n; k++) {
            uintptr_t a = runs[k].start > buf ? runs[k].start : buf;
            uintptr_t b = runs[k].start + runs[k].len < end ? runs[k].start + runs[k].len : end;
            if (a < b) pages += (b - a) / PS;
        }
    }
    return pages;
}

/* Holds every thread of the target in a ptrace stop (the single-threaded child has one). */
static int seize(pid_t pid) {
    int status;
    if (ptrace(PTRACE_SEIZE, pid, 0, 0) != 0 || ptrace(PTRACE_INTERRUPT, pid, 0, 0) != 0) {
        return -1;
    }
    return waitpid(pid, &status, __WALL) == pid && WIFSTOPPED(status) ? 0 : -1;
}

static void release(pid_t pid) { ASSERT(ptrace(PTRACE_DETACH, pid, 0, 0) == 0); }

static uint8_t *saved_state(dt_remote *r, size_t *len) {
    *len = 0;
    EXPECT(dt_remote_save_state(r, NULL, 0, len), DT_ERR_BUFFER_TOO_SMALL);
    MESSAGE_STARTS("dt_remote_save_state: the buffer holds 0 bytes");
    ASSERT(*len > 0);
    uint8_t *state = malloc(*len);
    size_t again = 0;
    OK(dt_remote_save_state(r, state, *len, &again));
    ASSERT(again == *len);
    return state;
}

static void test_remote_errors(int valgrind) {
    section("remote: probe, flags, bad pid, bad state, NULL and wrong handles");
    char why[512];
    size_t need = 0;
    dt_status st = dt_remote_probe(why, sizeof why, &need);
    ASSERT(st == DT_OK || st == DT_ERR_UNSUPPORTED_KERNEL);
    ASSERT(need >= 1 && need == strlen(why) + 1);
    printf("    dt_remote_probe: %s%s%s\n", dt_status_name(st), why[0] ? ": " : "", why);
    char tiny[4];
    ASSERT(dt_remote_probe(tiny, sizeof tiny, &need) == st && strlen(tiny) < sizeof tiny);
    ASSERT(dt_remote_uffd_flags() == (O_CLOEXEC | O_NONBLOCK | 1 /* UFFD_USER_MODE_ONLY */));

    dt_remote *r = (dt_remote *)1;
    EXPECT(dt_remote_attach(getpid(), 1 << 7, NULL, 0, &r), DT_ERR_INVALID_ARGUMENT);
    MESSAGE_STARTS("dt_remote_attach: flags 0x80 has unknown bits 0x80");
    ASSERT(r == NULL);
    EXPECT(dt_remote_attach(getpid(), 0, NULL, 0, &r), DT_ERR_INVALID_ARGUMENT);
    MESSAGE_HAS("use a dt_tracker");
    if (valgrind) {
        printf("    SKIP under valgrind: attach to a bad pid (valgrind 3.19 lacks pidfd_open)\n");
    } else {
        EXPECT(dt_remote_attach(0x3fffffff, 0, NULL, 0, &r), DT_ERR_NO_SUCH_PROCESS);
        MESSAGE_STARTS("dt_remote_attach: no process 1073741823");
    }
    EXPECT(dt_remote_adopt(-1, 900, DT_REMOTE_CALLER_STOPS, NULL, 0, &r), DT_ERR_NO_SUCH_PROCESS);
    EXPECT(dt_remote_adopt(1, 900, 0, NULL, 0, NULL), DT_ERR_NULL);
    const uint8_t junk[] = "not a state";
    EXPECT(dt_remote_adopt(getppid(), 900, 0, junk, sizeof junk, &r), DT_ERR_BAD_STATE);
    MESSAGE_STARTS("dt_remote_adopt: the state is not one dt_remote_save_state wrote");
    int32_t fd = 5;
    EXPECT(dt_remote_find_fd(getpid(), junk, sizeof junk, &fd), DT_ERR_BAD_STATE);
    ASSERT(fd == -1);
    fd = 5;
    OK(dt_remote_find_fd(getpid(), NULL, 0, &fd));
    ASSERT(fd == -1);
    EXPECT(dt_remote_find_fd(0x3fffffff, NULL, 0, &fd), DT_ERR_NO_SUCH_PROCESS);
    MESSAGE_STARTS("dt_remote_find_fd: no process 1073741823 (or it is a zombie)");
    EXPECT(dt_remote_find_fd(getpid(), NULL, 0, NULL), DT_ERR_NULL);
    size_t n = 9;
    OK(dt_remote_tracking_fds(getpid(), NULL, 0, &n));
    ASSERT(n == 0);
    EXPECT(dt_remote_tracking_fds(0x3fffffff, NULL, 0, &n), DT_ERR_NO_SUCH_PROCESS);

    /* NULL, garbage and wrong-type handles. */
    bool b;
    dt_dirty_set *s = NULL;
    dt_remote_stats stats;
    EXPECT(dt_remote_resumed(NULL, &b), DT_ERR_NULL);
    MESSAGE_STARTS("dt_remote_resumed: the dt_remote handle is NULL");
    EXPECT(dt_remote_collect((dt_remote *)0x12345d, &s), DT_ERR_INVALID_HANDLE);
    ASSERT(s == NULL);
    OK(dt_dirty_set_new(&s));
    EXPECT(dt_remote_collect_stats((const dt_remote *)s, &stats), DT_ERR_INVALID_HANDLE);
    MESSAGE_HAS("is a dt_dirty_set, not a dt_remote");
    EXPECT(dt_remote_free((dt_remote *)s), DT_ERR_INVALID_HANDLE);
    OK(dt_dirty_set_free(s));
    EXPECT(dt_remote_stop_tracking(NULL), DT_ERR_NULL);
    EXPECT(dt_remote_target_fd(NULL, NULL, NULL), DT_ERR_NULL);
    EXPECT(dt_remote_save_state(NULL, NULL, 0, &n), DT_ERR_NULL);
    OK(dt_remote_free(NULL));
}

/* The dirtytrack CLI's way: the library creates the userfaultfd in the target itself. */
static void test_remote_attach(void) {
    section("remote: attach, collect everything, write pages, collect them, save, resume");
    struct target t;
    ASSERT(start_target(&t, 0) == 0);
    uintptr_t buf = target_buffer(t.pid);
    ASSERT(buf != 0);

    dt_remote *r = NULL;
    OK(dt_remote_attach(t.pid, DT_REMOTE_ACCEPT_MISSED_DISCARDS, NULL, 0, &r));
    if (r == NULL) {
        stop_target(&t);
        return;
    }
    bool resumed = true;
    OK(dt_remote_resumed(r, &resumed));
    ASSERT(!resumed);
    int32_t fd = -1;
    uint64_t ino = 0;
    OK(dt_remote_target_fd(r, &fd, &ino));
    ASSERT(fd >= DT_REMOTE_MARK_FD_BASE && ino != 0);
    int32_t fds[4];
    size_t n = 0;
    OK(dt_remote_tracking_fds(t.pid, fds, 4, &n));
    ASSERT(n == 1 && fds[0] == fd);
    EXPECT(dt_remote_tracking_fds(t.pid, fds, 0, &n), DT_ERR_BUFFER_TOO_SMALL);
    ASSERT(n == 1);

    dt_remote_stats stats;
    OK(dt_remote_collect_stats(r, &stats));
    ASSERT(stats.dirty_bytes == 0 && stats.new_mappings == 0);

    /* One tracker per target. */
    dt_remote *other = NULL;
    EXPECT(dt_remote_attach(t.pid, DT_REMOTE_ACCEPT_MISSED_DISCARDS, NULL, 0, &other),
           DT_ERR_TARGET_BUSY);
    MESSAGE_HAS("is already tracked by process");
    ASSERT(other == NULL);
    EXPECT(dt_remote_attach(t.pid, DT_REMOTE_CALLER_STOPS, NULL, 0, &other),
           DT_ERR_INVALID_ARGUMENT);
    MESSAGE_HAS("DT_REMOTE_CALLER_STOPS needs dt_remote_adopt");

    /* The first collect reports everything. */
    dt_dirty_set *first = NULL;
    OK(dt_remote_collect(r, &first));
    size_t first_len = set_len(first);
    ASSERT(has(first, (void *)buf) && has(first, (void *)(buf + (TARGET_PAGES - 1) * PS)));
    ASSERT(first_len >= TARGET_PAGES);
    OK(dt_remote_collect_stats(r, &stats));
    ASSERT(stats.dirty_bytes == first_len * PS && stats.new_mappings > 0);
    ASSERT(stats.written_bytes == 0 && stats.children == 0);

    /* Then exactly what was written (plus what is never known clean: code, untracked). */
    const uint32_t pages[] = {3, 10, 500, TARGET_PAGES - 1};
    target_write(&t, pages, 4);
    dt_dirty_set *second = NULL;
    OK(dt_remote_collect(r, &second));
    size_t second_len = set_len(second);
    for (int i = 0; i < 4; i++) ASSERT(has(second, (void *)(buf + pages[i] * PS)));
    ASSERT(!has(second, (void *)(buf + 4 * PS)) && !has(second, (void *)(buf + 499 * PS)));
    ASSERT(pages_in_buffer(first, buf) == TARGET_PAGES);
    ASSERT(pages_in_buffer(second, buf) == 4);
    ASSERT(second_len * 4 < first_len);
    printf("    first collect %zu pages, second %zu pages\n", first_len, second_len);
    OK(dt_remote_collect_stats(r, &stats));
    ASSERT(stats.dirty_bytes == second_len * PS && stats.written_bytes >= 4 * PS);
    ASSERT(stats.tracked_mappings > 0);
    OK(dt_dirty_set_free(first));
    OK(dt_dirty_set_free(second));

    /* Save the chain, free the handle (tracking stays), resume it. */
    size_t len;
    uint8_t *state = saved_state(r, &len);
    OK(dt_remote_free(r));
    EXPECT(dt_remote_free(r), DT_ERR_INVALID_HANDLE);
    const uint32_t later[] = {77};
    target_write(&t, later, 1);
    fd = -2;
    OK(dt_remote_find_fd(t.pid, state, len, &fd));
    ASSERT(fd == fds[0]);
    OK(dt_remote_attach(t.pid, DT_REMOTE_ACCEPT_MISSED_DISCARDS, state, len, &r));
    OK(dt_remote_resumed(r, &resumed));
    ASSERT(resumed);
    dt_dirty_set *third = NULL;
    OK(dt_remote_collect(r, &third));
    ASSERT(has(third, (void *)(buf + 77 * PS)) && pages_in_buffer(third, buf) == 1);
    OK(dt_dirty_set_free(third));

    /* Stop tracking: the fd is closed in the target; only free is left. */
    OK(dt_remote_stop_tracking(r));
    EXPECT(dt_remote_collect(r, &third), DT_ERR_INVALID_HANDLE);
    MESSAGE_HAS("dt_remote_stop_tracking");
    OK(dt_remote_tracking_fds(t.pid, fds, 4, &n));
    ASSERT(n == 0);
    OK(dt_remote_free(r));
    free(state);
    stop_target(&t);
}

/* CRIU's way: the target created its own userfaultfd (CRIU injects the calls with compel) and
 * the caller holds it stopped with ptrace while the library adopts it and collects. */
static void test_remote_adopt(void) {
    section("remote: adopt the target's own userfaultfd with DT_REMOTE_CALLER_STOPS, resume");
    struct target t;
    ASSERT(start_target(&t, 1) == 0);
    ASSERT(t.uffd >= DT_REMOTE_MARK_FD_BASE);
    uintptr_t buf = target_buffer(t.pid);
    int32_t fds[4];
    size_t n = 0;
    OK(dt_remote_tracking_fds(t.pid, fds, 4, &n));
    ASSERT(n == 1 && fds[0] == t.uffd);
    int32_t fd = 0;
    OK(dt_remote_find_fd(t.pid, NULL, 0, &fd));
    ASSERT(fd == -1);

    int flags = DT_REMOTE_CALLER_STOPS | DT_REMOTE_ACCEPT_MISSED_DISCARDS | DT_REMOTE_FRESH;
    ASSERT(seize(t.pid) == 0);
    dt_remote *r = NULL;
    EXPECT(dt_remote_adopt(t.pid, 1, flags, NULL, 0, &r), DT_ERR_NOT_A_TRACKING_FD);
    MESSAGE_HAS("the target holds no userfaultfd at that fd");
    ASSERT(r == NULL);
    OK(dt_remote_adopt(t.pid, t.uffd, flags, NULL, 0, &r));
    bool resumed = true;
    OK(dt_remote_resumed(r, &resumed));
    ASSERT(!resumed);
    uint64_t ino = 0;
    OK(dt_remote_target_fd(r, &fd, &ino));
    ASSERT(fd == t.uffd && ino != 0);
    dt_dirty_set *s = NULL;
    OK(dt_remote_collect(r, &s));
    ASSERT(has(s, (void *)buf) && pages_in_buffer(s, buf) == TARGET_PAGES);
    size_t first_len = set_len(s);
    OK(dt_dirty_set_free(s));
    size_t len;
    uint8_t *state = saved_state(r, &len);
    OK(dt_remote_free(r));
    /* Set up now: without the chain's state it could be a copy a fork child inherited. */
    EXPECT(dt_remote_adopt(t.pid, t.uffd, flags, NULL, 0, &r), DT_ERR_NOT_A_TRACKING_FD);
    MESSAGE_HAS("not by the chain whose state was given");
    release(t.pid);

    const uint32_t pages[] = {12, 13};
    target_write(&t, pages, 2);

    ASSERT(seize(t.pid) == 0);
    fd = -1;
    OK(dt_remote_find_fd(t.pid, state, len, &fd));
    ASSERT(fd == t.uffd);
    OK(dt_remote_adopt(t.pid, fd, DT_REMOTE_CALLER_STOPS | DT_REMOTE_ACCEPT_MISSED_DISCARDS,
                       state, len, &r));
    OK(dt_remote_resumed(r, &resumed));
    ASSERT(resumed);
    OK(dt_remote_collect(r, &s));
    ASSERT(has(s, (void *)(buf + 12 * PS)) && has(s, (void *)(buf + 13 * PS)));
    ASSERT(pages_in_buffer(s, buf) == 2);
    ASSERT(set_len(s) * 4 < first_len);
    dt_remote_stats stats;
    OK(dt_remote_collect_stats(r, &stats));
    ASSERT(stats.written_bytes >= 2 * PS && stats.tracked_mappings > 0);
    OK(dt_dirty_set_free(s));
    /* With DT_REMOTE_CALLER_STOPS the target keeps its fd. */
    OK(dt_remote_stop_tracking(r));
    OK(dt_remote_free(r));
    release(t.pid);
    OK(dt_remote_tracking_fds(t.pid, fds, 4, &n));
    ASSERT(n == 1 && fds[0] == t.uffd);
    free(state);
    stop_target(&t);
}
#endif

int main(void) {
    PS = dt_page_size();
    int valgrind = getenv("DT_TEST_VALGRIND") != NULL;
    printf("test_capi: page size %zu%s\n", PS,
           valgrind ? " (valgrind: checks that wait for the monitor thread are skipped)" : "");

    dt_tracker *t = NULL;
    dt_status st = dt_tracker_new(&t);
    if (st == DT_ERR_PERMISSION || st == DT_ERR_UNSUPPORTED_KERNEL) {
        printf("test_capi: SKIP: no tracker can be created here: %s\n", dt_last_error_message());
        return 77;
    }
    OK(st);
    if (t == NULL) {
        fprintf(stderr, "test_capi: dt_tracker_new failed: %s\n", dt_last_error_message());
        return 1;
    }
    dt_mode mode;
    OK(dt_tracker_mode(t, &mode));
    printf("  tracker mode: %s\n", mode == DT_MODE_ASYNC ? "async" : "sync");

    test_statics();
    test_probe_report();
    test_tracker_creation();
    test_handles(t);
    test_register_errors(t);
    test_unknown_ranges(t);
    test_tracking(t);
    test_iteration(t);
    test_sets(t);
    test_capabilities(t);
    test_capabilities_struct(t);
    test_message_persistence(t);
    test_ranges(t);
    test_mark_dirty(t);
    test_builder(t, valgrind);
    if (valgrind) {
        printf("  - SKIP under valgrind: range lost (munmap of registered memory)\n");
    } else {
        test_range_lost(t);
    }
    test_other_userfaultfd(t);
    test_needs_sync(t);
    test_fork_child(t);

    section("tracker free, double free, use after free, free(NULL)");
    OK(dt_tracker_free(t));
    EXPECT(dt_tracker_free(t), DT_ERR_INVALID_HANDLE);
    EXPECT(dt_tracker_clear(t), DT_ERR_INVALID_HANDLE);
    MESSAGE_HAS("already freed");
    OK(dt_tracker_free(NULL));

    test_fd_exhaustion();
    if (valgrind) {
        printf("  - SKIP under valgrind: poisoned tracker (MADV_DONTNEED of registered memory)\n");
    } else {
        test_poisoned();
    }
    test_sync_mode(valgrind);
    test_threads();
#if defined(__x86_64__) || defined(__aarch64__)
    test_remote_errors(valgrind);
    if (DT_TEST_ASAN) {
        printf("  - SKIP under AddressSanitizer: tracking a child process (its shadow memory is "
               "TiB-sized mappings, reported whole)\n");
    } else if (valgrind) {
        printf("  - SKIP under valgrind: tracking a child process (ptrace of a valgrind guest)\n");
    } else {
        test_remote_attach();
        test_remote_adopt();
    }
#endif

    section("every handle was freed");
    ASSERT(dt_open_handles() == 0);

    printf("test_capi: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
