// C++ and C23 sized frees under LD_PRELOAD: libstdc++'s operator new calls malloc (or
// aligned_alloc), and the sized and aligned operator delete forms and free_sized /
// free_aligned_sized reach pymalloc's sized path, which checks the size against the block.
//
//   sized_delete            exercise every form; prints "ok"
//   sized_delete MODE       a mismatched free that must abort with a message
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <map>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#define CHECK(c)                                                           \
    do {                                                                   \
        if (!(c)) {                                                        \
            std::fprintf(stderr, "check failed: %s (line %d)\n", #c, __LINE__); \
            std::exit(1);                                                  \
        }                                                                  \
    } while (0)

// glibc 2.36 declares neither; the preloaded library defines both.
extern "C" void free_sized(void *, std::size_t) __attribute__((weak));
extern "C" void free_aligned_sized(void *, std::size_t, std::size_t) __attribute__((weak));

struct alignas(64) Wide {
    char bytes[200];
};

struct Counted {
    std::string name;
    ~Counted() {}
};

int main(int argc, char **argv) {
    CHECK(dlsym(RTLD_DEFAULT, "pymalloc_write_stats") != nullptr);
    CHECK(free_sized != nullptr && free_aligned_sized != nullptr);
    if (argc > 1) {
        const char *mode = argv[1];
        if (std::strcmp(mode, "delete-wrong-size") == 0) {
            void *p = ::operator new(100);
            ::operator delete(p, 3000);
        } else if (std::strcmp(mode, "delete-array-wrong-size") == 0) {
            void *p = ::operator new[](48);
            ::operator delete[](p, 8);
        } else if (std::strcmp(mode, "delete-aligned-wrong-size") == 0) {
            void *p = ::operator new(64, std::align_val_t(64));
            ::operator delete(p, 1000, std::align_val_t(64));
        } else if (std::strcmp(mode, "free-sized-wrong-size") == 0) {
            free_sized(std::malloc(40), 4000);
        } else if (std::strcmp(mode, "free-sized-large-wrong-size") == 0) {
            free_sized(std::malloc(1 << 20), 3 << 20);
        } else if (std::strcmp(mode, "free-sized-twice") == 0) {
            void *keep = std::malloc(40);
            void *p = std::malloc(40);
            void *q = std::malloc(40);
            free_sized(p, 40);
            free_sized(q, 40);
            free_sized(p, 40);
            std::free(keep);
        } else {
            std::fprintf(stderr, "unknown mode %s\n", mode);
            return 2;
        }
        return 0;
    }
    // Every size, with the size it was allocated with.
    for (std::size_t n = 0; n < 70000; n += (n < 1024 ? 1 : 997)) {
        void *p = ::operator new(n);
        std::memset(p, 1, n);
        ::operator delete(p, n);
        char *a = new char[n + 1];
        delete[] a;
        void *c = std::malloc(n);
        free_sized(c, n);
        void *z = std::calloc(n + 1, 1);
        free_sized(z, n + 1);
        void *r = std::realloc(std::malloc(8), n + 1);
        free_sized(r, n + 1);
    }
    // Over-aligned types and aligned C blocks.
    for (int i = 0; i < 1000; i++) {
        Wide *w = new Wide();
        CHECK(reinterpret_cast<std::uintptr_t>(w) % 64 == 0);
        delete w;
        Wide *ws = new Wide[i % 7 + 1];
        CHECK(reinterpret_cast<std::uintptr_t>(ws) % 64 == 0);
        delete[] ws;
        for (std::size_t align = 16; align <= 65536; align *= 4) {
            std::size_t size = align * (1 + i % 3);
            void *p = std::aligned_alloc(align, size);
            CHECK(p && reinterpret_cast<std::uintptr_t>(p) % align == 0);
            free_aligned_sized(p, align, size);
            void *q = ::operator new(size + 3, std::align_val_t(align));
            ::operator delete(q, size + 3, std::align_val_t(align));
        }
    }
    // Arrays with a cookie (a type with a destructor), and the containers.
    for (int i = 0; i < 2000; i++) {
        Counted *cs = new Counted[i % 9 + 1];
        cs[0].name = std::string(i % 100, 'x');
        delete[] cs;
    }
    std::map<std::string, std::vector<int>> m;
    for (int i = 0; i < 20000; i++) {
        m[std::to_string(i * 7919 % 5000)].push_back(i);
        if (i % 3 == 0) m.erase(std::to_string(i % 5000));
    }
    // Exceptions unwind as usual (libstdc++'s unwinder; pymalloc's library carries its own
    // copy, unexported).
    int caught = 0;
    for (int i = 0; i < 100; i++) {
        try {
            throw std::runtime_error(std::string(i, 'e'));
        } catch (const std::runtime_error &e) {
            caught += std::string(e.what()).size() == static_cast<std::size_t>(i);
        }
    }
    CHECK(caught == 100);
    std::size_t total = 0;
    for (auto &kv : m) total += kv.second.size() + kv.first.size();
    CHECK(total > 0);
    std::puts("ok");
    return 0;
}
