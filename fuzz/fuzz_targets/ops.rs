//! `ops`: alloc / alloc_zeroed / realloc / dealloc / check on an instance over the test platform.
#![no_main]

#[path = "shared/interpreter.rs"]
mod interpreter;
#[path = "shared/test_platform.rs"]
mod test_platform;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let target = test_platform::OnTestPlatform { a: pymalloc::Allocator::new(pymalloc_arena::TestPlatform::new()), faults: false };
    interpreter::run(&target, data);
});
