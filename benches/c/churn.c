/* A C program that allocates the way C programs do: malloc/free/realloc of mostly small
 * blocks, some medium and a few large, kept in a window of live blocks that each thread
 * churns; a tenth of the frees are of blocks another thread allocated. Prints a checksum that
 * must not depend on the allocator. Used by `cargo run --release -p pymalloc-bench --bin
 * preload`.
 *
 *   churn THREADS OPS_PER_THREAD
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { WINDOW = 4096, SHARED = 1024 };

static unsigned long ops;
static void *shared[SHARED];
static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static size_t size_of_op(uint64_t r) {
    unsigned pick = r % 1000;
    if (pick < 900) return 8 + (r >> 10) % 248;     /* small: 8 .. 255 */
    if (pick < 990) return 256 + (r >> 10) % 3840;  /* medium: up to 4 KiB */
    if (pick < 999) return 4096 + (r >> 10) % 61440; /* up to 64 KiB */
    return 65536 + (r >> 10) % (1 << 20);           /* large, rarely */
}

static void *worker(void *arg) {
    uint64_t seed = 0x9e3779b97f4a7c15ull * ((uintptr_t)arg + 1), sum = 0;
    unsigned char **live = calloc(WINDOW, sizeof *live);
    size_t *sizes = calloc(WINDOW, sizeof *sizes);
    for (unsigned long i = 0; i < ops; i++) {
        uint64_t r = next(&seed);
        unsigned slot = r % WINDOW;
        unsigned char *p = live[slot];
        if (p) {
            sum += p[0] + p[sizes[slot] - 1];
            if ((r >> 40) % 8 == 0) {
                size_t n = size_of_op(next(&seed));
                p = realloc(p, n);
                if (!p) abort();
                memset(p, (int)i, n < 64 ? n : 64);
                p[n - 1] = (unsigned char)i;
                live[slot] = p;
                sizes[slot] = n;
                continue;
            }
            if ((r >> 40) % 10 == 1) {
                /* Trade it for a block another thread left. */
                pthread_mutex_lock(&shared_lock);
                unsigned k = (r >> 20) % SHARED;
                void *theirs = shared[k];
                shared[k] = p;
                pthread_mutex_unlock(&shared_lock);
                free(theirs);
            } else {
                free(p);
            }
            live[slot] = NULL;
        } else {
            size_t n = size_of_op(r);
            p = malloc(n);
            if (!p) abort();
            memset(p, (int)i, n < 64 ? n : 64);
            p[n - 1] = (unsigned char)i;
            live[slot] = p;
            sizes[slot] = n;
        }
    }
    for (unsigned s = 0; s < WINDOW; s++) free(live[s]);
    free(live);
    free(sizes);
    return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv) {
    unsigned threads = argc > 1 ? (unsigned)atoi(argv[1]) : 1;
    ops = argc > 2 ? strtoul(argv[2], NULL, 10) : 10000000;
    pthread_t t[64];
    if (threads < 1 || threads > 64) return 2;
    uint64_t total = 0;
    for (unsigned i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i);
    for (unsigned i = 0; i < threads; i++) {
        void *sum;
        pthread_join(t[i], &sum);
        total += (uintptr_t)sum;
    }
    for (unsigned k = 0; k < SHARED; k++) free(shared[k]);
    /* Which blocks are traded depends on timing, but the checksum covers only what each
     * thread read of blocks it wrote itself, which does not. */
    printf("%llu\n", (unsigned long long)total);
    return 0;
}
