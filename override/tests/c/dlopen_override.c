/* Loads libpymalloc_override.so with dlopen, after start-up, rather than through LD_PRELOAD:
 * its thread-local slot is initial-exec TLS, which a library loaded late takes from the
 * static TLS surplus glibc keeps for that. Its functions, found with dlsym, allocate and free
 * in the main thread and in four threads started before and after the load. Then the program
 * closes the library while a thread that allocated through it still runs: the library stays
 * loaded (it is linked `-z nodelete`), so that thread's exit, which runs the library's
 * `pthread` key destructor to hand its heap on, finds the code still there.
 *
 *   dlopen_override LIBRARY
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void *(*malloc_fn)(size_t);
typedef void (*free_fn)(void *);

static malloc_fn their_malloc;
static free_fn their_free;
static pthread_barrier_t loaded;
static pthread_barrier_t worked, closed;

static void *work(void *early) {
    if (early) pthread_barrier_wait(&loaded);
    for (int i = 0; i < 100000; i++) {
        char *p = their_malloc(16 + i % 300);
        if (!p) return (void *)1;
        memset(p, i, 16);
        their_free(p);
    }
    return NULL;
}

/* Allocates through the library, then waits for it to be closed before it exits. */
static void *linger(void *unused) {
    (void)unused;
    void *r = work(NULL);
    pthread_barrier_wait(&worked);
    pthread_barrier_wait(&closed);
    return r;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    pthread_t early[2], late[2];
    pthread_barrier_init(&loaded, NULL, 3);
    for (int i = 0; i < 2; i++) pthread_create(&early[i], NULL, work, (void *)1);
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    their_malloc = (malloc_fn)dlsym(lib, "malloc");
    their_free = (free_fn)dlsym(lib, "free");
    if (!their_malloc || !their_free || !dlsym(lib, "pymalloc_write_stats")) return 1;
    pthread_barrier_wait(&loaded);
    for (int i = 0; i < 2; i++) pthread_create(&late[i], NULL, work, NULL);
    int failed = work(NULL) != NULL;
    for (int i = 0; i < 2; i++) {
        void *r;
        pthread_join(early[i], &r);
        failed |= r != NULL;
        pthread_join(late[i], &r);
        failed |= r != NULL;
    }
    if (failed) return 1;

    pthread_t lingering;
    pthread_barrier_init(&worked, NULL, 2);
    pthread_barrier_init(&closed, NULL, 2);
    pthread_create(&lingering, NULL, linger, NULL);
    pthread_barrier_wait(&worked);
    if (dlclose(lib) != 0) return 1;
    if (!dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD)) {
        fprintf(stderr, "the library was unloaded by dlclose\n");
        return 1;
    }
    pthread_barrier_wait(&closed);
    void *r;
    pthread_join(lingering, &r);
    if (r != NULL) return 1;
    puts("ok");
    return 0;
}
