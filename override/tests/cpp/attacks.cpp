// C++ heap attacks for the hardened library under LD_PRELOAD: `delete` of the wrong type
// (through a base without a virtual destructor: the sized `operator delete` gets the base's
// size) and of an array with the single form. Each must abort with pymalloc's message.
#include <cstdio>
#include <cstring>

struct Base {
    long a;
};
struct Derived : Base {
    long more[12];
};

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    if (!std::strcmp(argv[1], "delete-wrong-type")) {
        Base *b = new Derived();
        delete b;
    } else if (!std::strcmp(argv[1], "delete-array-as-single")) {
        Base *b = new Base[10];
        delete b;
    } else {
        return 2;
    }
    std::printf("survived\n");
    return 0;
}
