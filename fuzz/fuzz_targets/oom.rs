//! `oom`: the ops of `ops`, with reservations, commits and decommits refused where the input says: every refusal must give null (or keep memory) and leave the allocator consistent.
#![no_main]

#[path = "shared/interpreter.rs"]
mod interpreter;
#[path = "shared/test_platform.rs"]
mod test_platform;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let target = test_platform::OnTestPlatform { a: pymalloc::Allocator::new(pymalloc_arena::TestPlatform::new()), faults: true };
    interpreter::run(&target, data);
});
