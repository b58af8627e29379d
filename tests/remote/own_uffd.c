/* A target with a userfaultfd of its own (as a VMM or a GC might have): 1 MiB registered with it
 * (missing mode, populated first so no write ever faults), written in a loop. Prints "ready". */
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
    size_t len = 1 << 20;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *q = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || q == MAP_FAILED) { perror("mmap"); return 1; }
    memset(p, 1, len);
    int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | 1 /* UFFD_USER_MODE_ONLY */);
    /* Before 5.11 the flag is refused (EINVAL): a full fd then (the test runs as root there). */
    if (uffd < 0) uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    struct uffdio_api api = { .api = UFFD_API, .features = 0 };
    struct uffdio_register reg = { .range = { (unsigned long)p, len }, .mode = UFFDIO_REGISTER_MODE_MISSING };
    if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) || ioctl(uffd, UFFDIO_REGISTER, &reg)) { perror("uffd"); return 1; }
    printf("ready %p\n", (void *)p);
    fflush(stdout);
    for (unsigned long i = 0;; i++) {
        p[(i * 4096 * 7) % len] = (char)i;
        q[(i * 4096 * 3) % len] = (char)i;
        usleep(200);
    }
}
