/* The C test of libpymalloc_override.so: every exported function (and glibc's __libc_* names
 * of them) and its edge cases, allocation
 * before main, the dynamic loader, threads that free each other's blocks, and fork.
 * Built and run under LD_PRELOAD by override/tests/preload.rs.
 *
 *   abi_test              run every check; print "ok" and exit 0, or name the failed check
 *   abi_test invalid-free free a pointer pymalloc never handed out (must abort)
 *   abi_test interior-free free a pointer into the middle of a block (must abort)
 *   abi_test double-free   free a block twice in a row (must abort)
 *   abi_test double-free-later  free a block again after freeing another (must abort)
 *   abi_test <bad-free>    one of the bad frees in bad_frees below (must abort)
 *   abi_test unbackable N  ask for N bytes through every entry point; print what each gave
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "abi_test: check failed at line %d: %s\n", __LINE__, \
                    #cond);                                                      \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

/* Hides a size from the compiler, which would otherwise fold or warn about absurd requests. */
static size_t opaque(size_t x) {
    volatile size_t v = x;
    return v;
}

static int aligned(const void *p, size_t align) { return ((uintptr_t)p & (align - 1)) == 0; }

static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seed + i * 31);
}

static int filled(const unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(seed + i * 31)) return 0;
    return 1;
}

/* Allocation before main, from a constructor. */
static char *early;
__attribute__((constructor)) static void before_main(void) {
    early = malloc(100);
    if (early) strcpy(early, "allocated before main");
}

static void test_loaded(void) {
    /* The library really is the allocator: its own symbol is there, and malloc is its. */
    void *marker = dlsym(RTLD_DEFAULT, "pymalloc_write_stats");
    CHECK(marker != NULL);
    Dl_info a, b;
    CHECK(dladdr(marker, &a) && dladdr(dlsym(RTLD_DEFAULT, "malloc"), &b));
    CHECK(strcmp(a.dli_fname, b.dli_fname) == 0);
    CHECK(early && strcmp(early, "allocated before main") == 0);
    free(early);
}

/* glibc's public __libc_* names of its allocation functions (not in its headers). */
void *__libc_malloc(size_t);
void *__libc_calloc(size_t, size_t);
void *__libc_realloc(void *, size_t);
void __libc_free(void *);
void *__libc_memalign(size_t, size_t);
void *__libc_valloc(size_t);
void *__libc_pvalloc(size_t);

/* A program that calls glibc's __libc_* names (or the old cfree) gets pymalloc's, so that
 * blocks pass between them and the plain names. */
static void test_libc_names(void) {
    static const char *const names[] = {"__libc_malloc", "__libc_calloc", "__libc_realloc",
                                        "__libc_free",   "__libc_memalign", "__libc_valloc",
                                        "__libc_pvalloc", "cfree"};
    Dl_info ours, theirs;
    CHECK(dladdr(dlsym(RTLD_DEFAULT, "malloc"), &ours));
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        void *f = dlsym(RTLD_DEFAULT, names[i]);
        CHECK(f && dladdr(f, &theirs) && strcmp(ours.dli_fname, theirs.dli_fname) == 0);
    }
    unsigned char *p = __libc_malloc(100);
    CHECK(p);
    fill(p, 100, 7);
    p = realloc(p, 5000);
    CHECK(p && filled(p, 100, 7));
    free(p);
    p = malloc(300);
    CHECK(p);
    fill(p, 300, 9);
    p = __libc_realloc(p, 40);
    CHECK(p && filled(p, 40, 9));
    __libc_free(p);
    p = __libc_calloc(10, 100);
    CHECK(p);
    for (int i = 0; i < 1000; i++) CHECK(p[i] == 0);
    free(p);
    void *a = __libc_memalign(256, 100), *v = __libc_valloc(10), *pv = __libc_pvalloc(10);
    long page = sysconf(_SC_PAGESIZE);
    CHECK(a && aligned(a, 256) && v && aligned(v, page) && pv && aligned(pv, page));
    CHECK(malloc_usable_size(pv) >= (size_t)page);
    free(a);
    __libc_free(v);
    void (*old_cfree)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "cfree");
    old_cfree(pv);
}

static void test_malloc_free(void) {
    void *z1 = malloc(0), *z2 = malloc(0);
    CHECK(z1 && z2 && z1 != z2);
    free(z1);
    free(z2);
    free(NULL);

    static const size_t sizes[] = {1,     8,      15,     16,      17,      100,     512,
                                   513,   1000,   4096,   10000,   65536,   100000,  262144,
                                   262145, 300000, 1 << 20, 5 << 20, 16 << 20};
    enum { N = sizeof sizes / sizeof sizes[0] };
    unsigned char *blocks[N];
    for (unsigned i = 0; i < N; i++) {
        blocks[i] = malloc(sizes[i]);
        CHECK(blocks[i] && aligned(blocks[i], 16));
        CHECK(malloc_usable_size(blocks[i]) >= sizes[i]);
        fill(blocks[i], sizes[i], i);
    }
    for (unsigned i = 0; i < N; i++) {
        CHECK(filled(blocks[i], sizes[i], i));
        /* Every usable byte may be written. */
        memset(blocks[i], 0x5a, malloc_usable_size(blocks[i]));
        free(blocks[i]);
    }
    CHECK(malloc_usable_size(NULL) == 0);

    errno = 0;
    CHECK(malloc(opaque(SIZE_MAX)) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(opaque(PTRDIFF_MAX)) == NULL && errno == ENOMEM);
}

static void test_calloc(void) {
    /* Dirty a block, free it, and get it back through calloc: it must read zero. */
    for (size_t size = 16; size <= (1 << 20); size *= 4) {
        unsigned char *p = malloc(size);
        CHECK(p);
        memset(p, 0xab, size);
        free(p);
        p = calloc(1, size);
        CHECK(p);
        for (size_t i = 0; i < size; i++) CHECK(p[i] == 0);
        free(p);
    }
    unsigned char *q = calloc(1000, 3);
    CHECK(q);
    for (int i = 0; i < 3000; i++) CHECK(q[i] == 0);
    free(q);
    void *z = calloc(0, 7);
    CHECK(z);
    free(z);
    errno = 0;
    CHECK(calloc(opaque(SIZE_MAX / 2), 3) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc(opaque(SIZE_MAX), opaque(SIZE_MAX)) == NULL && errno == ENOMEM);
}

static void test_realloc(void) {
    /* Grow one byte at a time through the small classes, then by doubling through medium and
     * large, then shrink back: the contents survive every step. */
    unsigned char *p = realloc(NULL, 1);
    CHECK(p);
    p[0] = 7;
    size_t size = 1;
    for (size_t n = 2; n <= 600; n++) {
        p = realloc(p, n);
        CHECK(p && aligned(p, 16));
        p[n - 1] = (unsigned char)n;
        size = n;
    }
    for (size_t n = 2; n <= 600; n++) CHECK(p[n - 1] == (unsigned char)n);
    fill(p, size, 3);
    for (size_t n = 1024; n <= (32u << 20); n *= 2) {
        p = realloc(p, n);
        CHECK(p && filled(p, size, 3));
        fill(p, n, 3);
        size = n;
    }
    for (size_t n = size / 3; n >= 10; n /= 3) {
        p = realloc(p, n);
        CHECK(p && filled(p, n, 3));
        size = n;
    }
    /* A failed realloc leaves the block as it was. */
    errno = 0;
    CHECK(realloc(p, opaque(SIZE_MAX - 4096)) == NULL && errno == ENOMEM);
    CHECK(filled(p, size, 3));
    /* realloc(p, 0) frees p and returns NULL, as glibc's. */
    CHECK(realloc(p, 0) == NULL);

    /* A block from memalign may be resized like any other. */
    unsigned char *m = memalign(4096, 100);
    CHECK(m && aligned(m, 4096));
    fill(m, 100, 9);
    m = realloc(m, 5000);
    CHECK(m && filled(m, 100, 9));
    free(m);
}

static void test_reallocarray(void) {
    int *a = reallocarray(NULL, 10, sizeof(int));
    CHECK(a);
    for (int i = 0; i < 10; i++) a[i] = i;
    a = reallocarray(a, 100000, sizeof(int));
    CHECK(a);
    for (int i = 0; i < 10; i++) CHECK(a[i] == i);
    errno = 0;
    CHECK(reallocarray(a, opaque(SIZE_MAX / 2), 4) == NULL && errno == ENOMEM);
    for (int i = 0; i < 10; i++) CHECK(a[i] == i);
    free(a);
}

static void test_aligned(void) {
    for (size_t align = sizeof(void *); align <= (4u << 20); align *= 2) {
        static const size_t sizes[] = {0, 1, 100, 5000, 300000};
        for (unsigned i = 0; i < 5; i++) {
            void *p = (void *)1;
            CHECK(posix_memalign(&p, align, sizes[i]) == 0);
            CHECK(p && aligned(p, align));
            CHECK(malloc_usable_size(p) >= sizes[i]);
            memset(p, 1, sizes[i]);
            free(p);

            p = aligned_alloc(align, sizes[i]);
            CHECK(p && aligned(p, align));
            memset(p, 2, sizes[i]);
            free(p);

            p = memalign(align, sizes[i]);
            CHECK(p && aligned(p, align));
            memset(p, 3, sizes[i]);
            free(p);
        }
    }
    /* Bad alignments: posix_memalign returns EINVAL and leaves *out alone. */
    void *untouched = (void *)&untouched;
    CHECK(posix_memalign(&untouched, 3, 10) == EINVAL && untouched == (void *)&untouched);
    CHECK(posix_memalign(&untouched, sizeof(void *) / 2, 10) == EINVAL);
    CHECK(posix_memalign(&untouched, 0, 10) == EINVAL);
    CHECK(posix_memalign(&untouched, 64, opaque(SIZE_MAX - 100)) == ENOMEM);
    CHECK(untouched == (void *)&untouched);
    errno = 0;
    CHECK(aligned_alloc(opaque(24), 100) == NULL && errno == EINVAL);
    /* memalign rounds an alignment that is not a power of two up, as glibc's. */
    void *m = memalign(24, 100);
    CHECK(m && aligned(m, 32));
    free(m);
    errno = 0;
    CHECK(memalign(opaque(SIZE_MAX), 10) == NULL && errno == EINVAL);

    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void *v = valloc(10);
    CHECK(v && aligned(v, page));
    free(v);
    void *pv = pvalloc(page + 1);
    CHECK(pv && aligned(pv, page) && malloc_usable_size(pv) >= 2 * page);
    memset(pv, 4, 2 * page);
    free(pv);
    pv = pvalloc(0);
    CHECK(pv && aligned(pv, page));
    free(pv);
    errno = 0;
    CHECK(pvalloc(opaque(SIZE_MAX - 1)) == NULL && errno == ENOMEM);
}

/* A zero-size request at any alignment, through each aligned entry point, gets a block of
   its own: never a live block, never another such request's, and the live blocks of every
   small size around it keep their bytes. */
static void test_aligned_zero_size(void) {
    enum { LIVE = 512, ZERO = 3 * 16 };
    static unsigned char *live[LIVE];
    static size_t live_size[LIVE];
    static void *zero[ZERO];
    for (int i = 0; i < LIVE; i++) {
        live_size[i] = 16 * (size_t)(1 + i % 16);
        live[i] = malloc(live_size[i]);
        CHECK(live[i]);
        fill(live[i], live_size[i], (unsigned)i);
    }
    int n = 0;
    for (size_t align = 16; align <= ((size_t)1 << 19); align *= 2) {
        CHECK(posix_memalign(&zero[n], align, 0) == 0 && zero[n] && aligned(zero[n], align));
        n++;
        zero[n] = aligned_alloc(align, 0);
        CHECK(zero[n] && aligned(zero[n], align));
        n++;
        zero[n] = memalign(align, 0);
        CHECK(zero[n] && aligned(zero[n], align));
        n++;
    }
    for (int z = 0; z < n; z++) {
        unsigned char *p = zero[z];
        for (int y = 0; y < z; y++) CHECK(zero[y] != zero[z]);
        for (int i = 0; i < LIVE; i++) CHECK(p < live[i] || p >= live[i] + live_size[i]);
    }
    for (int i = 0; i < LIVE; i++) CHECK(filled(live[i], live_size[i], (unsigned)i));
    for (int z = 0; z < n; z++) free(zero[z]);
    /* What the next requests get is no live block either. */
    for (int i = 0; i < LIVE; i++) {
        unsigned char *p = malloc(live_size[i]);
        for (int j = 0; j < LIVE; j++) CHECK(p != live[j]);
        free(p);
    }
    for (int i = 0; i < LIVE; i++) {
        CHECK(filled(live[i], live_size[i], (unsigned)i));
        free(live[i]);
    }
}

/* Threads pass blocks around a ring: each frees what its neighbour allocated. */
enum { THREADS = 8, ROUNDS = 20000, SLOTS = 64 };
static void *mailbox[THREADS][SLOTS];
static pthread_mutex_t locks[THREADS];

static void *worker(void *arg) {
    unsigned id = (unsigned)(uintptr_t)arg, next = (id + 1) % THREADS;
    unsigned seed = id * 7919 + 1;
    for (unsigned r = 0; r < ROUNDS; r++) {
        seed = seed * 1103515245 + 12345;
        size_t size = 1 + (seed >> 8) % (r % 100 == 0 ? 200000 : 2000);
        unsigned char *p = malloc(size);
        if (!p) return (void *)1;
        p[0] = (unsigned char)size;
        p[size - 1] = (unsigned char)(size >> 3);
        /* Leave it in the neighbour's mailbox; free what was there. */
        unsigned slot = (seed >> 4) % SLOTS;
        pthread_mutex_lock(&locks[next]);
        unsigned char *old = mailbox[next][slot];
        mailbox[next][slot] = p;
        pthread_mutex_unlock(&locks[next]);
        if (old) {
            size_t n = malloc_usable_size(old);
            if (n == 0) return (void *)2;
            free(old);
        }
    }
    return NULL;
}

static void test_threads(void) {
    pthread_t t[THREADS];
    for (unsigned i = 0; i < THREADS; i++) pthread_mutex_init(&locks[i], NULL);
    for (unsigned i = 0; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i) == 0);
    for (unsigned i = 0; i < THREADS; i++) {
        void *result;
        CHECK(pthread_join(t[i], &result) == 0 && result == NULL);
    }
    /* Blocks that outlived their threads are freed here. */
    for (unsigned i = 0; i < THREADS; i++)
        for (unsigned s = 0; s < SLOTS; s++) free(mailbox[i][s]);
}

static void *spinner(void *arg) {
    volatile int *stop = arg;
    while (!*stop) free(malloc(64));
    return NULL;
}

static void test_fork(void) {
    /* Fork while other threads allocate: the child allocates at once. */
    volatile int stop = 0;
    pthread_t t[2];
    for (int i = 0; i < 2; i++) CHECK(pthread_create(&t[i], NULL, spinner, (void *)&stop) == 0);
    for (int i = 0; i < 20; i++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            for (int j = 0; j < 1000; j++) free(malloc((size_t)j * 10 + 1));
            _exit(0);
        }
        int status;
        CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    stop = 1;
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
}

static void test_loader(void) {
    /* dlopen makes the dynamic loader allocate (and free) through us. */
    void *lib = dlopen("libm.so.6", RTLD_NOW | RTLD_LOCAL);
    CHECK(lib != NULL);
    CHECK(dlsym(lib, "cos") != NULL);
    CHECK(dlclose(lib) == 0);
    /* libc itself allocates through us: strdup, asprintf, getline, qsort's buffers. */
    char *s = strdup("pymalloc");
    CHECK(s && strcmp(s, "pymalloc") == 0);
    free(s);
    char *f = NULL;
    CHECK(asprintf(&f, "%d-%s", 42, "x") == 4 && strcmp(f, "42-x") == 0);
    free(f);
}

static void test_trim(void) {
    /* Freed large blocks stay cached until malloc_trim gives them back; then nothing is
       left to give. */
    void *big[4];
    for (int i = 0; i < 4; i++) {
        big[i] = malloc(1 << 20);
        CHECK(big[i] != NULL);
        memset(big[i], i, 1 << 20);
    }
    for (int i = 0; i < 4; i++) free(big[i]);
    CHECK(malloc_trim(0) == 1);
    CHECK(malloc_trim(0) == 0);
}

/* Bad frees that must abort with a message (each glibc catches too); each leaves the program
   thinking a block is free that the allocator would otherwise hand out twice. Pointers pass
   through volatile variables so that the compiler cannot see the misuse. */
static void *volatile sink;

static void *freer(void *arg) {
    free(arg);
    return NULL;
}

static void free_in_another_thread(void *p) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, freer, p) == 0);
    CHECK(pthread_join(t, NULL) == 0);
}

/* A block of `size` bytes at least `offset` bytes into which lies on an `align` boundary, as
   memalign's results do. */
static unsigned char *block_with_aligned_inside(size_t size, size_t offset, size_t align) {
    for (int i = 0; i < 10000; i++) {
        unsigned char *p = malloc(size);
        CHECK(p && malloc_usable_size(p) == size);
        if (aligned(p + offset, align)) return p;
    }
    CHECK(!"no block with an aligned interior pointer");
    return NULL;
}

/* A thread's first blocks of a size come from pools all threads share; these take the rest
   of that share, so that the next block of `size` comes from the thread's own pool. */
static void past_the_shared_blocks(size_t size) {
    for (size_t taken = 0; taken <= 4096; taken += size) sink = malloc(size);
}

/* realloc of a block already freed, to `new_size` bytes: in place within its class (44), or
   moving (4000). `stay` keeps the pool in use, and `keep`, freed after, heads its freelist. */
static void realloc_of_freed(size_t new_size) {
    char *volatile p = malloc(40), *volatile keep = malloc(40), *volatile stay = malloc(40);
    free(p);
    free(keep);
    sink = realloc(p, new_size);
    (void)stay;
}

static int bad_free(const char *mode) {
    if (strcmp(mode, "usable-size-of-freed") == 0) {
        /* Asked about after its free (`keep` keeps the pool in use): a use after free. */
        char *volatile p = malloc(40), *volatile keep = malloc(40);
        free(p);
        sink = (void *)malloc_usable_size(p);
        (void)keep;
        return 1;
    }
    if (strcmp(mode, "free-after-realloc-moved") == 0) {
        /* realloc freed the old block when it moved it; free(old) frees it again. */
        /* `stay` keeps the pool in use, and `keep`, freed after, heads its freelist. */
        char *volatile old = malloc(40), *volatile keep = malloc(40), *volatile stay = malloc(40);
        char *volatile moved = realloc(old, 4000);
        CHECK(moved && moved != old && stay);
        free(keep);
        free(old);
        return 1;
    }
    if (strcmp(mode, "realloc-of-freed-moving") == 0) {
        realloc_of_freed(4000);
        return 1;
    }
    if (strcmp(mode, "realloc-of-freed-in-place") == 0) {
        realloc_of_freed(44);
        return 1;
    }
    if (strcmp(mode, "free-of-uncarved") == 0) {
        /* A size nothing else uses: its pool has carved one block; the next ones lie ahead. */
        unsigned char *p = malloc(3000);
        size_t size = malloc_usable_size(p);
        void *volatile ahead = p + 3 * size;
        free(ahead);
        return 1;
    }
    if (strcmp(mode, "free-after-remote-free-taken-back") == 0) {
        /* Another thread frees the block; its heap takes it back while finding pools for
           other sizes; the owner frees it again. */
        past_the_shared_blocks(48);
        char *volatile p = malloc(48), *volatile keep = malloc(48), *volatile stay = malloc(48);
        free_in_another_thread(p);
        for (int i = 0; i < 400; i++) sink = malloc(1000 + (size_t)(i % 40) * 600);
        free(keep); /* p is no longer the freelist's head, and `stay` keeps the pool in use */
        free(p);
        (void)stay;
        return 1;
    }
    if (strcmp(mode, "free-while-remote-free-waits") == 0) {
        past_the_shared_blocks(48);
        char *volatile p = malloc(48), *volatile keep = malloc(48), *volatile stay = malloc(48);
        free_in_another_thread(p);
        free(p);
        (void)keep;
        (void)stay;
        return 1;
    }
    if (strcmp(mode, "shared-block-freed-by-two-threads") == 0) {
        /* A first block of its size, from the shared pools: freed in another thread, then
           here. */
        char *volatile p = malloc(48), *volatile keep = malloc(48), *volatile stay = malloc(48);
        free_in_another_thread(p);
        free(keep);
        free(p);
        (void)stay;
        return 1;
    }
    if (strcmp(mode, "realloc-of-freed-shared-block") == 0) {
        char *volatile p = malloc(40), *volatile keep = malloc(40);
        free_in_another_thread(p);
        sink = realloc(p, 44);
        (void)keep;
        return 1;
    }
    if (strcmp(mode, "interior-48+16") == 0) {
        void *volatile inside = block_with_aligned_inside(48, 16, 32) + 16;
        free(inside);
        return 1;
    }
    if (strcmp(mode, "interior-112+16") == 0) {
        void *volatile inside = block_with_aligned_inside(112, 16, 32) + 16;
        free(inside);
        return 1;
    }
    if (strcmp(mode, "interior-112+48") == 0) {
        void *volatile inside = block_with_aligned_inside(112, 48, 64) + 48;
        free(inside);
        return 1;
    }
    return 0;
}

/* Requests for `size` bytes, more than the machine can back: one line per entry point, saying
 * whether it gave a block, or null and with which errno. The test compares them with glibc's. */
static void unbackable(size_t size) {
    size = opaque(size);
    void *p;
    char *small = malloc(100), *large = malloc(1 << 20);
    CHECK(small && large);
    fill((unsigned char *)small, 100, 5);
    fill((unsigned char *)large, 1 << 20, 6);
#define REPORT(name, call)                                                            \
    do {                                                                              \
        errno = 0;                                                                    \
        p = (call);                                                                   \
        printf("%s: %s\n", name, p ? "a block" : errno == ENOMEM ? "null, ENOMEM" : "null"); \
        if (p) free(p);                                                               \
    } while (0)
    REPORT("malloc", malloc(size));
    REPORT("calloc(1, n)", calloc(1, size));
    REPORT("calloc(n / 4096, 4096)", calloc(size / 4096, 4096));
    REPORT("aligned_alloc(4096, n)", aligned_alloc(4096, size));
    REPORT("memalign(1 << 21, n)", memalign(1 << 21, size));
    REPORT("valloc(n)", valloc(size));
    errno = 0;
    p = NULL;
    int rc = posix_memalign(&p, 64, size);
    printf("posix_memalign(64, n): %s\n", rc == ENOMEM && !p ? "ENOMEM" : rc ? "error" : "a block");
    if (!rc) free(p);
    /* A failed realloc leaves the block as it was. */
    errno = 0;
    p = realloc(small, size);
    printf("realloc(small, n): %s\n", p ? "a block" : errno == ENOMEM ? "null, ENOMEM" : "null");
    if (p) small = p; else CHECK(filled((unsigned char *)small, 100, 5));
    errno = 0;
    p = realloc(large, size);
    printf("realloc(large, n): %s\n", p ? "a block" : errno == ENOMEM ? "null, ENOMEM" : "null");
    if (p) large = p; else CHECK(filled((unsigned char *)large, 1 << 20, 6));
#undef REPORT
    free(small);
    free(large);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "invalid-free") == 0) {
        static char not_ours[64];
        void *volatile bad = not_ours + 16;
        free(bad);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "double-free") == 0) {
        char *volatile p = malloc(40), *volatile q = malloc(40);
        free(p);
        free(p);
        free(q);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "double-free-later") == 0) {
        char *volatile p = malloc(40), *volatile q = malloc(40), *volatile r = malloc(40);
        free(p);
        free(q);
        free(p);
        free(r);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "interior-free") == 0) {
        char *p = malloc(100);
        void *volatile inside = p + 8;
        free(inside);
        return 0;
    }
    if (argc > 2 && strcmp(argv[1], "unbackable") == 0) {
        unbackable(strtoull(argv[2], NULL, 0));
        return 0;
    }
    if (argc > 1 && bad_free(argv[1])) return 0;
    test_loaded();
    test_libc_names();
    test_malloc_free();
    test_calloc();
    test_realloc();
    test_reallocarray();
    test_aligned();
    test_aligned_zero_size();
    test_threads();
    test_fork();
    test_loader();
    test_trim();
    puts("ok");
    return 0;
}
