/* Heap attacks in C, one per argument, for the hardened library (`--features secure`) under
 * LD_PRELOAD: each must end in an abort with pymalloc's message or a fault on a guard page.
 * Exits 0 ("survived") if the attack went unnoticed. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void free_sized(void *ptr, size_t size) __attribute__((weak));

static volatile char sink;
static uint64_t target[8];

/* Two blocks of `size` bytes with `b` right after `a` (`capacity` apart). */
static void neighbours(size_t size, size_t capacity, char **a, char **b) {
    char *all[64];
    for (int i = 0; i < 64; i++) all[i] = malloc(size);
    for (int i = 0; i < 64; i++)
        for (int j = 0; j < 64; j++)
            if (all[j] == all[i] + capacity) {
                *a = all[i];
                *b = all[j];
                return;
            }
    fprintf(stderr, "no neighbours\n");
    exit(2);
}

/* A block of `size` bytes that is not the first of its 16 KiB pool (a small class's first
 * block starts 48 bytes into it, a medium class's at its start). */
static char *not_first(size_t size) {
    for (;;) {
        char *p = malloc(size);
        if ((uintptr_t)p % 16384 > 48) return p;
    }
}

static void *free_it(void *p) {
    free(p);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    const char *attack = argv[1];
    if (!strcmp(attack, "overflow-1")) {
        char *p = malloc(36);
        p[36] = 0; /* an off-by-one NUL */
        free(p);
    } else if (!strcmp(attack, "overflow-32-memcpy")) {
        char *p = malloc(100);
        char source[132];
        memset(source, 'A', sizeof source);
        memcpy(p, source, sizeof source);
        free(p);
    } else if (!strcmp(attack, "underflow-1")) {
        char *p = not_first(40);
        p[-1] = 0; /* the last byte of the block before: its tag's, never zero (any other
                      value is caught but with a chance of 1 in 256: the byte held it) */
        free(p);
    } else if (!strcmp(attack, "underflow-32")) {
        char *p = not_first(100);
        memset(p - 32, 0, 32);
        free(p);
    } else if (!strcmp(attack, "freelist-poisoning")) {
        char *a, *b;
        neighbours(40, 48, &a, &b);
        free(b);
        *(uint64_t **)(a + 48) = target; /* a's overflow rewrites b's link */
        (void)malloc(40);
        (void)malloc(40);
    } else if (!strcmp(attack, "use-after-free-link")) {
        char *p = malloc(40);
        free(p);
        *(uint64_t **)p = target;
        (void)malloc(40);
        (void)malloc(40);
    } else if (!strcmp(attack, "use-after-free-write")) {
        char *p = malloc(200);
        free(p);
        p[40] = 1;
        (void)malloc(200);
    } else if (!strcmp(attack, "double-free-between")) {
        char *a = malloc(40), *b = malloc(40);
        free(a);
        free(b);
        free(a);
    } else if (!strcmp(attack, "double-free-threads")) {
        char *p = malloc(40);
        pthread_t t;
        pthread_create(&t, NULL, free_it, p);
        pthread_join(t, NULL);
        free(p);
    } else if (!strcmp(attack, "forged-inside")) {
        char *p = malloc(200);
        free(p + 64);
    } else if (!strcmp(attack, "forged-outside")) {
        static uint64_t fake[64];
        free(&fake[2]);
    } else if (!strcmp(attack, "sized-free-mismatch")) {
        char *p = malloc(40);
        if (!free_sized) return 3;
        free_sized(p, 36);
    } else if (!strcmp(attack, "large-overflow")) {
        char *p = malloc(1 << 20);
        memset(p, 'A', 2 << 20);
    } else if (!strcmp(attack, "zero-size-write")) {
        char *p = malloc(0);
        *(volatile char *)p = 1;
    } else if (!strcmp(attack, "zero-size-read")) {
        char *p = malloc(0);
        sink = *(volatile char *)p;
    } else if (!strcmp(attack, "realloc-freed")) {
        char *p = malloc(40);
        free(p);
        p = realloc(p, 100);
    } else {
        fprintf(stderr, "unknown attack %s\n", attack);
        return 2;
    }
    printf("survived\n");
    return 0;
}
