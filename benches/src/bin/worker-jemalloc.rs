//! The benchmark worker with jemalloc as the global allocator.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    pymalloc_bench::worker_main("jemalloc");
}
