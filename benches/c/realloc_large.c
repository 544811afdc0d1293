/* Blocks above 256 KiB grown, shrunk and freed with realloc, 64 of them live at a time: what
 * a program's growing and trimming buffers do. Each byte the block gains is written a page at
 * a time. Prints a checksum.
 *
 * Used by `cargo run --release -p pymalloc-bench --bin preload`; the main table has its Rust
 * twin, `realloc-large`.
 *
 *   realloc_large OPERATIONS
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

enum { SLOTS = 64 };

int main(int argc, char **argv) {
    unsigned long n = argc > 1 ? strtoul(argv[1], 0, 10) : 200000;
    uint64_t s = 0x9E3779B97F4A7C15ull, sum = 0;
    unsigned char *live[SLOTS] = {0};
    size_t sizes[SLOTS] = {0};
    for (unsigned long i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        unsigned k = s % SLOTS;
        if (live[k] && (s >> 32) % 4 == 0) {
            sum += live[k][0] + live[k][sizes[k] - 1];
            free(live[k]);
            live[k] = NULL;
            sizes[k] = 0;
            continue;
        }
        size_t size = (256u << 10) + 1 + (size_t)((s >> 8) % (4u << 20));
        unsigned char *p = realloc(live[k], size);
        if (!p) return 1;
        for (size_t at = sizes[k] < size ? sizes[k] : size; at < size; at += 4096) p[at] = (unsigned char)at;
        p[size - 1] = (unsigned char)i;
        sum += p[0];
        live[k] = p;
        sizes[k] = size;
    }
    for (unsigned k = 0; k < SLOTS; k++) free(live[k]);
    printf("%llu\n", (unsigned long long)sum);
    return 0;
}
