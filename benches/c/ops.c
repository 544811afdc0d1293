/* malloc and free in a steady state, for counting instructions per call under callgrind:
 * 1024 live blocks of 16 to 255 bytes, each step frees one at random and allocates another.
 * Used by `cargo run --release -p pymalloc-bench --bin preload` when valgrind is installed.
 *
 *   ops STEPS
 */
#include <stdint.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    enum { WINDOW = 1024 };
    unsigned long n = argc > 1 ? strtoul(argv[1], 0, 10) : 1000000;
    static void *live[WINDOW];
    uint64_t s = 88172645463325252ull;
    for (unsigned long i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        unsigned k = s % WINDOW;
        free(live[k]);
        live[k] = malloc(16 + (s >> 20) % 240);
        if (!live[k]) return 1;
        *(volatile char *)live[k] = 1;
    }
    for (int k = 0; k < WINDOW; k++) free(live[k]);
    return 0;
}
