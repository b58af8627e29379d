/*
 * uffd_adopt: a throw-away check of the kernel behaviour DESIGN.md relies on (not library code).
 *
 *   uffd_adopt target NPAGES [nouffd]
 *                                creates a userfaultfd at fd >= 900 itself (standing in for the
 *                                compel_syscall() injection of DESIGN.md; not with "nouffd",
 *                                for drafts/poc-check.sh), maps NPAGES anonymous
 *                                pages, touches them, prints "pid addr", then obeys lines on
 *                                stdin: "w I" writes page I, "fork" forks a child that sleeps,
 *                                "q" exits.
 *   uffd_adopt harvest PID ADDR NPAGES [init]
 *                                as CRIU would: PTRACE_SEIZE + PTRACE_INTERRUPT every thread of
 *                                PID (this process is now its only tracer), pidfd_getfd() of
 *                                the target's fd 900, with "init" UFFDIO_API (async WP, no
 *                                events) + UFFDIO_REGISTER(WP) of the range, then PAGEMAP_SCAN
 *                                (WP_MATCHING | CHECK_WPASYNC, PAGE_IS_WRITTEN) on
 *                                /proc/PID/pagemap; prints the written page indices; detaches.
 *                                Each harvest is a new process, like each `criu` invocation.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MARK_FD 900

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static int target(long npages, int own_uffd)
{
	long ps = sysconf(_SC_PAGESIZE);
	int uffd, fd = -1;
	char *mem, line[64];

	if (own_uffd) {
		uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
		if (uffd < 0)
			die("userfaultfd");
		fd = fcntl(uffd, F_DUPFD_CLOEXEC, MARK_FD);
		if (fd < 0)
			die("F_DUPFD_CLOEXEC");
		close(uffd);
	}
	mem = mmap(NULL, npages * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	memset(mem, 1, npages * ps);
	printf("%d %lx %d\n", getpid(), (unsigned long)mem, fd);
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin)) {
		long i;

		if (sscanf(line, "w %ld", &i) == 1 && i >= 0 && i < npages) {
			mem[i * ps] ^= 0xff;
		} else if (!strncmp(line, "fork", 4)) {
			pid_t c = fork();
			if (c == 0) {
				for (;;)
					pause();
			}
			printf("child %d\n", c);
		} else if (line[0] == 'q') {
			break;
		}
		printf("ok\n");
		fflush(stdout);
	}
	return 0;
}

/* PTRACE_SEIZE + PTRACE_INTERRUPT every thread, wait for each to stop. */
static int seize_all(pid_t pid, pid_t *tids, int max)
{
	char path[64];
	struct dirent *de;
	DIR *d;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	d = opendir(path);
	if (!d)
		die("opendir task");
	while ((de = readdir(d)) && n < max) {
		pid_t tid = atoi(de->d_name);
		int st;

		if (tid <= 0)
			continue;
		if (ptrace(PTRACE_SEIZE, tid, 0, 0))
			die("PTRACE_SEIZE");
		if (ptrace(PTRACE_INTERRUPT, tid, 0, 0))
			die("PTRACE_INTERRUPT");
		if (waitpid(tid, &st, __WALL) < 0)
			die("waitpid");
		tids[n++] = tid;
	}
	closedir(d);
	return n;
}

static int harvest(pid_t pid, unsigned long addr, long npages, int init)
{
	long ps = sysconf(_SC_PAGESIZE);
	struct page_region regs[256];
	pid_t tids[64];
	char path[64];
	int n, i, pidfd, uffd, pm;
	long ret;

	n = seize_all(pid, tids, 64);
	pidfd = syscall(SYS_pidfd_open, pid, 0);
	if (pidfd < 0)
		die("pidfd_open");
	uffd = syscall(SYS_pidfd_getfd, pidfd, MARK_FD, 0);
	if (uffd < 0)
		die("pidfd_getfd (while this process is the target's tracer)");
	if (init) {
		struct uffdio_api api = {
			.api = UFFD_API,
			.features = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_ASYNC |
				    UFFD_FEATURE_WP_UNPOPULATED,
		};
		struct uffdio_register reg = {
			.range = { .start = addr, .len = npages * ps },
			.mode = UFFDIO_REGISTER_MODE_WP,
		};

		if (ioctl(uffd, UFFDIO_API, &api))
			die("UFFDIO_API");
		if (ioctl(uffd, UFFDIO_REGISTER, &reg))
			die("UFFDIO_REGISTER (on the target's mm, from the tracer)");
	}
	snprintf(path, sizeof(path), "/proc/%d/pagemap", pid);
	pm = open(path, O_RDONLY);
	if (pm < 0)
		die("open pagemap");
	struct pm_scan_arg arg = {
		.size = sizeof(arg),
		.flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
		.start = addr,
		.end = addr + npages * ps,
		.vec = (uintptr_t)regs,
		.vec_len = 256,
		.category_mask = PAGE_IS_WRITTEN,
		.return_mask = PAGE_IS_WRITTEN,
	};
	ret = ioctl(pm, PAGEMAP_SCAN, &arg);
	if (ret < 0)
		die("PAGEMAP_SCAN");
	printf("written:");
	for (i = 0; i < ret; i++) {
		unsigned long a;

		for (a = regs[i].start; a < regs[i].end; a += ps)
			printf(" %lu", (a - addr) / ps);
	}
	printf("\n");
	for (i = 0; i < n; i++)
		ptrace(PTRACE_DETACH, tids[i], 0, 0);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "target"))
		return target(atol(argv[2]), !(argc > 3 && !strcmp(argv[3], "nouffd")));
	if (argc >= 5 && !strcmp(argv[1], "harvest"))
		return harvest(atoi(argv[2]), strtoul(argv[3], NULL, 16), atol(argv[4]),
			       argc > 5 && !strcmp(argv[5], "init"));
	fprintf(stderr, "usage: see the comment at the top of %s\n", __FILE__);
	return 2;
}
