/* A target for tests/remote.rs: counts SIGUSR1 (handler with SA_RESTART) while blocked reading
 * stdin, across attaches and collects. Prints "ready", then "count N" once a line arrives. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t handled;

static void on_usr1(int sig) {
    (void)sig;
    handled++;
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGUSR1, &sa, NULL) != 0) { perror("sigaction"); return 1; }
    printf("ready\n");
    fflush(stdout);
    char buf[64];
    if (read(0, buf, sizeof buf) < 0) { printf("read: %s\n", strerror(errno)); return 1; }
    printf("count %d\n", (int)handled);
    fflush(stdout);
    return 0;
}
