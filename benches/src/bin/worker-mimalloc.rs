//! The benchmark worker with mimalloc as the global allocator.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    pymalloc_bench::worker_main("mimalloc");
}
