//! Large blocks: requests above the small range (or too aligned for it), each served by a
//! range of whole pages of its own straight from the platform, with a small cache of freed
//! ranges so that repeated large allocations do not each pay for a system call and fresh
//! page faults.
//!
//! The cache works like an extent allocator's, in miniature. A freed block joins the cached
//! ranges just before and after it. A request takes a cached range whole if it [`fits`],
//! else the front of the largest that holds it, leaving the rest cached — unless every range
//! that holds it lies right behind a block in use, the block's room to grow: then it takes
//! the middle of that block's free run, and the two share it ([`Large::pick`]). A block that
//! shrinks caches its tail; one that grows takes the front of the cached range that starts
//! where it ends, in place. So a
//! buffer that is freed and then grown again by doubling, the usual life of a `Vec` that
//! outgrows the pools, reuses pages already faulted in, with neither a copy nor a system
//! call.
//!
//! The cache follows the program, as glibc's mmap threshold follows the largest block freed.
//! Its limit starts at [`CACHE_BYTES`] and doubles — up to [`MAX_CACHE_BYTES`] (or what
//! `PYMALLOC_LARGE_CACHE` sets), and to the most bytes of large blocks ever in use at once or
//! the longest request it missed, whichever is more — whenever the program
//! shows it cycles through more than the cache holds: a request of half the limit or more
//! finds no cached range that holds it after the cache evicted the bytes it lacks, or a
//! limit's worth of requests missed after a limit's worth was evicted (see
//! [`Large::missed`]). Under the limit, what it
//! holds is at most the most bytes of large blocks in use over the last few hundred frees (or
//! the longest request missed, or [`CACHE_BYTES`]; [`Large::room`]): a program that frees
//! its large blocks and is done gets most of the memory back as it frees (and all of it from
//! `trim`), while one whose blocks churn (buffers regrown, a loop of one size, a batch
//! allocated and freed, many blocks grown and shrunk) keeps what it reuses instead of
//! faulting it in afresh every time.
//!
//! Blocks of a huge page or more may be advised to huge pages, under `PYMALLOC_HUGEPAGES`'s
//! policy ([`Large::advises`]): mapped from a huge page's start and advised before their first
//! touch, or advised as they grow past it by remapping.
//!
//! [`Large`] is bookkeeping; [`LargeBlocks`] holds it under a lock of its own (no other lock
//! is taken inside it) and makes the system calls for blocks (reserve, remap, release) with
//! that lock released. Only the table of blocks in use ([`Registry`]) takes memory under the
//! lock, when it doubles.
//!
//! Invariants:
//! - L1 a large block of layout (size, align) starts a range of [`mapping_len`]`(size)`
//!   mapped bytes, or up to a quarter (at most [`MAX_SPARE`]) more ([`fits`]: a cached
//!   range reused whole, or a block resized in place), aligned to `max(align, page)`; large
//!   blocks carry no header;
//! - L2 every large block in use is registered, by its start, with its length; no other
//!   address is;
//! - L3 the cache holds at most [`CACHE_ENTRIES`] ranges and `cache_limit` bytes, mapped,
//!   none of them in use, no two of them touching (a freed block merges with its
//!   neighbours), in its first `cached_blocks` entries; `cached_bytes` and `cached_blocks`
//!   count them; a range's `behind`, where not 0, lies below its start (the start of the
//!   block it was cut behind: a hint, which may be stale); `cache_limit` lies between
//!   [`CACHE_BYTES`] and `max_cache` ([`MAX_CACHE_BYTES`] unless the user set it, at most
//!   `isize::MAX`; the lower bound is `max_cache` if that is less).

use core::alloc::Layout;
use core::ptr::{self, NonNull};

use pymalloc_arena::{ARENA_SIZE, AUTO_HUGE_ARENAS, Capabilities, HugePages, Platform};
use pymalloc_pool::fatal;

use crate::lock::{SpinGuard, SpinLock};
use crate::registry::Registry;

/// Freed ranges kept for reuse.
pub const CACHE_ENTRIES: usize = 64;
/// Bytes of freed ranges kept for reuse, at first, and at least while the program has had
/// fewer in use lately (see the module documentation): enough that a program churning a few
/// MiB of large blocks of random sizes, touched sparsely, reuses their pages instead of
/// faulting fresh ones (`docs/design.md`, *The cache follows the program*).
pub const CACHE_BYTES: usize = 16 << 20;
/// The most bytes of freed ranges the cache grows to keep (1 GiB): a ceiling only; what it
/// keeps follows the program's blocks (see the module documentation).
pub const MAX_CACHE_BYTES: usize = 1 << 30;

/// A huge page's length: an arena's (`pymalloc_arena`), which is one. A block advised to huge
/// pages is mapped aligned to it.
pub const HUGE_PAGE: usize = ARENA_SIZE;
/// Bytes of large blocks in use from which [`HugePages::Auto`] advises them: the heap at which
/// it advises arenas.
pub const AUTO_HUGE_BYTES: usize = AUTO_HUGE_ARENAS * ARENA_SIZE;

/// Frees of large blocks (and shrinks) per window over which the cache remembers how much
/// was in use ([`Large::room`]): twice the ranges it holds.
const WINDOW: usize = 2 * CACHE_ENTRIES;

/// Bytes mapped for a large block of `size` bytes; `None` if that overflows.
#[inline]
pub fn mapping_len(size: usize, page: usize) -> Option<usize> {
    size.max(1).checked_next_multiple_of(page)
}

/// The most bytes a range may have to spare over the block it holds (1 GiB; [`fits`]). It
/// also keeps the hardened build's record of a block's slack (a 32-bit field of its tag,
/// `pymalloc_pool::secure`) exact for blocks of any size: the slack is the spare and less
/// than a page more.
pub const MAX_SPARE: usize = 1 << 30;

const _: () = assert!(
    MAX_SPARE + (1 << 30) <= pymalloc_pool::secure::MAX_SLACK,
    "a secure large block's slack (its spare and less than a page, of up to 1 GiB) must fit \
     its tag"
);

/// Whether a range of `len` bytes may hold a block that needs `needed` (L1): at least that,
/// and at most a quarter more (and no more than [`MAX_SPARE`]), so a range is reused for
/// sizes near its own without a system call, but never wastes much.
#[inline]
pub fn fits(len: usize, needed: usize) -> bool {
    len >= needed && len - needed <= (needed / 4).min(MAX_SPARE)
}

/// A cached range; `ptr` null for a vacant entry.
#[derive(Clone, Copy)]
struct Cached {
    ptr: *mut u8,
    len: usize,
    /// When it was freed (merged ranges: the latest), by [`Large::clock`]; the oldest is
    /// evicted first.
    freed_at: u64,
    /// The start of the block in use that this range lay behind when it was cached, its
    /// room to grow into in place; 0 if none is known. A hint only: the block may have
    /// moved or been freed since ([`Large::pick`]).
    behind: usize,
}

impl Cached {
    /// Whether this entry may give a block needing `len` bytes aligned to `align` (L1, L3).
    fn holds(&self, len: usize, align: usize) -> bool {
        // `align` is a power of two, so a mask tests the alignment.
        !self.ptr.is_null() && self.len >= len && self.ptr.addr() & align.wrapping_sub(1) == 0
    }

    fn end(&self) -> usize {
        self.ptr.addr() + self.len
    }
}

const VACANT: Cached = Cached {
    ptr: ptr::null_mut(),
    len: 0,
    freed_at: 0,
    behind: 0,
};

pub(crate) struct Large {
    /// The cached ranges, in no order (L3).
    cache: [Cached; CACHE_ENTRIES],
    /// Counts frees, to date the cached ranges.
    clock: u64,
    /// The most bytes cached (L3).
    cache_limit: usize,
    /// The most `cache_limit` grows to: [`MAX_CACHE_BYTES`] unless set by
    /// [`Large::set_max_cache`]; `cache_limit` starts at [`CACHE_BYTES`] or this if less.
    max_cache: usize,
    /// Bytes evicted since the limit last changed (or `trim` emptied the cache); saturates.
    evicted: usize,
    /// Bytes requested fresh, the cache having none for them, since the limit last changed
    /// (or `trim`); saturates.
    missed_bytes: usize,
    /// The longest request the cache ever missed: a block the program may ask for again.
    longest_missed: usize,
    /// The most bytes of large blocks in use during this window of [`WINDOW`] frees and the
    /// one before it ([`Large::room`]).
    recent_peaks: [usize; 2],
    /// Frees (and shrinks) in this window.
    window_frees: usize,
    cached_bytes: usize,
    cached_blocks: usize,
    /// The blocks in use (L2).
    in_use: Registry,
    /// Whether blocks are advised to huge pages ([`Large::advises`]).
    huge_pages: HugePages,
}

// SAFETY: cached ranges are owned exclusively by this value.
unsafe impl Send for Large {}

/// Figures about large blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LargeStats {
    pub blocks: usize,
    pub bytes: usize,
    pub cached_blocks: usize,
    pub cached_bytes: usize,
    pub cache_limit: usize,
    /// Bytes of the table of blocks in use.
    pub table_bytes: usize,
}

/// Ranges to unmap once the allocator's lock is released.
pub(crate) struct Unmap {
    items: [Cached; CACHE_ENTRIES + 1],
    len: usize,
}

impl Unmap {
    const NONE: Unmap = Unmap {
        items: [VACANT; CACHE_ENTRIES + 1],
        len: 0,
    };

    fn push(&mut self, mapping: Cached) {
        match self.items.get_mut(self.len) {
            Some(slot) => *slot = mapping,
            None => fatal("large: more mappings to unmap than the cache holds"),
        }
        self.len += 1;
    }

    /// Whether there is nothing to unmap.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Unmaps them all.
    ///
    /// # Safety
    /// The ranges are no longer used by anyone (they were cached, or just freed).
    pub(crate) unsafe fn release<P: Platform>(self, platform: &P) {
        for m in self.items.iter().take(self.len) {
            if let Some(ptr) = NonNull::new(m.ptr) {
                // SAFETY: `len` bytes of mapped pages of ours that nobody uses (caller, L1, L3).
                unsafe { platform.release(ptr, m.len) };
            }
        }
    }
}

/// The bookkeeping of large blocks: what is in use, and the cache. It makes no system call
/// for blocks, so that the allocator can hold its lock only around this, never around
/// `mmap` of a block.
impl Large {
    pub(crate) const fn new() -> Large {
        Large {
            cache: [VACANT; CACHE_ENTRIES],
            clock: 0,
            cache_limit: CACHE_BYTES,
            max_cache: MAX_CACHE_BYTES,
            evicted: 0,
            missed_bytes: 0,
            longest_missed: 0,
            recent_peaks: [0; 2],
            window_frees: 0,
            cached_bytes: 0,
            cached_blocks: 0,
            in_use: Registry::new(),
            huge_pages: HugePages::Never,
        }
    }

    /// Sets whether blocks are advised to huge pages.
    pub(crate) fn set_huge_pages(&mut self, policy: HugePages) {
        self.huge_pages = policy;
    }

    /// Whether a block of `len` mapped bytes, `added` of them not yet counted in use (all of a
    /// new block's, what a resize adds), is to be advised to huge pages: one of
    /// [`HUGE_PAGE`] or more, under [`HugePages::Always`], or under [`HugePages::Auto`] once
    /// large blocks in use (with these bytes) come to [`AUTO_HUGE_BYTES`], the heap at which
    /// arenas are advised.
    pub(crate) fn advises(&self, len: usize, added: usize) -> bool {
        len >= HUGE_PAGE
            && match self.huge_pages {
                HugePages::Never => false,
                HugePages::Auto => self.in_use.bytes().saturating_add(added) >= AUTO_HUGE_BYTES,
                HugePages::Always => true,
            }
    }

    /// Makes sure one more block can be registered; `false` if the table cannot grow.
    pub(crate) fn make_room<P: Platform>(&mut self, platform: &P) -> bool {
        self.in_use.make_room(platform)
    }

    /// Where a block needing `len` bytes aligned to `align` should come from: the entry,
    /// and the offset in it, a multiple of `page`. The smallest entry that [`fits`] it
    /// whole; else the front of the largest that holds it and lies behind no block in use,
    /// which keeps the most room behind the new block for it to grow into; else the largest
    /// that holds it, at the middle of the free run from the start of the block it lies
    /// behind to its end, so that the two blocks share the room to grow (two buffers grown
    /// side by side each grow in place in their half; taking the front left the first no
    /// room, and the two leapfrogged through fresh pages, `docs/notes.md`).
    fn pick(&self, len: usize, align: usize, page: usize) -> Option<(usize, usize)> {
        let holding = || {
            self.occupied()
                .iter()
                .enumerate()
                .filter(move |(_, c)| c.holds(len, align))
        };
        if let Some((i, _)) = holding()
            .filter(|(_, c)| fits(c.len, len))
            .min_by_key(|(_, c)| c.len)
            .or_else(|| {
                holding()
                    .filter(|(_, c)| c.behind == 0)
                    .max_by_key(|(_, c)| c.len)
            })
        {
            return Some((i, 0));
        }
        let (i, c) = holding().max_by_key(|(_, c)| c.len)?;
        // The middle, rounded down to the alignment; the front if there is no room there, or
        // no entry for the range that would be left after the block.
        let grain = align.max(page);
        let middle = c.behind + (c.end() - c.behind) / 2;
        let offset = middle.saturating_sub(c.ptr.addr()) / grain * grain;
        let room = offset.checked_add(len).is_some_and(|end| end <= c.len)
            && self.cached_blocks < CACHE_ENTRIES;
        Some((i, if room { offset } else { 0 }))
    }

    /// The occupied entries: the first `cached_blocks` (L3).
    fn occupied(&self) -> &[Cached] {
        self.cache.get(..self.cached_blocks).unwrap_or_default()
    }

    /// Takes `len` bytes from the front of entry `i` (all of it if they are: the last
    /// occupied entry then takes its place, so that the occupied ones stay first), leaving the
    /// rest cached, behind the block in use that starts at `behind` (0 for none).
    fn take_front(&mut self, i: usize, len: usize, behind: usize) {
        let last = self.cached_blocks.wrapping_sub(1);
        let Some(run) = self.cache.get_mut(i..=last) else {
            fatal("large: a cache entry out of range");
        };
        let whole = match run {
            // Taken whole: the last occupied entry moves into its place, and that is vacated.
            [taken, .., moved] if len == taken.len => {
                *taken = *moved;
                *moved = VACANT;
                true
            }
            [taken] if len == taken.len => {
                *taken = VACANT;
                true
            }
            [entry, ..] => {
                entry.ptr = entry.ptr.wrapping_add(len);
                entry.len -= len;
                entry.behind = behind;
                false
            }
            [] => fatal("large: a cache entry out of range"),
        };
        if whole {
            self.cached_blocks = last;
        }
        self.cached_bytes -= len;
    }

    /// Takes `len` bytes at `offset` (more than 0) into entry `i`: the entry keeps the run
    /// before them, and what lies after them, if anything, becomes an entry of its own,
    /// behind the block they now are. The caller has seen a vacant entry for it.
    fn take_middle(&mut self, i: usize, offset: usize, len: usize) {
        let entry = match self.cache.get_mut(i) {
            Some(entry) => entry,
            None => fatal("large: a split cache entry out of range"),
        };
        let block = entry.ptr.wrapping_add(offset);
        let after = entry.len - offset - len;
        let freed_at = entry.freed_at;
        entry.len = offset;
        if after > 0 {
            match self.cache.get_mut(self.cached_blocks) {
                Some(vacant) => {
                    *vacant = Cached {
                        ptr: block.wrapping_add(len),
                        len: after,
                        freed_at,
                        behind: block.addr(),
                    }
                }
                None => fatal("large: no vacant cache entry for a split range"),
            }
            self.cached_blocks += 1;
        }
        self.cached_bytes -= len;
    }

    /// A block needing `len` bytes aligned to `align` (a multiple of `page`), from the cache
    /// (see [`Large::pick`]), now registered in use, if the cache has one. Call
    /// [`Large::make_room`] first.
    pub(crate) fn take_cached(
        &mut self,
        len: usize,
        align: usize,
        page: usize,
    ) -> Option<NonNull<u8>> {
        let (i, offset) = self.pick(len, align, page)?;
        let entry = *self.cache.get(i)?;
        let block = NonNull::new(entry.ptr.wrapping_add(offset))?;
        let take = if offset > 0 {
            self.take_middle(i, offset, len);
            len
        } else {
            let take = if fits(entry.len, len) { entry.len } else { len };
            self.take_front(i, take, block.addr().get());
            take
        };
        self.in_use.insert(block, take);
        self.note_in_use();
        Some(block)
    }

    /// The longest cached range, taken out of the cache whole (its pages stay mapped and
    /// faulted in), for a request that no cached range holds to grow from by remapping;
    /// `None` if the cache is empty.
    pub(crate) fn take_longest(&mut self) -> Option<(NonNull<u8>, usize)> {
        let (i, entry) = self
            .occupied()
            .iter()
            .copied()
            .enumerate()
            .max_by_key(|(_, c)| c.len)?;
        let range = NonNull::new(entry.ptr)?;
        self.take_front(i, entry.len, 0);
        Some((range, entry.len))
    }

    /// Whether [`Large::take_cached`] would find a block for `len` bytes aligned to `align`.
    pub(crate) fn has_cached(&self, len: usize, align: usize) -> bool {
        self.occupied().iter().any(|c| c.holds(len, align))
    }

    /// Notes that `len` bytes of a request of `request` bytes (a block's whole length, or
    /// what a resize adds) must come from fresh pages, the cache having none for them. If
    /// the request is half the limit or more, and the cache evicted at least `len` since the
    /// limit last changed, the cache is too small for the blocks the program cycles through
    /// (it holds two of them at most); so it is if a limit's worth of requests missed while a
    /// limit's worth was evicted (many blocks churning). Then the limit doubles, though never past
    /// the most bytes of large blocks in use at once or the longest request missed (nor
    /// `max_cache`): a program cannot reuse more than that. A few
    /// small misses leave it alone: they are the luck of sizes in a cache that holds many
    /// blocks, and more memory buys little there (`docs/design.md`).
    pub(crate) fn missed(&mut self, request: usize, len: usize) {
        self.missed_bytes = self.missed_bytes.saturating_add(len);
        self.longest_missed = self.longest_missed.max(len);
        // `request` is any request's length, up to `isize::MAX`: compared with half the
        // limit, never doubled.
        let big_miss = request >= self.cache_limit - self.cache_limit / 2 && self.evicted >= len;
        // A cache's worth evicted and a cache's worth asked for again: the program cycles
        // through more than the cache holds, however it cuts it into blocks.
        let churn = self.evicted >= self.cache_limit && self.missed_bytes >= self.cache_limit;
        if big_miss || churn {
            // What the program could reuse: the most it had in use at once, or its longest
            // block (a buffer cycled alone is kept whole).
            let reusable = self
                .in_use
                .peak_bytes()
                .max(self.longest_missed)
                .max(CACHE_BYTES);
            // At most `max_cache` (L3), itself at most isize::MAX: doubling it cannot overflow.
            self.cache_limit = (2 * self.cache_limit)
                .min(reusable)
                .min(self.max_cache)
                .max(self.cache_limit);
            self.evicted = 0;
            self.missed_bytes = 0;
        }
    }

    /// Grows the block in use at `block`, `old` bytes long, to `new` bytes in place, with
    /// the front of the cached range that starts where it ends; `false`, changing nothing, if
    /// no cached range there is long enough.
    pub(crate) fn grow_in_place(&mut self, block: NonNull<u8>, old: usize, new: usize) -> bool {
        let end = block.addr().get() + old;
        let Some(i) = self
            .occupied()
            .iter()
            .position(|c| c.ptr.addr() == end && old + c.len >= new)
        else {
            return false;
        };
        self.take_front(i, new - old, block.addr().get());
        self.moved(block, block, new);
        true
    }

    /// Registers a new range of `len` bytes in use. Call [`Large::make_room`] first.
    pub(crate) fn register(&mut self, block: NonNull<u8>, len: usize) {
        self.in_use.insert(block, len);
        self.note_in_use();
    }

    /// The length of the large block in use at `ptr`, if there is one.
    pub(crate) fn len_of(&self, ptr: *mut u8) -> Option<usize> {
        self.in_use.len_of(ptr)
    }

    /// Records that the block at `old` now starts at `new`, `len` bytes long.
    pub(crate) fn moved(&mut self, old: NonNull<u8>, new: NonNull<u8>, len: usize) {
        if self.in_use.remove(old.as_ptr()).is_none() {
            fatal("large: a resized block was not registered");
        }
        // One out, one in: the table has room.
        self.in_use.insert(new, len);
        self.note_in_use();
    }

    /// Takes back a freed block: unregistered, then cached ([`Large::cache_range`]). Returns
    /// the block's length (`None`, changing nothing, if `ptr` is no large block in use) and
    /// what must be unmapped.
    pub(crate) fn take_back(&mut self, ptr: NonNull<u8>) -> Option<(usize, Unmap)> {
        let len = self.in_use.remove(ptr.as_ptr())?;
        Some((len, self.cache_range(ptr.as_ptr(), len, 0)))
    }

    /// Shrinks the block in use at `block` from `old` bytes to `new`, in place: its tail is
    /// cached ([`Large::cache_range`]), so the pages stay for the next request, or for the
    /// block to grow back into. Returns what must be unmapped.
    pub(crate) fn shrink(&mut self, block: NonNull<u8>, old: usize, new: usize) -> Unmap {
        self.moved(block, block, new);
        self.cache_range(
            block.as_ptr().wrapping_add(new),
            old - new,
            block.addr().get(),
        )
    }

    /// Notes the bytes in use after a block was registered, for [`Large::room`].
    fn note_in_use(&mut self) {
        self.recent_peaks[0] = self.recent_peaks[0].max(self.in_use.bytes());
    }

    /// The bytes the cache may hold now: its limit, or less while the program has had less
    /// in use lately — the most bytes of large blocks in use over the last [`WINDOW`] to
    /// 2 × `WINDOW` frees, the longest request it missed, or [`CACHE_BYTES`], whichever is
    /// more — so that a program that frees its large blocks and is done with them gets the
    /// memory back as it frees, while one whose blocks churn, or that allocates a batch and
    /// frees it, keeps what it cycles through.
    fn room(&self) -> usize {
        let wanted = self.recent_peaks[0]
            .max(self.recent_peaks[1])
            .max(self.longest_missed)
            .max(CACHE_BYTES);
        self.cache_limit.min(wanted)
    }

    /// Counts a free into the cache; every [`WINDOW`] of them, the window moves on.
    fn count_free(&mut self) {
        self.window_frees += 1;
        if self.window_frees >= WINDOW {
            self.window_frees = 0;
            self.recent_peaks = [self.in_use.bytes(), self.recent_peaks[0]];
        }
    }

    /// Caches a range of `len` bytes at `ptr` that nobody uses: merged with the cached ranges
    /// beside it and cached, evicting the oldest for room; of a range longer than the room
    /// ([`Large::room`]), merged or not, only the front is kept, where the next request would
    /// start and grow, its pages faulted in already. Returns what must be unmapped.
    fn cache_range(&mut self, ptr: *mut u8, len: usize, behind: usize) -> Unmap {
        let mut unmap = Unmap::NONE;
        self.count_free();
        let room = self.room();
        self.clock += 1;
        let mut range = Cached {
            ptr,
            len,
            freed_at: self.clock,
            behind,
        };
        // No two cached ranges touch (L3), so at most one ends where the block starts and
        // one starts where it ends. A merged entry leaves the cache, the last one taking its
        // place: look at the same index again.
        let mut i = 0;
        while let Some(&c) = self.occupied().get(i) {
            if c.end() == range.ptr.addr() {
                range.ptr = c.ptr;
                range.behind = c.behind;
            } else if c.ptr.addr() != range.end() {
                i += 1;
                continue;
            }
            range.len += c.len;
            self.take_front(i, c.len, 0);
        }
        if range.len > room {
            unmap.push(Cached {
                ptr: range.ptr.wrapping_add(room),
                len: range.len - room,
                freed_at: 0,
                behind: 0,
            });
            self.evicted = self.evicted.saturating_add(range.len - room);
            range.len = room;
            if room == 0 {
                return unmap; // a cache of no room (`PYMALLOC_LARGE_CACHE=0`) keeps nothing
            }
        }
        while self.cached_bytes + range.len > room || self.cached_blocks == CACHE_ENTRIES {
            self.evict_oldest(&mut unmap);
        }
        match self.cache.get_mut(self.cached_blocks) {
            Some(vacant) => *vacant = range,
            None => fatal("large: no vacant cache entry after eviction"),
        }
        self.cached_bytes += range.len;
        self.cached_blocks += 1;
        unmap
    }

    fn evict_oldest(&mut self, unmap: &mut Unmap) {
        let oldest = self
            .occupied()
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| c.freed_at);
        match oldest {
            Some((i, &entry)) => {
                self.take_front(i, entry.len, 0);
                self.evicted = self.evicted.saturating_add(entry.len);
                unmap.push(entry);
            }
            None => fatal("large: eviction from an empty cache"),
        }
    }

    /// Sets the most bytes the cache may grow to keep (0 keeps nothing; at most `isize::MAX`,
    /// so that doubling the limit cannot overflow), evicting what it holds beyond that;
    /// returns what must be unmapped.
    pub(crate) fn set_max_cache(&mut self, max: usize) -> Unmap {
        self.max_cache = max.min(isize::MAX as usize);
        self.cache_limit = CACHE_BYTES.min(self.max_cache);
        let mut unmap = Unmap::NONE;
        while self.cached_bytes > self.cache_limit {
            self.evict_oldest(&mut unmap);
        }
        unmap
    }

    /// Empties the cache; returns what must be unmapped.
    pub(crate) fn trim(&mut self) -> Unmap {
        let mut unmap = Unmap::NONE;
        while self.cached_blocks > 0 {
            self.evict_oldest(&mut unmap);
        }
        // Asked for, not forced by the limit.
        self.evicted = 0;
        self.missed_bytes = 0;
        unmap
    }

    pub(crate) fn stats(&self) -> LargeStats {
        LargeStats {
            blocks: self.in_use.count(),
            bytes: self.in_use.bytes(),
            cached_blocks: self.cached_blocks,
            cached_bytes: self.cached_bytes,
            cache_limit: self.cache_limit,
            table_bytes: self.in_use.table_bytes(),
        }
    }

    /// Checks the table of blocks in use (G1 to G3 in `registry.rs`) and the cache (L3).
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        let cached = || self.cache.iter().filter(|c| !c.ptr.is_null());
        let counts = (cached().count(), cached().map(|c| c.len).sum::<usize>());
        if self.occupied().iter().any(|c| c.ptr.is_null()) {
            return Err("large: a vacant cache entry among the occupied ones");
        }
        let start = CACHE_BYTES.min(self.max_cache);
        let limit_ok = (start..=self.max_cache).contains(&self.cache_limit)
            && self.max_cache <= isize::MAX as usize;
        if counts != (self.cached_blocks, self.cached_bytes)
            || self.cached_bytes > self.cache_limit
            || !limit_ok
        {
            return Err("large: the cache's counts are off, or it holds too much");
        }
        let touching = cached().any(|a| {
            cached().any(|b| {
                a.end() == b.ptr.addr()
                    || (a.ptr != b.ptr && a.ptr.addr() < b.end() && b.ptr.addr() < a.end())
            })
        });
        if touching {
            return Err("large: two cached ranges touch or overlap");
        }
        if cached().any(|c| c.behind >= c.ptr.addr()) {
            return Err("large: a cached range lies behind a block that does not start before it");
        }
        self.in_use.check()
    }

    /// Unmaps every block still in use and the table, leaving no block registered.
    ///
    /// # Safety
    /// None of the blocks is used any more.
    pub(crate) unsafe fn release_in_use<P: Platform>(&mut self, platform: &P) {
        let table = self.in_use.take();
        // SAFETY: registered blocks start mappings of their length (L1, L2), unused (caller);
        // the table came from `platform`.
        unsafe {
            table.for_each(|block, len| platform.release(block, len));
            table.release(platform);
        }
    }
}

/// The large blocks of an allocator: [`Large`] under a lock of its own, and the system calls
/// for blocks, made with that lock released.
pub(crate) struct LargeBlocks {
    state: SpinLock<Large>,
}

impl LargeBlocks {
    pub(crate) const fn new() -> LargeBlocks {
        LargeBlocks {
            state: SpinLock::new(Large::new()),
        }
    }

    /// Locks the bookkeeping.
    pub(crate) fn lock(&self) -> SpinGuard<'_, Large> {
        self.state.lock()
    }

    /// The lock itself, for `fork` handlers.
    pub(crate) fn raw(&self) -> &pymalloc_pool::RawLock {
        self.state.raw()
    }

    /// A large block for `layout`, registered, with whether it reads zero: from the cache,
    /// else mapped with the lock released. `None` if it cannot be had; `refused` is told the
    /// bytes the system would not map.
    pub(crate) fn allocate<P: Platform>(
        &self,
        platform: &P,
        layout: Layout,
        refused: impl FnOnce(usize),
    ) -> Option<(NonNull<u8>, bool)> {
        let len = mapping_len(layout.size(), platform.page_size())?;
        let (longest, huge) = {
            let mut large = self.lock();
            if !large.make_room(platform) {
                return None;
            }
            if let Some(cached) = large.take_cached(len, layout.align(), platform.page_size()) {
                return Some((cached, false));
            }
            let huge = large.advises(len, len);
            // No cached range holds it: the longest grows into it by remapping, so that only
            // the pages it lacks are fresh (as glibc's heap top grows by what it lacks).
            let regrow = layout.align() <= platform.page_size()
                && P::CAPABILITIES.contains(Capabilities::REMAP);
            let longest = if regrow { large.take_longest() } else { None };
            large.missed(len, len - longest.map_or(0, |(_, had)| had));
            (longest, huge)
        };
        if let Some((range, had)) = longest {
            // SAFETY: a cached range, now out of the cache: mapped and used by nobody.
            match unsafe { platform.remap(range, had, len, true) } {
                Some(block) => {
                    if huge {
                        // SAFETY: the range just remapped, ours alone.
                        unsafe { platform.advise_huge_pages(block, len) };
                    }
                    let mut large = self.lock();
                    if large.make_room(platform) {
                        large.register(block, len);
                        return Some((block, false));
                    }
                    drop(large);
                    // SAFETY: just remapped, never handed out.
                    unsafe { platform.release(block, len) };
                    return None;
                }
                None => {
                    // Back into the cache as it was (the system would not move it), and a
                    // fresh range mapped instead.
                    let unmap = self.lock().cache_range(range.as_ptr(), had, 0);
                    // SAFETY: ranges the cache evicted for it, used by nobody (L3).
                    unsafe { unmap.release(platform) };
                }
            }
        }
        // A block advised to huge pages starts one, so that all its whole huge pages can be.
        let align = if huge {
            layout.align().max(HUGE_PAGE)
        } else {
            layout.align()
        };
        let fresh = match platform.reserve(len, align) {
            Some(fresh) => fresh,
            None => {
                // Refused: what the cache holds may be the address space or commit charge
                // the system lacks. Empty it and ask once more.
                let unmap = self.lock().trim();
                let again = if unmap.is_empty() {
                    None
                } else {
                    // SAFETY: cached mappings are used by nobody.
                    unsafe { unmap.release(platform) };
                    platform.reserve(len, align)
                };
                let Some(fresh) = again else {
                    refused(len);
                    return None;
                };
                fresh
            }
        };
        if huge {
            // SAFETY: just mapped, ours alone; advised before its first touch.
            unsafe { platform.advise_huge_pages(fresh, len) };
        }
        let mut large = self.lock();
        if !large.make_room(platform) {
            drop(large);
            // SAFETY: just mapped, never handed out.
            unsafe { platform.release(fresh, len) };
            return None;
        }
        large.register(fresh, len);
        Some((fresh, P::CAPABILITIES.contains(Capabilities::ZERO_FILLED)))
    }

    /// Frees a large block; with `expected`, its mapping must [`fits`] one of those two
    /// lengths. A pointer that starts no large block in use, or one of a length that does not
    /// fit, is reported and aborts.
    ///
    /// # Safety
    /// If `ptr` is a large block in use, it is not used after this call.
    pub(crate) unsafe fn free<P: Platform>(
        &self,
        platform: &P,
        ptr: NonNull<u8>,
        expected: Option<[usize; 2]>,
    ) {
        let Some((len, unmap)) = self.lock().take_back(ptr) else {
            fatal("free: pointer is no block of this allocator (invalid or freed twice)");
        };
        if expected.is_some_and(|e| !e.iter().any(|&e| fits(len, e))) {
            fatal("dealloc: layout does not match the large block's size");
        }
        // SAFETY: the freed block and the cache entries evicted for it are unused.
        unsafe { unmap.release(platform) };
    }

    /// Resizes a large block of `old` bytes, aligned to `align`, without copying: in place if
    /// its range still [`fits`] the new size, shrinks (its tail cached), or grows into the
    /// cached range right after it, else by remapping (with the lock released). `None` if it
    /// should move by copy — it cannot be remapped, or it grows by half or more and the cache
    /// holds a range for it — in which case the block is unchanged.
    ///
    /// # Safety
    /// `block` is a large block in use of `old` bytes, aligned to `align`.
    pub(crate) unsafe fn resize<P: Platform>(
        &self,
        platform: &P,
        block: NonNull<u8>,
        old: usize,
        align: usize,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        let page = platform.page_size();
        let new = mapping_len(new_size, page)?;
        if fits(old, new) {
            return Some(block);
        }
        if new < old {
            let unmap = self.lock().shrink(block, old, new);
            // SAFETY: the block's tail and cached ranges evicted for it are unused.
            unsafe { unmap.release(platform) };
            return Some(block);
        }
        let mut large = self.lock();
        // Growing into the cached pages after it: already faulted in, and nothing moves.
        if large.grow_in_place(block, old, new) {
            return Some(block);
        }
        // Growing by half or more into cached pages elsewhere: copying the block costs less
        // than faulting in as many fresh pages as a remap would add (a page fault costs
        // several times a page's copy).
        if new - old >= old / 2 && large.has_cached(new, align) {
            return None;
        }
        large.missed(new - old, new - old);
        let huge = large.advises(new, new - old);
        drop(large);
        if !P::CAPABILITIES.contains(Capabilities::REMAP) {
            return None;
        }
        // The system places a moved mapping on a page boundary, no more: over-aligned blocks
        // may only be resized in place.
        // SAFETY: `block` starts `old` mapped bytes (L1, L2), ours alone (caller).
        let resized = unsafe { platform.remap(block, old, new, align <= page) }?;
        if huge {
            // SAFETY: the block just remapped, ours alone (caller); its pages stay as they are.
            unsafe { platform.advise_huge_pages(resized, new) };
        }
        self.lock().moved(block, resized, new);
        Some(resized)
    }

    /// The length of the large block in use at `ptr`, if there is one.
    pub(crate) fn len_of(&self, ptr: *mut u8) -> Option<usize> {
        self.lock().len_of(ptr)
    }

    /// Unmaps every cached range.
    pub(crate) fn trim<P: Platform>(&self, platform: &P) {
        let unmap = self.lock().trim();
        // SAFETY: cached mappings are used by nobody.
        unsafe { unmap.release(platform) };
    }

    /// Sets the most bytes the cache may keep ([`Large::set_max_cache`]), rounded down to
    /// whole pages, unmapping what it no longer may keep. (Every length the room is made of
    /// is then whole pages, and so is the front it keeps of a range longer than the room.)
    pub(crate) fn set_max_cache<P: Platform>(&self, platform: &P, max: usize) {
        let unmap = self.lock().set_max_cache(max - max % platform.page_size());
        // SAFETY: ranges evicted from the cache, which nobody uses (L3).
        unsafe { unmap.release(platform) };
    }

    /// Unmaps every block, in use or cached, and the table.
    ///
    /// # Safety
    /// None of the blocks is used any more.
    pub(crate) unsafe fn release_all<P: Platform>(&mut self, platform: &P) {
        let large = self.state.get_mut();
        // SAFETY: cached ranges are unused, and so are the blocks in use (caller).
        unsafe {
            large.trim().release(platform);
            large.release_in_use(platform);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_fits_a_block_it_holds_with_a_quarter_to_spare_and_at_most_a_gib() {
        const MIB: usize = 1 << 20;
        assert!(fits(MIB, MIB));
        assert!(fits(MIB + MIB / 4, MIB));
        assert!(!fits(MIB + MIB / 4 + 4096, MIB));
        assert!(!fits(MIB - 4096, MIB));
        // 16 GiB asked, 20 GiB cached: a quarter, but 4 GiB to spare, more than a secure
        // block's tag can record as slack.
        let gib = 1usize << 30;
        assert!(fits(16 * gib + MAX_SPARE, 16 * gib));
        assert!(!fits(20 * gib, 16 * gib));
    }
}
