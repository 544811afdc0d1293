/* Starts an empty program N times, one after another, in the environment it was given (so
 * under LD_PRELOAD, the empty program loads the allocator each time): the start-up cost of a
 * process. Used by `cargo run --release -p pymalloc-bench --bin preload`.
 *
 *   spawn N PROGRAM
 */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

extern char **environ;

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    long n = atol(argv[1]);
    char *args[] = {argv[2], NULL};
    for (long i = 0; i < n; i++) {
        pid_t pid;
        int status;
        if (posix_spawn(&pid, argv[2], NULL, NULL, args, environ) != 0) return 1;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
    }
    printf("%ld\n", n);
    return 0;
}
