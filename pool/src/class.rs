//! Size classes, all derived here from a handful of constants.
//!
//! - *Small* classes: 16-byte steps up to [`SMALL_MAX`] = 512 bytes, exactly as CPython's
//!   obmalloc (32 classes).
//! - *Medium* classes: `MEDIUM_PER_DOUBLING` = 8 per power of two from 512 bytes up to
//!   [`POOLED_MAX`] = 256 KiB (72 classes), so that a request never wastes more than 12.5% of
//!   itself: the step in `(2^k, 2^(k+1)]` is `2^k / 8`, at most an eighth of any size in that
//!   range. Block sizes and the lookup both derive the step from that one constant.
//!
//! Each class's pool spans `span_slots()` consecutive slots of [`POOL_SIZE`] bytes, at most
//! [`MAX_SPAN_SLOTS`]: the fewest that hold at least eight blocks (one block, for classes of
//! which eight do not fit in the widest span) and whose unused tail is at most an eighth of
//! the pool, or else the count of those that wastes the least. A span may start at any slot
//! of an arena.
//!
//! - *Where blocks start*: a small class's first block lies [`SMALL_FIRST_BLOCK`] = 48 bytes
//!   into its pool, where CPython's obmalloc puts it (behind its 48-byte pool header), so
//!   that a block starts 16 bytes before a cache line. CPython's container objects (dicts,
//!   lists, tuples, instances) carry their 16-byte garbage-collector links in front of the
//!   object, and the objects of its commonest class (64 bytes) then start a line each; its
//!   collector and its sorts ran about a fifth faster so (`docs/notes.md`). Medium pools
//!   start their blocks at the pool's start.
//! - *Aligned small classes*: a block 48 bytes into a pool is aligned to 16 only, so requests
//!   aligned to more have classes of their own, [`ALIGNED_SMALL_CLASSES`] of them, one per
//!   multiple of 32 up to [`SMALL_MAX`], whose blocks start at the pool's start. No size maps
//!   to them; only [`SizeClass::for_layout`] does. Their indices follow the medium classes'.
//!
//! A request aligned to more than [`ALIGNMENT`] (up to [`MAX_POOLED_ALIGN`], a slot) takes the
//! class with the smallest blocks, at least its size's, whose every block starts at a
//! multiple of the alignment — its pool's first block does and its block size is a multiple
//! of it, or its pool holds one block —, so that every pointer handed out is a block's start
//! ([`SizeClass::for_layout`]). Any other pointer freed is not a block, which is how `free`
//! refuses interior pointers.
//!
//! Invariant: a [`SizeClass`] always holds an index below [`NUM_CLASSES`], so tables of
//! `NUM_CLASSES` entries may be indexed by it without a bounds check.

use crate::geometry::POOL_SIZE;

/// Alignment of every block, and the step between small classes.
pub const ALIGNMENT: usize = 16;
/// The largest request served by a small class.
pub const SMALL_MAX: usize = 512;
/// Medium classes per power of two.
const MEDIUM_PER_DOUBLING: usize = 8;
/// log2 of the largest request served from pools.
const POOLED_MAX_LOG: u32 = 18;
/// The largest request served from pools; anything larger is a large block.
pub const POOLED_MAX: usize = 1 << POOLED_MAX_LOG;
/// The most slots one pool may span (a power of two, for the arenas' run search).
pub const MAX_SPAN_SLOTS: usize = 16;

const SMALL_CLASSES: usize = SMALL_MAX / ALIGNMENT;
const SMALL_MAX_LOG: u32 = SMALL_MAX.ilog2();
/// Number of classes that sizes map to ([`SizeClass::for_size`]): small and medium.
const SIZED_CLASSES: usize =
    SMALL_CLASSES + MEDIUM_PER_DOUBLING * (POOLED_MAX_LOG - SMALL_MAX_LOG) as usize;
/// The step between aligned small classes: the smallest alignment above [`ALIGNMENT`].
const ALIGNED_SMALL_STEP: usize = 2 * ALIGNMENT;
/// Number of aligned small classes (module documentation): one per multiple of 32 up to
/// [`SMALL_MAX`].
pub const ALIGNED_SMALL_CLASSES: usize = SMALL_MAX / ALIGNED_SMALL_STEP;
/// Number of size classes: small, medium and aligned small.
pub const NUM_CLASSES: usize = SIZED_CLASSES + ALIGNED_SMALL_CLASSES;
/// Offset in its pool of a small class's first block (module documentation): a line less 16
/// bytes, CPython's pool header.
pub const SMALL_FIRST_BLOCK: usize = 48;

const _: () = assert!(NUM_CLASSES <= u8::MAX as usize + 1);
const _: () = assert!(
    SMALL_FIRST_BLOCK % ALIGNMENT == 0 && SMALL_FIRST_BLOCK < POOL_SIZE,
    "a small class's first block is aligned and inside its first slot"
);
const _: () = assert!(MAX_SPAN_SLOTS.is_power_of_two());
const _: () = assert!(
    MEDIUM_PER_DOUBLING.is_power_of_two()
        && MEDIUM_PER_DOUBLING >= 8
        && MEDIUM_PER_DOUBLING <= SMALL_MAX / ALIGNMENT,
    "medium steps waste at most an eighth and are whole multiples of the alignment"
);

/// Block size of class `index`.
const fn block_size_of(index: usize) -> usize {
    if index < SMALL_CLASSES {
        (index + 1) * ALIGNMENT
    } else if index < SIZED_CLASSES {
        let m = index - SMALL_CLASSES;
        let log = SMALL_MAX_LOG as usize + m / MEDIUM_PER_DOUBLING;
        (1 << log) + (m % MEDIUM_PER_DOUBLING + 1) * ((1 << log) / MEDIUM_PER_DOUBLING)
    } else {
        (index - SIZED_CLASSES + 1) * ALIGNED_SMALL_STEP
    }
}

/// Offset in its pool of the first block of class `index` (module documentation).
const fn first_block_of(index: usize) -> usize {
    if index < SMALL_CLASSES {
        SMALL_FIRST_BLOCK
    } else {
        0
    }
}

/// Bytes a pool of `slots` slots leaves unused with blocks of `size` from `first` on.
const fn tail_waste(slots: usize, size: usize, first: usize) -> usize {
    (slots * POOL_SIZE - first) % size
}

/// Blocks of `size` that a pool of `slots` slots holds from `first` on.
const fn blocks_in(slots: usize, size: usize, first: usize) -> usize {
    (slots * POOL_SIZE - first) / size
}

/// Blocks a pool should hold, where the widest span allows: fewer, and a class whose blocks
/// come and go a few at a time takes and returns whole pools (through the arenas' lock) on
/// nearly every call. Classes too large for that get pools of one block, or a few where that
/// wastes less: a free block stranded in a pool is memory no other class can use.
const MIN_BLOCKS: usize = 8;

/// Slots a pool of blocks of `size` from `first` on spans (see the module documentation).
const fn span_slots_of(size: usize, first: usize) -> usize {
    let wanted = if blocks_in(MAX_SPAN_SLOTS, size, first) >= MIN_BLOCKS {
        MIN_BLOCKS
    } else {
        1
    };
    let mut best = 0;
    let mut slots = 1;
    while slots <= MAX_SPAN_SLOTS {
        if blocks_in(slots, size, first) >= wanted {
            if tail_waste(slots, size, first) * 8 <= slots * POOL_SIZE {
                return slots;
            }
            // Least waste as a fraction of the span: a/b < c/d  <=>  a*d < c*b.
            if best == 0
                || tail_waste(slots, size, first) * best * POOL_SIZE
                    < tail_waste(best, size, first) * slots * POOL_SIZE
            {
                best = slots;
            }
        }
        slots += 1;
    }
    best
}

// Built at compile time: an index out of range is a build error, never a panic.
#[allow(clippy::indexing_slicing)]
const BLOCK_SIZES: [u32; NUM_CLASSES] = {
    let mut t = [0; NUM_CLASSES];
    let mut i = 0;
    while i < NUM_CLASSES {
        t[i] = block_size_of(i) as u32;
        assert!(
            t[i] as usize >= ALIGNMENT,
            "every block holds ALIGNMENT bytes"
        );
        i += 1;
    }
    t
};

// Built at compile time, as `BLOCK_SIZES`.
#[allow(clippy::indexing_slicing)]
const SPAN_SLOTS: [u8; NUM_CLASSES] = {
    let mut t = [0; NUM_CLASSES];
    let mut i = 0;
    while i < NUM_CLASSES {
        t[i] = span_slots_of(block_size_of(i), first_block_of(i)) as u8;
        assert!(
            t[i] != 0 && t[i] as usize <= MAX_SPAN_SLOTS,
            "every class fits a pool of at most MAX_SPAN_SLOTS slots"
        );
        i += 1;
    }
    t
};

const _: () = assert!(block_size_of(SIZED_CLASSES - 1) == POOLED_MAX);
const _: () = assert!(block_size_of(NUM_CLASSES - 1) == SMALL_MAX);

/// The largest alignment pools serve: a pool starts at a slot, so its blocks can be aligned to
/// no more. Requests aligned to more are large blocks.
pub const MAX_POOLED_ALIGN: usize = POOL_SIZE;
/// log2 of the smallest alignment above [`ALIGNMENT`].
const OVER_ALIGNED_LOG: u32 = ALIGNMENT.ilog2() + 1;
/// Alignments above [`ALIGNMENT`] that pools serve: 32 to [`MAX_POOLED_ALIGN`].
const OVER_ALIGNMENTS: usize = (MAX_POOLED_ALIGN.ilog2() + 1 - OVER_ALIGNED_LOG) as usize;

/// Whether every block of class `index` starts at a multiple of `align` (a power of two up to
/// a slot), pools starting at slots: its first block does, and its size is a multiple of
/// `align` or its pool holds one block.
const fn blocks_aligned(index: usize, align: usize) -> bool {
    let (size, first) = (block_size_of(index), first_block_of(index));
    first % align == 0
        && (size % align == 0 || blocks_in(span_slots_of(size, first), size, first) == 1)
}

/// `ALIGNED_CLASSES[a * NUM_CLASSES + c]`: for the alignment `2^(OVER_ALIGNED_LOG + a)`, the
/// class with the smallest blocks at least as large as `c`'s whose blocks are all aligned to
/// it (the first such index, of equals).
// Built at compile time, as `BLOCK_SIZES`.
#[allow(clippy::indexing_slicing)]
const ALIGNED_CLASSES: [u8; OVER_ALIGNMENTS * NUM_CLASSES] = {
    let mut t = [0; OVER_ALIGNMENTS * NUM_CLASSES];
    let mut a = 0;
    while a < OVER_ALIGNMENTS {
        let align = 1 << (OVER_ALIGNED_LOG as usize + a);
        let mut c = 0;
        while c < NUM_CLASSES {
            let mut best = NUM_CLASSES;
            let mut candidate = 0;
            while candidate < NUM_CLASSES {
                if blocks_aligned(candidate, align)
                    && block_size_of(candidate) >= block_size_of(c)
                    && (best == NUM_CLASSES || block_size_of(candidate) < block_size_of(best))
                {
                    best = candidate;
                }
                candidate += 1;
            }
            // The largest sized class has pools of one block, so some class always serves.
            assert!(best < NUM_CLASSES, "some class serves every alignment");
            t[a * NUM_CLASSES + c] = best as u8;
            c += 1;
        }
        a += 1;
    }
    t
};

/// One size class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SizeClass(u8);

impl SizeClass {
    /// The smallest class whose blocks hold `size` bytes (a zero size takes the first class),
    /// or `None` above [`POOLED_MAX`]. No loop, no table: a shift, or a log and two shifts.
    #[inline(always)]
    pub const fn for_size(size: usize) -> Option<SizeClass> {
        // From the last byte's offset, so that one comparison tells a small size (a zero
        // size wraps around and is the last case tested) and the original size stays
        // unchanged for a caller that still needs it.
        let x = size.wrapping_sub(1);
        let index = if x < SMALL_MAX {
            x / ALIGNMENT
        } else if x < POOLED_MAX {
            let log = x.ilog2();
            let step = (x >> (log - MEDIUM_PER_DOUBLING.ilog2())) & (MEDIUM_PER_DOUBLING - 1);
            SMALL_CLASSES + (log - SMALL_MAX_LOG) as usize * MEDIUM_PER_DOUBLING + step
        } else if size == 0 {
            0
        } else {
            return None;
        };
        // SAFETY: at most `NUM_CLASSES - 1` for a size up to `POOLED_MAX` (the assertion at
        // `POOLED_MAX`; `every_block_size_maps_to_its_own_class`). Told to the compiler so
        // that the index, narrowed to a byte here and widened again by `index`, needs no
        // zero-extension.
        unsafe { core::hint::assert_unchecked(index < NUM_CLASSES) };
        Some(SizeClass(index as u8))
    }

    /// The class of a request of `size` bytes aligned to `align` (a power of two): every
    /// block of it starts at a multiple of `align`, so the block is handed out from its first
    /// byte. `None` for a request too big or too aligned for pools (a large block).
    #[inline]
    pub fn for_layout(size: usize, align: usize) -> Option<SizeClass> {
        let class = SizeClass::for_size(size)?;
        if align <= ALIGNMENT {
            return Some(class);
        }
        if align > MAX_POOLED_ALIGN {
            return None;
        }
        // `align` is a power of two in (ALIGNMENT, MAX_POOLED_ALIGN]: its row exists.
        let row = (align.ilog2() - OVER_ALIGNED_LOG) as usize;
        ALIGNED_CLASSES
            .get(row * NUM_CLASSES + class.index())
            .map(|&index| SizeClass(index))
    }

    /// The class with this index, if it exists.
    #[inline]
    pub const fn from_index(index: usize) -> Option<SizeClass> {
        if index < NUM_CLASSES {
            Some(SizeClass(index as u8))
        } else {
            None
        }
    }

    /// The class with this index, which the caller knows to exist.
    ///
    /// # Safety
    /// `index` is below [`NUM_CLASSES`] (it came from [`SizeClass::index`]).
    #[inline(always)]
    pub(crate) const unsafe fn from_index_unchecked(index: u8) -> SizeClass {
        SizeClass(index)
    }

    /// Index into per-class tables; always below [`NUM_CLASSES`], which the compiler is told,
    /// so that indexing a table of `NUM_CLASSES` entries by it needs no bounds check and has
    /// no panic path.
    #[inline(always)]
    pub const fn index(self) -> usize {
        // SAFETY: the type's invariant (module docs): every safe constructor makes an index
        // below NUM_CLASSES (`for_size` by construction, checked at compile time by the
        // `POOLED_MAX` assertion above; `from_index` and `for_layout` by a check or a table of
        // such indices; `all` by its range), and `from_index_unchecked`'s caller promises it.
        unsafe { core::hint::assert_unchecked((self.0 as usize) < NUM_CLASSES) };
        self.0 as usize
    }

    /// Bytes in each block of this class.
    #[inline(always)]
    // A class's index is below NUM_CLASSES (`index` tells the compiler so), so this has no
    // bounds check and never panics; a `const fn` cannot call `get_unchecked`.
    #[allow(clippy::indexing_slicing)]
    pub const fn block_size(self) -> usize {
        let size = BLOCK_SIZES[self.index()] as usize;
        // SAFETY: every entry is a block size, at least ALIGNMENT (checked where the table is
        // built); told to the compiler so that dividing by it has no panic path.
        unsafe { core::hint::assert_unchecked(size >= ALIGNMENT) };
        size
    }

    /// Slots of [`POOL_SIZE`] bytes that a pool of this class spans.
    #[inline(always)]
    // As `block_size`.
    #[allow(clippy::indexing_slicing)]
    pub const fn span_slots(self) -> usize {
        let slots = SPAN_SLOTS[self.index()] as usize;
        // SAFETY: every entry is between 1 and MAX_SPAN_SLOTS (checked where the table is
        // built).
        unsafe { core::hint::assert_unchecked(slots >= 1 && slots <= MAX_SPAN_SLOTS) };
        slots
    }

    /// Bytes of a pool of this class.
    #[inline(always)]
    pub const fn pool_bytes(self) -> usize {
        self.span_slots() * POOL_SIZE
    }

    /// Offset in its pool of this class's first block (module documentation): 48 bytes for a
    /// small class, 0 for the others.
    #[inline(always)]
    pub const fn first_block(self) -> usize {
        first_block_of(self.index())
    }

    /// Bytes of a pool of this class from its first block to its end: where its blocks lie.
    #[inline(always)]
    pub const fn block_bytes(self) -> usize {
        self.pool_bytes() - self.first_block()
    }

    /// Every class, by index: the small classes, the medium ones, then the aligned small ones.
    pub fn all() -> impl Iterator<Item = SizeClass> {
        (0..NUM_CLASSES).map(|i| SizeClass(i as u8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_pooled_size_with_at_most_a_step_wasted() {
        assert_eq!(
            SIZED_CLASSES,
            SMALL_CLASSES + MEDIUM_PER_DOUBLING * (POOLED_MAX / SMALL_MAX).ilog2() as usize
        );
        assert_eq!(SizeClass::for_size(0).unwrap().block_size(), 16);
        let mut previous = SizeClass::for_size(1).unwrap();
        let step = if cfg!(miri) { 97 } else { 1 };
        for size in (1..=POOLED_MAX).step_by(step).chain([POOLED_MAX]) {
            let class = SizeClass::for_size(size).unwrap();
            assert!(class.block_size() >= size, "size {size}");
            assert!(
                (class.block_size() - size) * MEDIUM_PER_DOUBLING
                    <= size.max(ALIGNMENT * MEDIUM_PER_DOUBLING),
                "size {size} wastes too much"
            );
            assert!(class >= previous, "classes grow with sizes");
            if class.index() > 0 {
                let smaller = SizeClass::from_index(class.index() - 1).unwrap();
                assert!(
                    smaller.block_size() < size,
                    "size {size}: a smaller class would do"
                );
            }
            previous = class;
        }
        assert_eq!(SizeClass::for_size(POOLED_MAX + 1), None);
        assert_eq!(SizeClass::for_size(usize::MAX), None);
    }

    #[test]
    fn small_classes_are_obmallocs() {
        for size in 1..=SMALL_MAX {
            assert_eq!(
                SizeClass::for_size(size).unwrap().block_size(),
                size.next_multiple_of(16)
            );
        }
    }

    #[test]
    fn every_block_size_maps_to_its_own_class() {
        for (i, class) in SizeClass::all().enumerate() {
            assert_eq!(class.index(), i);
            assert_eq!(SizeClass::from_index(i), Some(class));
            assert_eq!(class.block_size() % ALIGNMENT, 0);
            let sized = SizeClass::for_size(class.block_size()).unwrap();
            if i < SIZED_CLASSES {
                assert_eq!(sized, class);
            } else {
                // An aligned small class: the small class of its size, its blocks from the
                // pool's start.
                assert_eq!(sized.block_size(), class.block_size());
                assert!(sized.index() < SMALL_CLASSES);
                assert_eq!(
                    (sized.first_block(), class.first_block()),
                    (SMALL_FIRST_BLOCK, 0)
                );
            }
        }
        assert_eq!(SizeClass::from_index(NUM_CLASSES), None);
    }

    #[test]
    fn pool_spans_are_the_fewest_slots_that_fit_their_blocks() {
        for class in SizeClass::all() {
            let slots = class.span_slots();
            let size = class.block_size();
            assert!((1..=MAX_SPAN_SLOTS).contains(&slots), "{class:?}");
            let first = class.first_block();
            let wanted = if blocks_in(MAX_SPAN_SLOTS, size, first) >= MIN_BLOCKS {
                MIN_BLOCKS
            } else {
                1
            };
            assert_eq!(blocks_per_pool_of(class), blocks_in(slots, size, first));
            assert!(
                blocks_per_pool_of(class) >= wanted,
                "{class:?} holds too few blocks"
            );
            // Every class fits with at most an eighth of its pool unused.
            assert!(
                tail_waste(slots, size, first) * 8 <= slots * POOL_SIZE,
                "{class:?}"
            );
            // Fewer slots would hold too few blocks or waste more than an eighth.
            for fewer in 1..slots {
                assert!(
                    blocks_in(fewer, size, first) < wanted
                        || tail_waste(fewer, size, first) * 8 > fewer * POOL_SIZE,
                    "{class:?} could span {fewer} slots"
                );
            }
        }
        assert_eq!(SizeClass::for_size(512).unwrap().span_slots(), 1);
        assert_eq!(
            blocks_per_pool_of(SizeClass::for_size(POOLED_MAX).unwrap()),
            1,
            "the largest class has pools of one block"
        );
        let widest = SizeClass::all().map(|c| c.span_slots()).max();
        assert_eq!(
            widest,
            Some(MAX_SPAN_SLOTS),
            "the cap is what some class needs"
        );
    }

    #[test]
    fn aligned_classes_align_every_block_and_waste_no_more_than_padding_would() {
        for size in (0..=POOLED_MAX).step_by(if cfg!(miri) { 4099 } else { 7 }) {
            for log in 0..=POOL_SIZE.ilog2() + 1 {
                let align = 1usize << log;
                let Some(class) = SizeClass::for_layout(size, align) else {
                    assert!(align > MAX_POOLED_ALIGN, "size {size} align {align}");
                    continue;
                };
                assert!(class.block_size() >= size.max(1));
                let blocks = blocks_per_pool_of(class);
                for k in 0..blocks {
                    // Pools start at slots, which are aligned to POOL_SIZE.
                    let offset = class.first_block() + k * class.block_size();
                    assert_eq!(offset % align.min(POOL_SIZE), 0);
                }
                // The class the older rule (pad by `align - 16`, point inside) would take.
                let padded = size.max(1) + align.saturating_sub(ALIGNMENT);
                if let Some(old) = SizeClass::for_size(padded) {
                    assert!(
                        class.block_size() <= old.block_size(),
                        "size {size} align {align}: {class:?} > {old:?}"
                    );
                }
                // Aligned beyond 16, a small request takes an aligned small class.
                if align > ALIGNMENT && align <= SMALL_MAX && size <= SMALL_MAX {
                    assert!(class.index() >= SIZED_CLASSES, "size {size} align {align}");
                }
                if align <= ALIGNMENT {
                    assert_eq!(Some(class), SizeClass::for_size(size));
                }
            }
        }
        // A zero-size request gets a block of its own, aligned (issue: the next block's start).
        let zero = SizeClass::for_layout(0, 32).unwrap();
        assert_eq!(zero.block_size(), 32);
    }

    fn blocks_per_pool_of(class: SizeClass) -> usize {
        class.block_bytes() / class.block_size()
    }
}
