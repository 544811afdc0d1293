//! What the `secure` cargo feature adds to every pooled block, and to large blocks' ends:
//! encoded freelist links, a trailer that says the block's size and guards its end, a fill
//! of freed blocks, and carving in a random order. Without the feature [`ENABLED`] is false,
//! callers test it first, and none of this runs.
//!
//! ```text
//! block in use: | caller's n bytes | canary (up to 8) | ... | tag: check, slack |
//! free block:   | link | freed mark | fill 0xDD ... (at most FILL_MAX) | tag: check, FREE |
//!                                                                     ^ capacity - 8
//! ```
//!
//! - A *link* (the first word of a free block, on a freelist, a remote list or a heap's
//!   kept blocks) is stored XOR the block's own address (rotated) and a per-process secret
//!   ([`read_link`], [`write_link`]): a link overwritten by a program that does not know the
//!   secret decodes to a random address, which the reader rejects (a pool's freelist: not a
//!   carved block of the same pool; other lists: not a block of this allocator).
//! - The *tag*, the last word of the block's capacity (its class's size; for a large block,
//!   its mapping less the guard page), holds the *slack* `capacity - 8 - n`, masked, and a
//!   keyed hash of the block's address and slack, 30 bits of it random, placed so that the
//!   word's first and last bytes are never zero (`tag`); a free block's slack is `FREE`.
//!   Any change to the word is caught but with a chance of 2^-30, and a NUL over its first or
//!   last byte always.
//! - The *canary*: up to 8 bytes right after the caller's `n`, keyed by the block's address:
//!   the first byte a program writes past its block is a canary byte or the tag.
//! - A freed block's bytes from the third word on (up to [`FILL_MAX`]) hold [`FREED_FILL`],
//!   checked, with its tag, when the block is handed out again.
//!
//! Invariant (with the `secure` feature):
//! - S1 the secrets are drawn with the freed mark's key, before any pool exists, and never
//!   change (as M1).
//! - S2 every carved block of a live pool holds a valid tag: *free* while it is free (on a
//!   freelist, a remote list or kept by a heap), with its fill intact; *live* while in use.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::frozen::read_frozen_word;

const _: () = assert!(
    size_of::<usize>() == size_of::<u64>(),
    "a tag is one machine word, read as one (`read_frozen_word`)"
);

/// Whether the `secure` feature is on.
pub const ENABLED: bool = cfg!(feature = "secure");

/// Bytes at the end of every block's capacity for the tag.
pub const TAG_BYTES: usize = 8;
/// Canary bytes after the caller's, where the capacity leaves room before the tag.
const CANARY_BYTES: usize = 8;
/// Fill of a freed block's bytes from its third word on: CPython's and the `debug` feature's
/// dead byte, so that a freed object read through a dangling pointer looks freed to them (a
/// word of it is also a non-canonical address on x86-64, which faults if followed).
pub const FREED_FILL: u8 = 0xDD;
/// Most bytes of a freed block filled (and checked when it is handed out again), from its
/// third word: its first 64 bytes are covered, where an object's header and first fields
/// lie; a write after free further into a larger block is not seen.
pub const FILL_MAX: usize = 48;
/// First byte of a freed block filled: after the link and the freed mark.
const FILL_FROM: usize = 16;
/// Slack recorded in a free block's tag.
const FREE: u64 = u32::MAX as u64;
/// The most slack a tag records for a block in use (one less than a free block's): a caller
/// that hands out blocks with more room past the bytes asked for must keep within it.
pub const MAX_SLACK: usize = FREE as usize - 1;

/// The secrets of links and tags (S1): 0 until drawn.
static LINK_KEY: AtomicUsize = AtomicUsize::new(0);
static TAG_KEY: AtomicUsize = AtomicUsize::new(0);

/// Draws the secrets (called by the freed mark's `draw_key`, S1) from `random`.
pub(crate) fn draw_secrets(random: impl Fn() -> usize) {
    // A loser of a race keeps the first secret published: every link and tag uses one (S1).
    let _ = LINK_KEY.compare_exchange(0, random() | 1, Ordering::Relaxed, Ordering::Relaxed);
    let _ = TAG_KEY.compare_exchange(0, random() | 1, Ordering::Relaxed, Ordering::Relaxed);
}

/// A 64-bit mix of `x`, for the carving order.
#[inline(always)]
const fn mix(mut x: u64) -> u64 {
    x ^= x >> 32;
    x = x.wrapping_mul(0xd6e8_feb8_6659_fd93);
    x ^ (x >> 29)
}

/// The link word's mask at `at`: the secret XOR the address, rotated so that a link and its
/// neighbours' differ in their high bits.
#[inline(always)]
fn link_mask(at: NonNull<u8>) -> usize {
    LINK_KEY.load(Ordering::Relaxed) ^ at.addr().get().rotate_left(27)
}

/// The link stored in the first word of the free block `block`: the next block of its list,
/// or null. Decoded under the `secure` feature; the caller checks where it leads.
///
/// # Safety
/// `block` starts a free block (at least [`crate::ALIGNMENT`] bytes) whose first word is a
/// link the caller may read.
#[inline(always)]
pub unsafe fn read_link(block: NonNull<u8>) -> *mut u8 {
    // SAFETY: as the caller guarantees.
    let stored = unsafe { block.cast::<*mut u8>().read() };
    if ENABLED {
        ptr::with_exposed_provenance_mut(stored.addr() ^ link_mask(block))
    } else {
        stored
    }
}

/// Stores `next` as the link of the free block `block` (see [`read_link`]).
///
/// # Safety
/// `block` starts a block (at least [`crate::ALIGNMENT`] bytes) whose first word the caller
/// may overwrite.
#[inline(always)]
pub unsafe fn write_link(block: NonNull<u8>, next: *mut u8) {
    let stored = if ENABLED {
        ptr::without_provenance_mut(next.expose_provenance() ^ link_mask(block))
    } else {
        next
    };
    // SAFETY: as the caller guarantees.
    unsafe { block.cast::<*mut u8>().write(stored) };
}

/// The per-block key of the block at `block`: its address and the secret, mixed by one
/// multiplication. Every tag, mask and canary of the block derives from it.
#[inline(always)]
fn block_key(block: NonNull<u8>) -> u64 {
    (block.addr().get() as u64 ^ TAG_KEY.load(Ordering::Relaxed) as u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The low half of a tag word, before it is rotated into place ([`tag`]).
const LOW: u64 = u32::MAX as u64;
/// Bits of a tag's hash always set, one in each of its two bytes that become the stored
/// word's first and last bytes ([`tag`]), so that neither is ever zero.
const NEVER_ZERO: u64 = 1 << 48 | 1 << 56;
/// How far a tag is rotated left when stored: its hash's top byte becomes the word's first.
const TAG_ROTATION: u32 = 8;

/// The tag of a block of key `key` with this slack (see the module's documentation): the
/// slack XOR the key's high half, beside a keyed hash of the slack (30 bits of it random,
/// [`NEVER_ZERO`]), rotated so that the word's first and last bytes are hash bytes that are
/// never zero. Every byte of the tag looks random, and a NUL written over either end of it
/// (an off-by-one NUL past the block's bytes, or before the next block's) always changes it.
#[inline(always)]
fn tag(key: u64, slack: u64) -> u64 {
    let check = (key ^ slack).wrapping_mul(0xd6e8_feb8_6659_fd93) & !LOW | NEVER_ZERO;
    (check | (slack ^ (key >> 32)) & LOW).rotate_left(TAG_ROTATION)
}

/// The slack a tag word of a block of key `key` records, if the word is a valid tag.
#[inline(always)]
fn slack_of(key: u64, word: u64) -> Option<u64> {
    let slack = (word.rotate_right(TAG_ROTATION) ^ (key >> 32)) & LOW;
    (word == tag(key, slack)).then_some(slack)
}

/// The tag word of a block of `capacity` bytes: its last word, read and written atomically,
/// since a free of the next block reads it from any thread ([`has_valid_tag`]).
///
/// # Safety
/// `block` starts `capacity` (at least [`TAG_BYTES`], a multiple of 8) mapped bytes.
#[inline(always)]
unsafe fn tag_word<'a>(block: NonNull<u8>, capacity: usize) -> &'a AtomicU64 {
    // SAFETY: the last word of the block, 8-aligned (blocks and capacities are) (caller).
    unsafe { AtomicU64::from_ptr(block.as_ptr().add(capacity - TAG_BYTES).cast()) }
}

/// The canary of a block of key `key`, as a little-endian word of bytes none of which is
/// zero (so an off-by-one NUL always changes the first).
#[inline(always)]
fn canary(key: u64) -> u64 {
    key.rotate_left(23) | 0x0101_0101_0101_0101
}

/// The canary's length in a block of `capacity` bytes holding `n`, and the mask of its bytes
/// in a little-endian word read at `n`.
#[inline(always)]
fn canary_mask(n: usize, capacity: usize) -> u64 {
    let len = (capacity - TAG_BYTES - n).min(CANARY_BYTES);
    if len >= CANARY_BYTES {
        u64::MAX
    } else {
        (1u64 << (8 * len)) - 1
    }
}

/// Writes the canary of a block of key `key` after its `n` bytes, up to its tag and never
/// into it: a free of the next block may read the tag from another thread at any moment
/// (S2), so a tag is only ever written whole, with one store. (The canary written as one
/// word over the tag, then the tag, made such a free see a damaged tag now and then:
/// producer-consumer, about one full run in six.)
///
/// # Safety
/// `block` starts `capacity` writable bytes and `n + TAG_BYTES <= capacity`.
#[inline(always)]
unsafe fn write_canary(block: NonNull<u8>, key: u64, n: usize, capacity: usize) {
    let canary = canary(key);
    let room = capacity - TAG_BYTES - n;
    // SAFETY: the bytes written lie between `n` and the tag (caller): a store of `w` bytes at
    // `at` and one ending at `at + room` (where it holds the canary's bytes from `room - w`),
    // `w <= room`. Two stores that overlap, rather than a loop of one byte a store.
    unsafe {
        let at = block.as_ptr().add(n);
        let last = |w: usize| canary >> (8 * (room - w));
        match room {
            CANARY_BYTES.. => at.cast::<u64>().write_unaligned(canary),
            4.. => {
                at.cast::<u32>().write_unaligned(canary as u32);
                at.add(room - 4)
                    .cast::<u32>()
                    .write_unaligned(last(4) as u32);
            }
            2.. => {
                at.cast::<u16>().write_unaligned(canary as u16);
                at.add(room - 2)
                    .cast::<u16>()
                    .write_unaligned(last(2) as u16);
            }
            1 => at.write(canary as u8),
            _ => {}
        }
    }
}

/// Dresses a block of `capacity` bytes just handed out for `n` bytes: the canary after them
/// and the live tag (S2).
///
/// # Safety
/// `block` starts `capacity` writable bytes that the caller has just been handed, and `n +`
/// [`TAG_BYTES`] `<= capacity`.
#[inline]
pub unsafe fn dress(block: NonNull<u8>, n: usize, capacity: usize) {
    let key = block_key(block);
    // SAFETY: the canary and the tag lie inside the block (caller).
    unsafe {
        write_canary(block, key, n, capacity);
        let slack = (capacity - TAG_BYTES - n) as u64;
        tag_word(block, capacity).store(tag(key, slack), Ordering::Relaxed);
    }
}

/// What the trailer of a block being freed says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trailer {
    /// In use, with this many bytes asked for, its canary intact.
    Live(usize),
    /// Free already: a double free.
    Free,
    /// The tag was overwritten (an overflow reaching the block's last word, or a pointer that
    /// is not a block's start).
    TagOverwritten,
    /// A canary byte after the block's bytes was overwritten: an overflow.
    CanaryOverwritten,
}

/// Reads the trailer of a block of `capacity` bytes (see [`Trailer`]).
///
/// # Safety
/// `block` starts `capacity` mapped bytes, a multiple of 8 and at least [`TAG_BYTES`].
#[inline]
pub unsafe fn trailer(block: NonNull<u8>, capacity: usize) -> Trailer {
    let key = block_key(block);
    // SAFETY: as the caller guarantees.
    let word = unsafe { tag_word(block, capacity) }.load(Ordering::Relaxed);
    let Some(slack) = slack_of(key, word) else {
        return Trailer::TagOverwritten;
    };
    if slack == FREE {
        return Trailer::Free;
    }
    let Some(n) = (capacity - TAG_BYTES).checked_sub(slack as usize) else {
        return Trailer::TagOverwritten;
    };
    // SAFETY: the word at `n` ends by `capacity` (`n <= capacity - TAG_BYTES`), inside the
    // block; read as the machine holds it.
    let found = unsafe { block.as_ptr().add(n).cast::<u64>().read_unaligned() };
    if (found ^ canary(key)) & canary_mask(n, capacity) == 0 {
        Trailer::Live(n)
    } else {
        Trailer::CanaryOverwritten
    }
}

/// Whether a block of `capacity` bytes holds a valid tag, live or free (S2): for the block
/// before one being freed, whose tag an underflow of that one would overwrite.
///
/// # Safety
/// `block` starts a carved block of `capacity` bytes of a live pool.
#[inline]
pub unsafe fn has_valid_tag(block: NonNull<u8>, capacity: usize) -> bool {
    // SAFETY: the tag word lies inside the block (caller); read as one aligned load, as its
    // writers store it, and unseen by AddressSanitizer (the block may be free, poisoned).
    let word = unsafe { read_frozen_word::<0>(tag_word(block, capacity).as_ptr().cast()) } as u64;
    slack_of(block_key(block), word).is_some()
}

/// The words of a freed block of `capacity` bytes that hold its fill: from the third word, at
/// most [`FILL_MAX`] bytes, before the tag.
#[inline(always)]
fn fill_words(capacity: usize) -> usize {
    (capacity - TAG_BYTES)
        .saturating_sub(FILL_FROM)
        .min(FILL_MAX)
        / 8
}

/// A word of fill.
const FILL_WORD: u64 = u64::from_ne_bytes([FREED_FILL; 8]);

/// The words from `at` that [`fill`] and [`is_filled`] touch to cover the first `words` (1 to
/// `FILL_MAX / 8`): runs of three from either end, which overlap for fewer than six (one
/// or two words: the first and the last). The same six word accesses, with no branch on
/// each, whatever the class.
#[inline(always)]
fn fill_positions(words: usize) -> [usize; 6] {
    let last = words - 1;
    if words > 2 {
        [0, 1, 2, last - 2, last - 1, last]
    } else {
        [0, last, 0, last, 0, last]
    }
}

const _: () = assert!(FILL_MAX / 8 == 6, "fill_positions covers six words");

/// Fills the `words` words of fill from `at` (at most `FILL_MAX / 8`): plain stores, one a
/// word, rather than a call to `memset`.
///
/// # Safety
/// `at` is valid for writing `words` aligned words.
#[inline(always)]
unsafe fn fill(at: *mut u64, words: usize) {
    if words == 0 {
        return;
    }
    for i in fill_positions(words) {
        // SAFETY: `i < words` (`fill_positions`, caller).
        unsafe { at.add(i).write_volatile(FILL_WORD) };
    }
}

/// Whether the `words` words from `at` hold the fill.
///
/// # Safety
/// `at` is valid for reading `words` aligned words.
#[inline(always)]
unsafe fn is_filled(at: *const u64, words: usize) -> bool {
    if words == 0 {
        return true;
    }
    let mut differ = 0;
    for i in fill_positions(words) {
        // SAFETY: `i < words` (`fill_positions`, caller).
        differ |= unsafe { at.add(i).read() } ^ FILL_WORD;
    }
    differ == 0
}

/// The free of a pooled block of `capacity` bytes, its checks and its retirement at once
/// (one computation of the block's key): if the block is in use — for exactly `n` bytes
/// when `n` is given — with its canary intact, and `before` (the block before it in its
/// pool, if any) holds a valid tag, retires it ([`retire`]) and returns true; otherwise
/// changes nothing and returns false, for the caller to find out what is wrong.
///
/// # Safety
/// `block` starts a carved block of `capacity` bytes of a live pool, in use as far as the
/// caller knows, that the caller may overwrite if it is; `before`, a carved block of the
/// same size of that pool; `n + TAG_BYTES <= capacity`.
#[inline(always)]
pub unsafe fn retire_if_intact(
    block: NonNull<u8>,
    capacity: usize,
    n: Option<usize>,
    before: Option<NonNull<u8>>,
) -> bool {
    let key = block_key(block);
    // SAFETY: the tag, the word at `n` and the fill lie inside the block (caller); the
    // block before is carved (caller).
    unsafe {
        let tag_word = tag_word(block, capacity);
        let word = tag_word.load(Ordering::Relaxed);
        let slack = match n {
            Some(n) => (capacity - TAG_BYTES - n) as u64,
            None => match slack_of(key, word) {
                Some(slack) if slack != FREE && slack as usize <= capacity - TAG_BYTES => slack,
                _ => return false,
            },
        };
        let n = capacity - TAG_BYTES - slack as usize;
        let found = block.as_ptr().add(n).cast::<u64>().read_unaligned();
        let intact = word == tag(key, slack)
            && (found ^ canary(key)) & canary_mask(n, capacity) == 0
            && before.is_none_or(|before| has_valid_tag(before, capacity));
        if intact {
            fill(block.as_ptr().add(FILL_FROM).cast(), fill_words(capacity));
            tag_word.store(tag(key, FREE), Ordering::Relaxed);
        }
        intact
    }
}

/// The hand-out of a free pooled block of `capacity` bytes for `n` bytes, its check and
/// its dressing at once (one computation of the block's key): if the block still holds its
/// fill and free tag (S2: no write after free reached it), dresses it ([`dress`]) and
/// returns true; otherwise returns false.
///
/// # Safety
/// `block` starts a free block of `capacity` bytes just handed to the caller, and `n +`
/// [`TAG_BYTES`] `<= capacity`.
#[inline(always)]
pub unsafe fn dress_if_intact(block: NonNull<u8>, capacity: usize, n: usize) -> bool {
    let key = block_key(block);
    // SAFETY: the fill, the canary and the tag lie inside the block (caller).
    unsafe {
        let tag_word = tag_word(block, capacity);
        let intact = tag_word.load(Ordering::Relaxed) == tag(key, FREE)
            && is_filled(block.as_ptr().add(FILL_FROM).cast(), fill_words(capacity));
        if intact {
            write_canary(block, key, n, capacity);
            let slack = (capacity - TAG_BYTES - n) as u64;
            tag_word.store(tag(key, slack), Ordering::Relaxed);
        }
        intact
    }
}

/// Fills a block of `capacity` bytes being freed and writes its free tag (S2); its link and
/// freed mark are for whoever takes it next to write.
///
/// # Safety
/// `block` starts `capacity` bytes (a multiple of 8, at least [`TAG_BYTES`] + 16) that the
/// caller may overwrite.
#[inline]
pub unsafe fn retire(block: NonNull<u8>, capacity: usize) {
    // SAFETY: the fill and the tag lie inside the block (caller).
    unsafe {
        fill(block.as_ptr().add(FILL_FROM).cast(), fill_words(capacity));
        tag_word(block, capacity).store(tag(block_key(block), FREE), Ordering::Relaxed);
    }
}

/// Whether a free block of `capacity` bytes, about to be handed out, still holds its free tag
/// and its fill (S2): no write after free reached them.
///
/// # Safety
/// `block` starts a free block of `capacity` bytes that the caller has exclusive use of.
#[inline]
pub unsafe fn is_intact_free_block(block: NonNull<u8>, capacity: usize) -> bool {
    // SAFETY: as the caller guarantees; the fill lies 8-aligned inside the block.
    unsafe {
        is_filled(block.as_ptr().add(FILL_FROM).cast(), fill_words(capacity))
            && tag_word(block, capacity).load(Ordering::Relaxed) == tag(block_key(block), FREE)
    }
}

/// Most blocks carved at once, in a random order ([`shuffled`]).
pub(crate) const BATCH: usize = 8;

/// The indices `0..count` (`count <= BATCH`) in an order drawn from the secret and `seed`
/// (where and when the batch is carved): a program cannot tell which block comes next.
pub(crate) fn shuffled(count: usize, seed: usize) -> [u8; BATCH] {
    let mut order = [0u8; BATCH];
    for (i, slot) in order.iter_mut().enumerate() {
        *slot = i as u8;
    }
    let mut random = mix(seed as u64 ^ TAG_KEY.load(Ordering::Relaxed).rotate_left(13) as u64);
    let count = count.min(BATCH);
    // Fisher-Yates, `random` read as digits of falling bases (8! < 2^16).
    for i in (1..count).rev() {
        let base = i as u64 + 1;
        let j = (random % base) as usize;
        random /= base;
        order.swap(i, j.min(i));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_of(words: &mut [u64]) -> NonNull<u8> {
        NonNull::new(words.as_mut_ptr().cast()).unwrap()
    }

    #[test]
    fn a_dressed_block_reads_live_with_its_size_and_every_change_is_seen() {
        draw_secrets(|| 0x1234_5678_9abc_def1);
        let mut words = [0u64; 8];
        let block = block_of(&mut words);
        for n in 0..=56 {
            // SAFETY: 64 bytes of ours.
            unsafe {
                dress(block, n, 64);
                assert_eq!(trailer(block, 64), Trailer::Live(n));
                assert!(has_valid_tag(block, 64));
                // Any byte of the canary or the tag changed: caught.
                for at in (n..(n + CANARY_BYTES).min(64 - TAG_BYTES)).chain(64 - TAG_BYTES..64) {
                    let byte = block.as_ptr().add(at);
                    let old = byte.read();
                    byte.write(old ^ 0x5a);
                    assert_ne!(trailer(block, 64), Trailer::Live(n), "n {n}, byte {at}");
                    byte.write(old);
                }
                // An off-by-one NUL: caught, into the canary or the tag's first byte.
                let old = block.as_ptr().add(n).read();
                block.as_ptr().add(n).write(0);
                assert_ne!(trailer(block, 64), Trailer::Live(n), "n {n}");
                block.as_ptr().add(n).write(old);
            }
        }
    }

    #[test]
    fn a_nul_over_either_end_of_a_tag_is_always_caught() {
        draw_secrets(|| 0x1234_5678_9abc_def1);
        // 4 096 blocks of 4 098 slacks natively; under Miri, which runs them a thousand times
        // slower, 64 of 66.
        let count = if cfg!(miri) { 64 } else { 4096 };
        let mut words = vec![0u64; count];
        for (i, word) in words.iter_mut().enumerate() {
            let block = NonNull::from(word).cast::<u8>();
            let key = block_key(block);
            for slack in (0..count as u64).chain([FREE, FREE - 1]) {
                let bytes = tag(key, slack).to_le_bytes();
                assert!(bytes[0] != 0 && bytes[7] != 0, "block {i}, slack {slack}");
                assert_eq!(slack_of(key, tag(key, slack)), Some(slack));
            }
            // SAFETY: the word is ours: a block of 8 bytes, all tag.
            unsafe {
                dress(block, 0, TAG_BYTES);
                for at in [0, TAG_BYTES - 1] {
                    let byte = block.as_ptr().add(at);
                    let old = byte.read();
                    byte.write(0);
                    assert!(!has_valid_tag(block, TAG_BYTES), "block {i}, byte {at}");
                    byte.write(old);
                }
                assert_eq!(trailer(block, TAG_BYTES), Trailer::Live(0));
            }
        }
    }

    #[test]
    fn a_retired_block_reads_free_until_written() {
        draw_secrets(|| 0x1234_5678_9abc_def1);
        // Every capacity from the smallest class's on, so every count of fill words: a
        // write into any byte of the fill (and only there, before the tag) is seen, and the
        // fill writes nothing past it.
        for capacity in (32..=128).step_by(16) {
            let fill_end = FILL_FROM + fill_words(capacity) * 8;
            assert!(fill_end > FILL_FROM && fill_end <= capacity - TAG_BYTES);
            for at in FILL_FROM..fill_end {
                let mut words = [0u64; 17];
                let block = block_of(&mut words);
                // SAFETY: `capacity` bytes of ours, and a word past them.
                unsafe {
                    retire(block, capacity);
                    assert_eq!(trailer(block, capacity), Trailer::Free);
                    assert!(is_intact_free_block(block, capacity));
                    block.as_ptr().add(at).write(0);
                    assert!(!is_intact_free_block(block, capacity), "{capacity} {at}");
                }
                let untouched = |mut range: core::ops::Range<usize>| {
                    let bytes = words.as_ptr().cast::<u8>();
                    // SAFETY: bytes of `words`.
                    range.all(|i| unsafe { *bytes.add(i) } == 0)
                };
                assert!(untouched(0..FILL_FROM) && untouched(fill_end..capacity - TAG_BYTES));
                assert!(untouched(capacity..capacity + 8));
            }
        }
    }

    #[test]
    fn links_round_trip_and_are_not_stored_in_the_clear() {
        draw_secrets(|| 0x1234_5678_9abc_def1);
        let mut words = [0u64; 2];
        let block = block_of(&mut words);
        let next = ptr::without_provenance_mut::<u8>(0x7f00_1234_5670);
        // SAFETY: two words of ours.
        unsafe {
            write_link(block, next);
            assert_eq!(read_link(block).addr(), next.addr());
            write_link(block, ptr::null_mut());
            assert!(read_link(block).is_null());
        }
        assert!(!ENABLED || words[0] != 0, "null stored as zero");
    }

    #[test]
    fn shuffled_is_a_permutation_and_varies_with_the_seed() {
        let mut orders = std::collections::BTreeSet::new();
        for seed in 0..64 {
            for count in 0..=BATCH {
                let order = shuffled(count, seed);
                let mut taken: Vec<u8> = order[..count].to_vec();
                taken.sort_unstable();
                assert_eq!(taken, (0..count as u8).collect::<Vec<_>>());
            }
            orders.insert(shuffled(BATCH, seed * 4096));
        }
        assert!(orders.len() > 32, "{} orders of 64 seeds", orders.len());
    }
}
