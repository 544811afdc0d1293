/* What a program asks its allocator about itself, under libpymalloc_override.so: mallinfo2,
 * mallinfo, malloc_stats and malloc_info, taken one after the other with nothing allocated
 * or freed between them (stdout is unbuffered, so printing allocates nothing), for the test
 * to compare. With the argument "oom", asks for more than any machine has and exits 0 if
 * that gave NULL with ENOMEM; with "phase MIB", allocates MIB MiB in blocks of 1000 bytes,
 * frees them all and prints the statistics table (for the policy options' effects). */
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SMALL 1000

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc > 1 && strcmp(argv[1], "oom") == 0) {
        errno = 0;
        void *p = malloc((size_t)1 << 62);
        return p == NULL && errno == ENOMEM ? 0 : 1;
    }
    if (argc > 2 && strcmp(argv[1], "phase") == 0) {
        int n = atoi(argv[2]) << 10;
        void **blocks = malloc(n * sizeof(void *));
        for (int i = 0; i < n; i++) {
            blocks[i] = malloc(1000);
            memset(blocks[i], 1, 1000);
        }
        for (int i = 0; i < n; i++)
            free(blocks[i]);
        free(blocks);
        malloc_stats();
        return 0;
    }
    static void *small[SMALL];
    for (int i = 0; i < SMALL; i++) {
        small[i] = malloc(100);
        memset(small[i], i, 100);
    }
    char *big = malloc(3 << 20);
    memset(big, 1, 3 << 20);
    /* A freed large block: cached unless PYMALLOC_LARGE_CACHE=0 (volatile, so that the
     * compiler keeps the pair). */
    char *volatile freed = malloc(1 << 20);
    freed[0] = 1;
    free(freed);

    struct mallinfo2 m = mallinfo2();
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    struct mallinfo m1 = mallinfo();
#pragma GCC diagnostic pop
    printf("mallinfo2 arena=%zu ordblks=%zu smblks=%zu hblks=%zu hblkhd=%zu usmblks=%zu "
           "fsmblks=%zu uordblks=%zu fordblks=%zu keepcost=%zu\n",
           m.arena, m.ordblks, m.smblks, m.hblks, m.hblkhd, m.usmblks, m.fsmblks,
           m.uordblks, m.fordblks, m.keepcost);
    printf("mallinfo arena=%d ordblks=%d smblks=%d hblks=%d hblkhd=%d usmblks=%d "
           "fsmblks=%d uordblks=%d fordblks=%d keepcost=%d\n",
           m1.arena, m1.ordblks, m1.smblks, m1.hblks, m1.hblkhd, m1.usmblks, m1.fsmblks,
           m1.uordblks, m1.fordblks, m1.keepcost);
    malloc_stats();
    if (malloc_info(0, stdout) != 0)
        return 2;
    errno = 0;
    if (malloc_info(1, stdout) != -1 || errno != EINVAL)
        return 3;

    for (int i = 0; i < SMALL; i++)
        free(small[i]);
    free(big);
    return 0;
}
