/* A target for tests/remote.rs: many threads, some of them short-lived. Eight threads write a
 * shared 8 MiB heap all the time; the main thread keeps starting batches of four threads that
 * each map, write and unmap memory of their own, and exit (their stacks and mappings come and
 * go between collects, so collects keep registering with threads appearing and exiting).
 * Prints "ready", then runs until killed. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define HEAP (8u << 20)
static char *heap;

static void *writer(void *arg) {
    uint64_t x = (uint64_t)(uintptr_t)arg * 2654435761u + 1;
    for (unsigned long i = 0;; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        heap[x % HEAP] = (char)x;
        if (i % 256 == 0) usleep(200);
    }
    return NULL;
}

static void *ephemeral(void *arg) {
    size_t len = (size_t)(1 + (uintptr_t)arg % 4) << 16;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    memset(p, (int)(uintptr_t)arg, len);
    usleep(300);
    p[len / 2] ^= 1;
    munmap(p, len);
    return NULL;
}

int main(void) {
    heap = mmap(NULL, HEAP, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (heap == MAP_FAILED) { perror("mmap"); return 1; }
    memset(heap, 7, HEAP);
    pthread_t w[8];
    for (uintptr_t i = 0; i < 8; i++)
        if (pthread_create(&w[i], NULL, writer, (void *)i)) { perror("pthread_create"); return 1; }
    printf("ready\n");
    fflush(stdout);
    for (uintptr_t round = 0;; round++) {
        pthread_t e[4];
        for (uintptr_t i = 0; i < 4; i++)
            if (pthread_create(&e[i], NULL, ephemeral, (void *)(round * 4 + i))) { perror("pthread_create"); return 1; }
        for (int i = 0; i < 4; i++) pthread_join(e[i], NULL);
        usleep(500);
    }
}
