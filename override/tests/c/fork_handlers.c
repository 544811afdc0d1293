/* fork() in a program that registers its own pthread_atfork handlers before its first malloc,
 * so that pymalloc's handlers must already be registered (at load) for the orders to work out.
 * Built and run under LD_PRELOAD by override/tests/preload.rs, which kills it if it hangs.
 * Nothing here may allocate before pthread_atfork: no constructor, no stdio until the end.
 *
 *   fork_handlers prepare-lock    the prepare handler takes a mutex that another thread holds
 *                                 around malloc and free of small and large blocks
 *   fork_handlers prepare-malloc  the prepare handler allocates (no other thread)
 *   fork_handlers child-malloc    the child handler allocates, small blocks and large
 *
 * Each forks FORKS times; the child allocates and exits; "ok" and exit 0 when all went well.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { FORKS = 300 };

/* Keeps the compiler from pairing a malloc with its free and removing both. */
static void *volatile sink;

static void churn(void) {
    for (size_t i = 1; i < 200; i++) {
        sink = malloc(i * 37);
        free(sink);
    }
    sink = malloc(300000);
    free(sink);
}

static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;
static volatile int stop;

static void take_held(void) { pthread_mutex_lock(&held); }
static void give_held(void) { pthread_mutex_unlock(&held); }

static void *allocate_while_holding(void *arg) {
    (void)arg;
    while (!stop) {
        pthread_mutex_lock(&held);
        void *blocks[64];
        for (int i = 0; i < 64; i++) blocks[i] = malloc(100 + (size_t)i * 1000);
        for (int i = 0; i < 64; i++) free(blocks[i]);
        pthread_mutex_unlock(&held);
    }
    return NULL;
}

static int fork_many(void) {
    for (int i = 0; i < FORKS; i++) {
        pid_t pid = fork();
        if (pid < 0) return 0;
        if (pid == 0) {
            churn();
            _exit(0);
        }
        int status;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    int ok;
    if (strcmp(mode, "prepare-lock") == 0) {
        pthread_atfork(take_held, give_held, give_held);
        pthread_t thread;
        if (pthread_create(&thread, NULL, allocate_while_holding, NULL) != 0) return 2;
        ok = fork_many();
        stop = 1;
        pthread_join(thread, NULL);
    } else if (strcmp(mode, "prepare-malloc") == 0) {
        pthread_atfork(churn, NULL, NULL);
        ok = fork_many();
    } else if (strcmp(mode, "child-malloc") == 0) {
        pthread_atfork(NULL, NULL, churn);
        ok = fork_many();
    } else {
        return 2;
    }
    puts(ok ? "ok" : "a child failed");
    return ok ? 0 : 1;
}
