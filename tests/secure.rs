//! The `secure` build against the classic heap attacks (`docs/security.md`): each test runs
//! its attack in a child process, through pymalloc's C functions, and expects the child to
//! abort with the protection's message, or to fault on a guard page. Then the properties the
//! protections rest on: links stored encoded, blocks carved in a random order.
//!
//! Run with `cargo test --features secure --test secure`.
#![cfg(feature = "secure")]

mod common;

use std::ffi::c_void;
use std::os::unix::process::ExitStatusExt;

use pymalloc::c_abi::{free, free_sized, malloc, malloc_usable_size, realloc};

/// How a child must die.
enum Death {
    /// `abort()` with this in its message.
    Abort(&'static str),
    /// A fault on a guard page.
    Fault,
}

/// Runs the test `name` in a child (which makes the attack) and checks how it died; in the
/// child, returns true: the caller then makes the attack.
fn attack(name: &str, death: Death) -> bool {
    if common::in_child() {
        return true;
    }
    let out = common::run_in_child(name);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match death {
        Death::Abort(message) => {
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGABRT),
                "{name}: {:?}\n{stderr}",
                out.status
            );
            assert!(stderr.contains(message), "{name}: stderr was:\n{stderr}");
        }
        Death::Fault => assert!(
            matches!(out.status.signal(), Some(libc::SIGSEGV | libc::SIGBUS)),
            "{name}: {:?}\n{stderr}",
            out.status
        ),
    }
    false
}

/// In the child: the attack was not caught. (The parent then sees a normal exit.)
fn survived() {
    std::process::exit(0);
}

const OVERFLOW: &str = "heap overflow";
const UNDERFLOW: &str = "heap underflow";
const AFTER_FREE: &str = "was written after it was freed";
const LINK: &str = "link was overwritten";
const LINK_OF_FREED: &str = "the link of a freed block was overwritten";
const DOUBLE: &str = "double free";
const INVALID: &str = "is no block of this allocator";
const SIZE: &str = "the size given to free does not match";

/// `count` blocks of `size` bytes.
fn blocks(count: usize, size: usize) -> Vec<*mut u8> {
    (0..count).map(|_| malloc(size).cast::<u8>()).collect()
}

/// Two blocks of `size` bytes, `(a, b)`, with `b` right after `a` in their pool: `a`'s
/// capacity (its class's size) apart.
fn neighbours(size: usize, capacity: usize) -> (*mut u8, *mut u8) {
    let all = blocks(64, size);
    for &a in &all {
        if let Some(&b) = all.iter().find(|&&b| b as usize == a as usize + capacity) {
            return (a, b);
        }
    }
    panic!("no two neighbouring blocks among 64");
}

/// A block of `size` bytes that is not the first of its pool (so a block precedes it).
fn not_first(size: usize) -> *mut u8 {
    let all = blocks(16, size);
    *all.iter()
        .find(|&&p| p as usize % pymalloc_pool::POOL_SIZE > pymalloc_pool::SMALL_FIRST_BLOCK)
        .unwrap()
}

#[test]
fn an_overflow_of_one_byte_is_caught_on_free() {
    if attack(
        "an_overflow_of_one_byte_is_caught_on_free",
        Death::Abort(OVERFLOW),
    ) {
        let p = malloc(36).cast::<u8>();
        // SAFETY: not safe: the attack, an off-by-one NUL. The byte lies in the block's
        // canary.
        unsafe {
            p.add(36).write(0);
            free(p.cast());
        }
        survived();
    }
}

#[test]
fn an_overflow_of_32_bytes_by_memcpy_is_caught_on_free() {
    if attack(
        "an_overflow_of_32_bytes_by_memcpy_is_caught_on_free",
        Death::Abort(OVERFLOW),
    ) {
        let p = malloc(100).cast::<u8>();
        let source = [0x41u8; 132];
        // SAFETY: not safe: the attack, 32 bytes past the end (into the canary and tag,
        // and the next block).
        unsafe {
            std::ptr::copy_nonoverlapping(source.as_ptr(), p, source.len());
            free(p.cast());
        }
        survived();
    }
}

#[test]
fn an_overflow_that_rewrites_the_size_word_is_caught_on_free() {
    if attack(
        "an_overflow_that_rewrites_the_size_word_is_caught_on_free",
        Death::Abort(OVERFLOW),
    ) {
        // 40 bytes in a 48-byte block: the last word is the tag, with the size in it.
        let p = malloc(40).cast::<u8>();
        // SAFETY: not safe: the attack, a size made larger so that the block overlaps the
        // next (as an attacker corrupting a chunk's size does).
        unsafe {
            p.add(40).cast::<u32>().write(0);
            free(p.cast());
        }
        survived();
    }
}

#[test]
fn an_off_by_one_nul_with_no_room_for_a_canary_is_caught_on_free() {
    if attack(
        "an_off_by_one_nul_with_no_room_for_a_canary_is_caught_on_free",
        Death::Abort(OVERFLOW),
    ) {
        // 40 bytes in a 48-byte block: the byte after them is the tag's first.
        let p = malloc(40).cast::<u8>();
        // SAFETY: not safe: the attack.
        unsafe {
            p.add(40).write(0);
            free(p.cast());
        }
        survived();
    }
}

#[test]
fn an_underflow_of_one_byte_is_caught_on_free() {
    if attack(
        "an_underflow_of_one_byte_is_caught_on_free",
        Death::Abort(UNDERFLOW),
    ) {
        let p = not_first(40);
        // SAFETY: not safe: the attack, a NUL into the last byte of the block before: its
        // tag's, never zero. (Any other value is caught unless the byte held it already: a
        // chance of 1 in 256.)
        unsafe {
            p.sub(1).write(0);
            free(p.cast());
        }
        survived();
    }
}

#[test]
fn an_underflow_of_32_bytes_is_caught_on_free() {
    if attack(
        "an_underflow_of_32_bytes_is_caught_on_free",
        Death::Abort(UNDERFLOW),
    ) {
        let p = not_first(100);
        // SAFETY: not safe: the attack.
        unsafe {
            p.sub(32).write_bytes(0, 32);
            free(p.cast());
        }
        survived();
    }
}

#[test]
fn freelist_poisoning_through_an_overflow_is_caught() {
    if attack(
        "freelist_poisoning_through_an_overflow_is_caught",
        Death::Abort(LINK),
    ) {
        let (a, b) = neighbours(40, 48);
        let target = [0u64; 8];
        // SAFETY: not safe: the attack. `b` freed is its pool's freelist head; `a`
        // overflows into its link, pointing it at the attacker's memory; two allocations
        // would then hand that memory out.
        unsafe {
            free(b.cast());
            a.add(48).cast::<*const u64>().write(target.as_ptr());
            let _ = malloc(40);
            let _ = malloc(40);
        }
        survived();
    }
}

#[test]
fn a_write_after_free_into_the_link_is_caught() {
    if attack(
        "a_write_after_free_into_the_link_is_caught",
        Death::Abort(LINK),
    ) {
        let all = blocks(4, 40);
        let target = [0u64; 8];
        // SAFETY: not safe: the attack, a dangling pointer's write into the freelist link.
        unsafe {
            free(all[1].cast());
            all[1].cast::<*const u64>().write(target.as_ptr());
            let _ = malloc(40);
            let _ = malloc(40);
        }
        survived();
    }
}

#[test]
fn a_write_after_free_into_the_data_is_caught_when_handed_out_again() {
    if attack(
        "a_write_after_free_into_the_data_is_caught_when_handed_out_again",
        Death::Abort(AFTER_FREE),
    ) {
        let p = malloc(200).cast::<u8>();
        // SAFETY: not safe: the attack, a dangling pointer's write into a field.
        unsafe {
            free(p.cast());
            p.add(40).write(1);
            let _ = malloc(200);
        }
        survived();
    }
}

#[test]
fn a_double_free_with_other_frees_between_is_caught() {
    if attack(
        "a_double_free_with_other_frees_between_is_caught",
        Death::Abort(DOUBLE),
    ) {
        let all = blocks(8, 40);
        // SAFETY: not safe: the attack (fastbin-dup style: a, b, a).
        unsafe {
            free(all[0].cast());
            free(all[1].cast());
            free(all[0].cast());
        }
        survived();
    }
}

#[test]
fn a_double_free_from_another_thread_is_caught() {
    if attack(
        "a_double_free_from_another_thread_is_caught",
        Death::Abort(DOUBLE),
    ) {
        let p = malloc(40) as usize;
        // SAFETY: not safe: the attack, the same block freed by two threads in turn.
        std::thread::spawn(move || unsafe { free(p as *mut c_void) })
            .join()
            .unwrap();
        // SAFETY: as above.
        unsafe { free(p as *mut c_void) };
        survived();
    }
}

#[test]
fn the_free_of_a_forged_block_inside_a_block_is_caught() {
    if attack(
        "the_free_of_a_forged_block_inside_a_block_is_caught",
        Death::Abort(INVALID),
    ) {
        let p = malloc(200).cast::<u8>();
        // SAFETY: not safe: the attack, a pointer into the middle of a block (a forged
        // chunk inside a buffer the attacker controls).
        unsafe { free(p.add(64).cast()) };
        survived();
    }
}

#[test]
fn the_free_of_a_forged_block_outside_the_heap_is_caught() {
    if attack(
        "the_free_of_a_forged_block_outside_the_heap_is_caught",
        Death::Abort(INVALID),
    ) {
        let fake = Box::new([0u64; 64]);
        // SAFETY: not safe: the attack, a fake chunk in memory pymalloc never handed out.
        unsafe { free(fake.as_ptr().add(2) as *mut c_void) };
        survived();
    }
}

#[test]
fn a_sized_free_of_the_wrong_size_is_caught() {
    if attack(
        "a_sized_free_of_the_wrong_size_is_caught",
        Death::Abort(SIZE),
    ) {
        let p = malloc(40);
        // SAFETY: not safe: the attack (C++'s `delete` through a pointer to the wrong
        // type, whose size is not the block's); both sizes are in the same class.
        unsafe { free_sized(p, 36) };
        survived();
    }
}

#[test]
fn a_large_overflow_faults_on_the_guard_page() {
    if attack("a_large_overflow_faults_on_the_guard_page", Death::Fault) {
        let p = malloc(1 << 20).cast::<u8>();
        // SAFETY: not safe: the attack, 1 MiB written past a 1 MiB block.
        unsafe { p.write_bytes(0x41, 2 << 20) };
        survived();
    }
}

#[test]
fn a_large_block_resized_in_place_keeps_its_bytes_and_its_guard_page() {
    if attack(
        "a_large_block_resized_in_place_keeps_its_bytes_and_its_guard_page",
        Death::Fault,
    ) {
        let mut p = malloc(1 << 20).cast::<u8>();
        // SAFETY: blocks of the sizes written; then the attack, past the last one's end.
        unsafe {
            p.write_bytes(7, 1 << 20);
            for size in [3 << 20, 600 << 10, 2 << 20] {
                p = realloc(p.cast(), size).cast();
                let kept = (1 << 20).min(size).min(600 << 10);
                assert!(std::slice::from_raw_parts(p, kept).iter().all(|&b| b == 7));
                assert_eq!(malloc_usable_size(p.cast()), size);
            }
            p.add(2 << 20).write_bytes(0x41, 1 << 20);
        }
        survived();
    }
}

#[test]
fn an_underflow_below_the_first_pool_faults_before_the_arenas_headers() {
    if attack(
        "an_underflow_below_the_first_pool_faults_before_the_arenas_headers",
        Death::Fault,
    ) {
        let p = malloc(100).cast::<u8>();
        let arena = p as usize & !(pymalloc_pool::ARENA_SIZE - 1);
        let pools = arena + pymalloc_pool::HEADER_SLOTS * pymalloc_pool::POOL_SIZE;
        // SAFETY: not safe: the attack, an underflow of 1 MiB from a block in the arena's
        // first slots, which runs into the guard page before the pools.
        unsafe { p.sub(p as usize - pools + 1).write(0) };
        survived();
    }
}

#[test]
fn a_write_to_a_zero_size_block_faults() {
    if attack("a_write_to_a_zero_size_block_faults", Death::Fault) {
        let p = malloc(0).cast::<u8>();
        assert!(!p.is_null());
        // SAFETY: not safe: the attack.
        unsafe { p.write_volatile(1) };
        survived();
    }
}

#[test]
fn a_read_of_a_zero_size_block_faults() {
    if attack("a_read_of_a_zero_size_block_faults", Death::Fault) {
        let p = malloc(0).cast::<u8>();
        // SAFETY: not safe: the attack.
        let byte = unsafe { p.read_volatile() };
        std::hint::black_box(byte);
        survived();
    }
}

#[test]
fn a_realloc_of_a_freed_block_is_caught() {
    if attack("a_realloc_of_a_freed_block_is_caught", Death::Abort(DOUBLE)) {
        let p = malloc(40);
        // SAFETY: not safe: the attack, a resize through a dangling pointer.
        unsafe {
            free(p);
            let _ = realloc(p, 100);
        }
        survived();
    }
}

#[test]
fn an_overwritten_link_of_a_block_freed_by_another_thread_is_caught() {
    if attack(
        "an_overwritten_link_of_a_block_freed_by_another_thread_is_caught",
        Death::Abort(LINK_OF_FREED),
    ) {
        // Past the first blocks of the class, which this thread's heap takes from the shared
        // heap's pools (freed from any thread straight into them): blocks of its own pools.
        let _first = blocks(pymalloc::SHARED_BYTES / 48 + 1, 40);
        let all: Vec<usize> = blocks(8, 40).into_iter().map(|p| p as usize).collect();
        let target = [0u64; 8];
        let target_addr = target.as_ptr() as usize;
        std::thread::spawn(move || {
            // SAFETY: not safe: the attack. Freed by another thread, the blocks wait for
            // their owner chained through their links; one link is overwritten.
            unsafe {
                for &p in &all {
                    free(p as *mut c_void);
                }
                (all[3] as *mut usize).write(target_addr);
            }
            // The thread's exit sends its blocks back; the owner takes them when it needs
            // a pool of the class.
        })
        .join()
        .unwrap();
        for _ in 0..10_000 {
            let _ = malloc(40);
        }
        survived();
    }
}

#[test]
fn blocks_in_use_keep_their_bytes_and_sizes() {
    let sizes = [
        0usize,
        1,
        8,
        15,
        16,
        17,
        40,
        100,
        1000,
        5000,
        70_000,
        300_000,
        3 << 20,
    ];
    let mut live = Vec::new();
    for (i, &n) in sizes.iter().cycle().take(400).enumerate() {
        let p = malloc(n).cast::<u8>();
        assert!(!p.is_null());
        // SAFETY: a block of `n` bytes.
        unsafe {
            p.write_bytes(i as u8, n);
            assert_eq!(malloc_usable_size(p.cast()), n);
        }
        live.push((p, n, i as u8));
    }
    for (p, n, byte) in live {
        // SAFETY: live blocks of `n` bytes, freed with their size.
        unsafe {
            assert!(std::slice::from_raw_parts(p, n).iter().all(|&b| b == byte));
            free_sized(p.cast(), n);
        }
    }
    pymalloc::check().unwrap();
}

#[test]
fn resized_blocks_keep_their_bytes_and_sizes() {
    let sizes = [
        40,
        44,
        100,
        5000,
        40_000,
        70_000,
        200_000,
        300_000,
        3 << 20,
        70_000,
        100,
        1,
    ];
    let mut p = malloc(1).cast::<u8>();
    let mut old = 1;
    // SAFETY: a block of `old` bytes, resized; each size written whole.
    unsafe {
        p.write(0x5a);
        for (i, &size) in sizes.iter().enumerate() {
            p = realloc(p.cast(), size).cast();
            assert!(!p.is_null());
            let kept = std::slice::from_raw_parts(p, old.min(size));
            assert!(
                kept.iter().all(|&b| b == (i as u8).wrapping_add(0x5a)),
                "{size}"
            );
            assert_eq!(malloc_usable_size(p.cast()), size);
            p.write_bytes((i as u8 + 1).wrapping_add(0x5a), size);
            old = size;
        }
        free_sized(p.cast(), old);
    }
    pymalloc::check().unwrap();
}

/// A block's tag is read by frees of the block after it, from any thread, while the block's
/// owner may be handing it out: the tag must be valid at every moment (S2), never half
/// written. Two producers make blocks of many sizes (some with no room for a whole canary
/// before the tag), two consumers free them, as the benchmark's producer-consumer does (where
/// a canary once written over the tag showed, about one full run in six; a stress test, not
/// a proof).
#[test]
fn neighbours_freed_by_other_threads_while_blocks_are_handed_out_are_no_underflow() {
    let (send, receive) = std::sync::mpsc::sync_channel::<(usize, usize)>(4096);
    let receive = std::sync::Mutex::new(receive);
    std::thread::scope(|s| {
        for t in 0..2 {
            let send = send.clone();
            s.spawn(move || {
                for i in 0..200_000usize {
                    let n = 8 + (i * 37 + t * 11) % 2040;
                    let p = malloc(n).cast::<u8>();
                    // SAFETY: a block of `n` bytes.
                    unsafe { p.write_bytes(n as u8, n) };
                    send.send((p as usize, n)).unwrap();
                }
            });
        }
        drop(send);
        for _ in 0..2 {
            let receive = &receive;
            s.spawn(move || {
                while let Ok((p, n)) = { receive.lock().unwrap().recv() } {
                    // SAFETY: a block of `n` bytes handed over, freed once.
                    unsafe { free_sized(p as *mut c_void, n) };
                }
            });
        }
    });
}

#[test]
fn fresh_blocks_are_handed_out_in_a_random_order() {
    // Blocks of a class nobody else uses here: consecutive ones from fresh pools.
    let all = blocks(64, 200);
    let ascending = all
        .windows(2)
        .filter(|w| w[1] as usize > w[0] as usize)
        .count();
    assert!(
        ascending < 55,
        "{ascending} of 63 steps go up: carved in order"
    );
    for p in all {
        // SAFETY: blocks of ours.
        unsafe { free(p.cast()) };
    }
}

#[test]
fn freelist_links_are_stored_encoded() {
    let all = blocks(8, 40);
    // SAFETY: blocks of ours; the first word of a freed block is read as the allocator
    // left it (the test's own, not an attack).
    unsafe {
        free(all[2].cast());
        free(all[5].cast());
        let stored = all[5].cast::<usize>().read();
        assert_ne!(stored, all[2] as usize, "a link in the clear");
    }
}
