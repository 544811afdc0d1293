/* Blocks of 1 to 32 MiB allocated, written (a byte per page) and freed, one at a time, in a
 * loop: what a program that builds a big buffer per request does. Prints a checksum.
 *
 * Used by `cargo run --release -p pymalloc-bench --bin preload`; the main table has its Rust
 * twin, `large-loop`.
 *
 *   large_loop ITERATIONS
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    unsigned long n = argc > 1 ? strtoul(argv[1], 0, 10) : 2000;
    uint64_t s = 0x2545F4914F6CDD1Dull, sum = 0;
    for (unsigned long i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        size_t size = ((size_t)1 << 20) + (size_t)(s % (31u << 20));
        unsigned char *p = malloc(size);
        if (!p) return 1;
        for (size_t at = 0; at < size; at += 4096) p[at] = (unsigned char)(i + at);
        p[size - 1] = (unsigned char)i;
        sum += p[(size / 2) & ~(size_t)4095] + p[size - 1];
        free(p);
    }
    printf("%llu\n", (unsigned long long)sum);
    return 0;
}
