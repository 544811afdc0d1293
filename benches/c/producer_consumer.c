/* Producers and consumers: 2 threads allocate messages of 8 to 2048 bytes and pass them
 * through a bounded queue to 2 others, which read and free them: every free is of a block
 * another thread allocated. Prints a checksum of the messages, which does not depend on the
 * allocator or the schedule. Used by `cargo run --release -p pymalloc-bench --bin preload`.
 *
 *   producer_consumer MESSAGES
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { QUEUE = 4096, PRODUCERS = 2, CONSUMERS = 2 };

static struct {
    pthread_mutex_t lock;
    pthread_cond_t not_full, not_empty;
    unsigned char *items[QUEUE];
    size_t head, len;
    int producing;
} q = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, {0}, 0, 0, PRODUCERS};

static unsigned long per_producer;

static uint64_t next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void *producer(void *arg) {
    uint64_t seed = 0x2545f4914f6cdd1dull * ((uintptr_t)arg + 1);
    for (unsigned long i = 0; i < per_producer; i++) {
        uint64_t r = next(&seed);
        unsigned shift = 3 + (unsigned)(r % 8);
        size_t n = ((size_t)1 << shift) + (r >> 8) % ((size_t)1 << shift);
        unsigned char *m = malloc(n);
        if (!m) abort();
        memset(m, (int)n, n);
        memcpy(m, &n, sizeof n < n ? sizeof n : n);
        pthread_mutex_lock(&q.lock);
        while (q.len == QUEUE) pthread_cond_wait(&q.not_full, &q.lock);
        q.items[(q.head + q.len++) % QUEUE] = m;
        pthread_cond_signal(&q.not_empty);
        pthread_mutex_unlock(&q.lock);
    }
    pthread_mutex_lock(&q.lock);
    q.producing--;
    pthread_cond_broadcast(&q.not_empty);
    pthread_mutex_unlock(&q.lock);
    return 0;
}

static void *consumer(void *arg) {
    (void)arg;
    uint64_t sum = 0;
    for (;;) {
        pthread_mutex_lock(&q.lock);
        while (q.len == 0 && q.producing) pthread_cond_wait(&q.not_empty, &q.lock);
        if (q.len == 0) {
            pthread_mutex_unlock(&q.lock);
            break;
        }
        unsigned char *m = q.items[q.head];
        q.head = (q.head + 1) % QUEUE;
        q.len--;
        pthread_cond_signal(&q.not_full);
        pthread_mutex_unlock(&q.lock);
        size_t n;
        memcpy(&n, m, sizeof n);
        sum += n + m[n - 1];
        free(m);
    }
    return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    per_producer = strtoul(argv[1], 0, 10) / PRODUCERS;
    pthread_t p[PRODUCERS], c[CONSUMERS];
    for (int i = 0; i < PRODUCERS; i++)
        if (pthread_create(&p[i], 0, producer, (void *)(uintptr_t)i)) return 1;
    for (int i = 0; i < CONSUMERS; i++)
        if (pthread_create(&c[i], 0, consumer, 0)) return 1;
    uint64_t total = 0;
    for (int i = 0; i < PRODUCERS; i++) pthread_join(p[i], 0);
    for (int i = 0; i < CONSUMERS; i++) {
        void *sum;
        pthread_join(c[i], &sum);
        total += (uintptr_t)sum;
    }
    printf("%llu\n", (unsigned long long)total);
    return 0;
}
