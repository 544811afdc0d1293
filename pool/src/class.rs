//! Small size classes: 16-byte steps up to 512 bytes, exactly as CPython's obmalloc.
//!
//! Invariant: a [`SizeClass`] always holds an index below [`NUM_CLASSES`], so tables of
//! `NUM_CLASSES` entries may be indexed by it without a bounds check.

/// Alignment of every block, and the step between size classes.
pub const ALIGNMENT: usize = 16;
/// The largest request served by a small size class.
pub const SMALL_MAX: usize = 512;
/// Number of small size classes.
pub const NUM_CLASSES: usize = SMALL_MAX / ALIGNMENT;

/// One small size class: blocks of `(index + 1) * ALIGNMENT` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SizeClass(u8);

const _: () = assert!(NUM_CLASSES <= u8::MAX as usize + 1);

impl SizeClass {
    /// The smallest class whose blocks hold `size` bytes (a zero size takes the first class),
    /// or `None` above [`SMALL_MAX`]. No loop, no table: one shift.
    #[inline(always)]
    pub const fn for_size(size: usize) -> Option<SizeClass> {
        if size > SMALL_MAX {
            None
        } else {
            Some(SizeClass((size.saturating_sub(1) / ALIGNMENT) as u8))
        }
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

    /// Index into per-class tables; always below [`NUM_CLASSES`].
    #[inline(always)]
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// Bytes in each block of this class.
    #[inline(always)]
    pub const fn block_size(self) -> usize {
        (self.0 as usize + 1) * ALIGNMENT
    }

    /// Every class, smallest first.
    pub fn all() -> impl Iterator<Item = SizeClass> {
        (0..NUM_CLASSES).map(|i| SizeClass(i as u8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_small_size_exactly() {
        assert_eq!(NUM_CLASSES, 32);
        assert_eq!(SizeClass::for_size(0).unwrap().block_size(), 16);
        for size in 1..=SMALL_MAX {
            let class = SizeClass::for_size(size).unwrap();
            assert!(class.block_size() >= size);
            assert!(class.block_size() - size < ALIGNMENT, "size {size}");
            assert_eq!(class.block_size() % ALIGNMENT, 0);
        }
        assert_eq!(SizeClass::for_size(SMALL_MAX + 1), None);
        assert_eq!(SizeClass::for_size(usize::MAX), None);
    }

    #[test]
    fn indices_round_trip() {
        for (i, class) in SizeClass::all().enumerate() {
            assert_eq!(class.index(), i);
            assert_eq!(SizeClass::from_index(i), Some(class));
        }
        assert_eq!(SizeClass::from_index(NUM_CLASSES), None);
    }
}
