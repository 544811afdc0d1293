/* Starts an empty program under each of several preloaded libraries in turn, one start of
 * each per step (the order reversed every other step), and prints for each library the
 * median time of a start and the median of its steps' differences to the first library's:
 * starts a millisecond apart see the same machine, so its drift cancels in the difference.
 * Used by `cargo run --release -p pymalloc-bench --bin preload` for the start-up table.
 *
 *   startups STEPS PROGRAM LIB...      (a LIB of "-" preloads nothing)
 *
 * Prints one line a library, in the order given: "MEDIAN_NS DIFFERENCE_NS".
 */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

static int by_value(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

static long median(long *values, long n) {
    qsort(values, n, sizeof *values, by_value);
    return values[n / 2];
}

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    long steps = atol(argv[1]);
    char *program = argv[2];
    int libs = argc - 3;
    if (steps < 1) return 2;
    /* Each library's environment: LD_PRELOAD alone, or nothing. */
    char ***envs = calloc(libs, sizeof *envs);
    long *times = calloc((size_t)libs * steps, sizeof *times);
    long *scratch = calloc(steps, sizeof *scratch);
    if (!envs || !times || !scratch) return 1;
    for (int l = 0; l < libs; l++) {
        envs[l] = calloc(2, sizeof **envs);
        if (!envs[l]) return 1;
        const char *lib = argv[3 + l];
        if (strcmp(lib, "-") != 0) {
            size_t n = strlen("LD_PRELOAD=") + strlen(lib) + 1;
            envs[l][0] = malloc(n);
            if (!envs[l][0]) return 1;
            snprintf(envs[l][0], n, "LD_PRELOAD=%s", lib);
        }
    }
    char *args[] = {program, NULL};
    for (long s = 0; s < steps; s++) {
        for (int k = 0; k < libs; k++) {
            int l = s % 2 ? libs - 1 - k : k;
            pid_t pid;
            int status;
            long start = now_ns();
            if (posix_spawn(&pid, program, NULL, NULL, args, envs[l]) != 0) return 1;
            if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
                return 1;
            times[(size_t)l * steps + s] = now_ns() - start;
        }
    }
    /* The differences first: the medians sort each library's times in place. */
    long *differences = calloc(libs, sizeof *differences);
    if (!differences) return 1;
    for (int l = 0; l < libs; l++) {
        for (long s = 0; s < steps; s++) scratch[s] = times[(size_t)l * steps + s] - times[s];
        differences[l] = median(scratch, steps);
    }
    for (int l = 0; l < libs; l++)
        printf("%ld %ld\n", median(times + (size_t)l * steps, steps), differences[l]);
    return 0;
}
