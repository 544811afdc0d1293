//! The algebra of an arena's slot bitmaps ([`SlotBits`], bit `i` for slot `i`): runs of set
//! bits found, measured and placed in a few shift-and-mask steps, without a loop over slots.

use pymalloc_pool::{HEADER_SLOTS, MAX_SPAN_SLOTS, SLOTS};

/// A bitmap of an arena's slots, bit `i` for slot `i`.
pub(crate) type SlotBits = u128;

const _: () = assert!(
    SLOTS >= 2 && SLOTS <= SlotBits::BITS as usize,
    "slot bitmaps are one SlotBits"
);
const _: () = assert!(
    MAX_SPAN_SLOTS == 16 && MAX_SPAN_SLOTS < SLOTS,
    "longest_run counts to 16; the longest span fits beside the header slot"
);

pub(crate) const ALL_SLOTS: SlotBits = SlotBits::MAX >> (SlotBits::BITS as usize - SLOTS);
/// Every slot but the header's ([`HEADER_SLOTS`]).
pub(crate) const USABLE: SlotBits = ALL_SLOTS & !((1 << HEADER_SLOTS) - 1);

/// Bits `start .. start + len` set.
pub(crate) const fn run_mask(start: u32, len: u32) -> SlotBits {
    (SlotBits::MAX >> (SlotBits::BITS - len)) << start
}

/// Bit `i` set iff slots `i .. i + len` are all set in `bits` (`len >= 1`). Constant time: at
/// most 2·log2(len) shift-and-mask steps.
pub(crate) const fn free_runs(bits: SlotBits, len: u32) -> SlotBits {
    // `runs` holds the starts of runs of at least `covered` slots.
    let (mut runs, mut covered) = (bits, 1);
    while covered < len {
        let step = if covered < len - covered {
            covered
        } else {
            len - covered
        };
        runs &= runs >> step;
        covered += step;
    }
    runs
}

/// The length of the longest run of set bits in `bits`, capped at [`MAX_SPAN_SLOTS`]: four
/// shift-and-mask steps by constants, then at most three more.
pub(crate) const fn longest_run(bits: SlotBits) -> usize {
    // Starts of runs of at least 1, 2, 4, 8 and 16 set bits.
    let r2 = bits & (bits >> 1);
    let r4 = r2 & (r2 >> 2);
    let r8 = r4 & (r4 >> 4);
    let r16 = r8 & (r8 >> 8);
    let (mut starts, mut len) = if r16 != 0 {
        return MAX_SPAN_SLOTS;
    } else if r8 != 0 {
        (r8, 8)
    } else if r4 != 0 {
        (r4, 4)
    } else if r2 != 0 {
        (r2, 2)
    } else if bits != 0 {
        return 1;
    } else {
        return 0;
    };
    // Below the next power of two: add len/2, len/4 … 1 where runs that long exist (a step
    // no longer than the length reached keeps `starts` exact).
    let mut step = len / 2;
    while step > 0 {
        let longer = starts & (starts >> step);
        if longer != 0 {
            starts = longer;
            len += step;
        }
        step /= 2;
    }
    len
}

/// The length of the stretch of set bits in `bits` that holds bit `i` (set), capped at
/// [`MAX_SPAN_SLOTS`] as [`longest_run`] is: a few instructions where `longest_run` takes
/// dozens, for the bucket updates whose answer only this stretch can change.
pub(crate) const fn stretch_at(bits: SlotBits, i: u32) -> usize {
    let from_i = (!(bits >> i)).trailing_zeros();
    let below_i = if i == 0 {
        0
    } else {
        (!(bits << (SlotBits::BITS - i))).leading_zeros()
    };
    let len = (from_i + below_i) as usize;
    if len < MAX_SPAN_SLOTS {
        len
    } else {
        MAX_SPAN_SLOTS
    }
}

/// Where to place a run of `len` slots in `bits`: at the start of the shortest stretch of set
/// bits that holds it (stretches of [`MAX_SPAN_SLOTS`] or more count as equally long, and the
/// first is taken), so that long stretches stay whole for long spans; `None` if no stretch is
/// long enough. At most `MAX_SPAN_SLOTS` steps of a few bit operations.
pub(crate) const fn place_run(bits: SlotBits, len: u32) -> Option<u32> {
    let stretch_starts = bits & !(bits << 1);
    // `runs` holds the starts of runs of `l` set bits; a stretch of exactly `l` starts a
    // stretch and has a clear bit (or the end) after its `l` bits.
    let mut runs = free_runs(bits, len) & stretch_starts;
    let mut l = len;
    while runs != 0 && l < MAX_SPAN_SLOTS as u32 {
        let exact = runs & !(bits >> l);
        if exact != 0 {
            return Some(exact.trailing_zeros());
        }
        runs &= bits >> l;
        l += 1;
    }
    if runs != 0 {
        Some(runs.trailing_zeros())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATTERNS: [SlotBits; 8] = [
        USABLE,
        0,
        0xF0F0_F0F0_F0F0_F0F0,
        0xFFFF_0000_FFFF_0000,
        0x0000_FFFF_FFFF_0000,
        0x0FF0_0E00_7FFE_1F3E,
        1 << 63,
        0x0FF0_0E00_7FFE_1F3E_FFFF_FFF0_0F0F_0003,
    ];

    fn is_run(bits: SlotBits, start: u32, len: u32) -> bool {
        start + len <= SlotBits::BITS && bits & run_mask(start, len) == run_mask(start, len)
    }

    #[test]
    fn free_runs_finds_exactly_the_runs_of_every_length() {
        for len in 1..=MAX_SPAN_SLOTS as u32 {
            for bits in PATTERNS {
                let runs = free_runs(bits, len);
                for i in 0..SlotBits::BITS {
                    assert_eq!(
                        runs >> i & 1 == 1,
                        is_run(bits, i, len),
                        "bits {bits:#x} len {len} slot {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn longest_run_is_the_longest_capped_at_the_widest_span() {
        for bits in PATTERNS {
            let longest = (1..=SlotBits::BITS)
                .filter(|&len| (0..SlotBits::BITS).any(|i| is_run(bits, i, len)))
                .max()
                .unwrap_or(0) as usize;
            assert_eq!(longest_run(bits), longest.min(MAX_SPAN_SLOTS), "{bits:#x}");
        }
    }

    #[test]
    fn stretch_at_measures_the_stretch_around_a_set_bit() {
        for bits in PATTERNS {
            for i in (0..SlotBits::BITS).filter(|&i| bits >> i & 1 == 1) {
                let mut first = i;
                while first > 0 && bits >> (first - 1) & 1 == 1 {
                    first -= 1;
                }
                let expected = stretch(bits, first) as usize;
                assert_eq!(
                    stretch_at(bits, i),
                    expected.min(MAX_SPAN_SLOTS),
                    "bits {bits:#x} slot {i}"
                );
            }
        }
    }

    /// The length of the stretch of set bits that starts at `start`.
    fn stretch(bits: SlotBits, start: u32) -> u32 {
        (!(bits >> start)).trailing_zeros()
    }

    #[test]
    fn place_run_takes_the_start_of_the_shortest_stretch_that_fits() {
        let mut patterns = PATTERNS.to_vec();
        patterns.extend([
            0b1110_0110_1111_1000_0111_0000_1100_1111_1110,
            0x5555_0F0F_00FF_3333,
        ]);
        for len in 1..=MAX_SPAN_SLOTS as u32 {
            for &bits in &patterns {
                match place_run(bits, len) {
                    None => assert_eq!(free_runs(bits, len), 0),
                    Some(start) => {
                        assert!(is_run(bits, start, len));
                        assert!(
                            start == 0 || bits >> (start - 1) & 1 == 0,
                            "bits {bits:#x} len {len}: {start} is inside a stretch"
                        );
                        let fit = stretch(bits, start).min(MAX_SPAN_SLOTS as u32);
                        let shortest = (0..SlotBits::BITS)
                            .filter(|&i| i == 0 || bits >> (i - 1) & 1 == 0)
                            .map(|i| stretch(bits, i))
                            .filter(|&l| l >= len)
                            .min()
                            .unwrap()
                            .min(MAX_SPAN_SLOTS as u32);
                        assert_eq!(fit, shortest, "bits {bits:#x} len {len}");
                    }
                }
            }
        }
    }
}
