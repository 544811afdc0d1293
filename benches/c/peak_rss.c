/* Runs a program and writes its peak RSS (KiB; with its waited-for children, the largest), its
 * minor page faults and its system CPU time (µs; both with its waited-for children) to a
 * file, on one line. Used by the `preload` benchmark: a child's ru_maxrss starts from the peak of the
 * process that forked it, so the runner, whose own peak is tens of MiB, must not fork the
 * measured program itself; this small process does.
 *
 *   peak_rss OUTFILE PROGRAM [ARGS...]
 */
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    pid_t pid = fork();
    if (pid < 0) return 2;
    if (pid == 0) {
        execvp(argv[2], argv + 2);
        _exit(127);
    }
    int status;
    struct rusage usage;
    if (wait4(pid, &status, 0, &usage) != pid) return 2;
    FILE *out = fopen(argv[1], "w");
    if (!out) return 2;
    fprintf(out, "%ld %ld %ld\n", usage.ru_maxrss, usage.ru_minflt,
            usage.ru_stime.tv_sec * 1000000L + usage.ru_stime.tv_usec);
    fclose(out);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
