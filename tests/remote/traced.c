/* A target that already has a tracer: the parent PTRACE_SEIZEs its child (which keeps running)
 * and prints "ready <child pid>". */
#include <signal.h>
#include <stdio.h>
#include <sys/ptrace.h>
#include <unistd.h>

int main(void) {
    pid_t child = fork();
    if (child == 0) {
        for (;;) pause();
    }
    if (child < 0 || ptrace(PTRACE_SEIZE, child, 0, 0) != 0) { perror("seize"); kill(child, SIGKILL); return 1; }
    printf("ready %d\n", child);
    fflush(stdout);
    for (;;) pause();
}
