// A C++ program that churns the standard containers: std::string keys in a std::map, growing
// std::vectors, short-lived strings; operator new is libstdc++'s (calling malloc), operator
// delete the sized form (C++14's default). Prints a checksum that must not depend on the
// allocator. Used by `cargo run --release -p pymalloc-bench --bin preload`.
//
//   cpp_churn ROUNDS
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

static std::uint64_t next(std::uint64_t &s) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
}

struct Node {
    std::string name;
    std::vector<int> values;
};

int main(int argc, char **argv) {
    long rounds = argc > 1 ? std::atol(argv[1]) : 20;
    std::uint64_t seed = 0x9e3779b97f4a7c15ull, sum = 0;
    for (long r = 0; r < rounds; r++) {
        std::map<std::string, std::vector<std::uint32_t>> index;
        std::vector<std::unique_ptr<Node>> nodes;
        for (int i = 0; i < 60000; i++) {
            std::uint64_t x = next(seed);
            std::string key = "key-" + std::to_string(x % 20000);
            auto &list = index[key];
            list.push_back(static_cast<std::uint32_t>(x >> 32));
            if (x % 3 == 0) {
                auto node = std::make_unique<Node>();
                node->name = key + std::string(x % 48, 'n');
                node->values.assign(x % 24, static_cast<int>(i));
                nodes.push_back(std::move(node));
            }
            if (x % 7 == 0 && !nodes.empty()) {
                std::size_t k = (x >> 20) % nodes.size();
                sum += nodes[k]->name.size() + nodes[k]->values.size();
                nodes[k] = std::move(nodes.back());
                nodes.pop_back();
            }
            if (x % 11 == 0) index.erase(key);
        }
        for (auto &kv : index) sum += kv.first.size() * kv.second.size();
    }
    std::printf("%llu\n", static_cast<unsigned long long>(sum));
    return 0;
}
