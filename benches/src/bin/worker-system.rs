//! The benchmark worker with system as the global allocator.

#[global_allocator]
static GLOBAL: std::alloc::System = std::alloc::System;

fn main() {
    pymalloc_bench::worker_main("system");
}
