//! The benchmark worker with pymalloc as the global allocator.

#[global_allocator]
static GLOBAL: pymalloc::PyMalloc = pymalloc::PyMalloc;

fn main() {
    pymalloc_bench::worker_main("pymalloc");
}
