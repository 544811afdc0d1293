/* Larson's server pattern: threads replace random slots of one shared array with blocks of
 * their own, freeing what the slot held — most often a block another thread allocated.
 * Prints the bytes allocated, which does not depend on the allocator or the schedule.
 * Used by `cargo run --release -p pymalloc-bench --bin preload`.
 *
 *   larson THREADS OPS
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SLOTS = 10000 };

static _Atomic(unsigned char *) slots[SLOTS];
static unsigned long ops_per_thread;

static uint64_t next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* 8 to 1024 bytes, smaller sizes likelier (a power of two, then a point within it). */
static size_t size_of_op(uint64_t r) {
    unsigned shift = 3 + (unsigned)(r % 8);
    size_t low = (size_t)1 << shift;
    return low + (r >> 8) % low;
}

static void *worker(void *arg) {
    uint64_t seed = 0x9e3779b97f4a7c15ull * ((uintptr_t)arg + 1);
    uint64_t allocated = 0;
    for (unsigned long i = 0; i < ops_per_thread; i++) {
        uint64_t r = next(&seed);
        size_t n = size_of_op(r);
        unsigned char *fresh = malloc(n);
        if (!fresh) abort();
        memset(fresh, (int)n, n);
        unsigned char *old = atomic_exchange(&slots[(r >> 32) % SLOTS], fresh);
        free(old);
        allocated += n;
    }
    return (void *)(uintptr_t)allocated;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int threads = atoi(argv[1]);
    ops_per_thread = strtoul(argv[2], 0, 10) / (unsigned long)threads;
    pthread_t tid[64];
    if (threads < 1 || threads > 64) return 2;
    for (int t = 0; t < threads; t++)
        if (pthread_create(&tid[t], 0, worker, (void *)(uintptr_t)t)) return 1;
    uint64_t total = 0;
    for (int t = 0; t < threads; t++) {
        void *allocated;
        pthread_join(tid[t], &allocated);
        total += (uintptr_t)allocated;
    }
    for (int i = 0; i < SLOTS; i++) free(atomic_load(&slots[i]));
    printf("%llu\n", (unsigned long long)total);
    return 0;
}
