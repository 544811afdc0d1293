//! Arenas: [`ARENA_SIZE`]-aligned mappings cut into [`POOL_SIZE`] slots, and the manager that
//! hands pools to the heaps — one slot, or a span of up to [`MAX_SPAN_SLOTS`] consecutive
//! slots — and takes them back.
//!
//! Slot 0 of every arena holds its [`Header`] and, from `pymalloc_pool::DESCRIPTORS` on, one
//! line per slot: the descriptor of the pool that starts there and the slot's first-slot
//! entry (only those pages are ever touched); slots 1.. are pool slots. Each arena keeps three bitmaps:
//! `free` (slot not in a pool), `dirty` (free slot written since it was last fresh or
//! decommitted) and `heads` (slot that starts a pool), and the span length of each pool.
//!
//! A pool may start at any slot: the first-slot entries lead from each of its slots to the
//! first, and so from any block to its pool's descriptor. Finding a free run of `k` slots in
//! an arena is a few shift-and-mask steps on `free`.
//!
//! Policies:
//! - *Best fit, dirty first*: every arena sits in a bucket by the longest run of free slots it
//!   has (capped at [`MAX_SPAN_SLOTS`]), and in another by its longest run of *dirty* free
//!   slots; with a bitmap of the non-empty buckets, a request for `k` slots takes, in O(1),
//!   the arena whose longest dirty run is the shortest that holds `k`, else the one whose
//!   longest free run is, else a new arena. Freed memory is thus reused before fresh memory
//!   is faulted in, small requests fill the holes of crowded arenas, long runs are kept for
//!   long spans, and sparse arenas drain and can go back. Inside the arena the run starts the
//!   shortest free stretch that holds it, so that longer stretches stay whole.
//! - *Decommit with hysteresis*: once more free slots are dirty than
//!   [`Arenas::dirty_limit`] allows (the *dirty floor*, or half as many as the slots in use if
//!   more), the oldest are decommitted until half that remains, so a pool freed and taken
//!   again in a loop costs no system call, a program whose live memory churns reuses what it
//!   freed instead of faulting fresh pages in, yet a program that frees most of its memory
//!   gets it back. The floor starts at one arena's worth and doubles (up to
//!   [`MAX_DIRTY_FLOOR`]) whenever half of what the last purge decommitted has been taken back
//!   into use by the next: a program whose free slots swing by more than the floor would
//!   otherwise decommit and fault the same pages in again and again.
//! - What the user may set ([`Arenas::set_policy`]): the most the floor rises to, how many
//!   empty arenas are kept at least (below), and huge pages ([`HugePages`]).
//! - *Huge pages where they pay*: an arena is one huge page's worth (2 MiB, aligned), so the
//!   platform may back it with one. Under [`HugePages::Auto`] arenas are
//!   advised to be once the program has [`AUTO_HUGE_ARENAS`] mapped (the one that crosses the
//!   line and those before it too), where a huge page's worth resident beside a part in use
//!   is little against the heap; under [`HugePages::Always`], every arena (advised before
//!   its first touch, or its pages would be small for good). Over the dirty limit, the free
//!   slots of advised arenas are decommitted after every other arena's, and wholly free
//!   arenas first (a huge page given back whole); only if that is not enough are advised
//!   arenas' huge pages split — the program then gave back more than the limit allows.
//! - *Keep some empty arenas*: up to [`Arenas::empty_limit`] wholly free arenas
//!   ([`MIN_EMPTY_ARENAS`], or one per [`EMPTY_SHARE`] arenas' worth of slots in use if more) stay
//!   mapped (their pages subject to the decommit policy); beyond that the one emptied longest
//!   ago is unmapped. A program whose live memory swings by a few arenas then maps and unmaps
//!   none.
//!
//! Invariants (checked by [`Arenas::check`]):
//! - A1 every arena is in the list of all arenas, in the run bucket of its longest free run
//!   and the dirty-run bucket of its longest dirty run (each capped at [`MAX_SPAN_SLOTS`]; in
//!   none for 0), and a bucket's bit is set in its bitmap exactly when it is not empty;
//! - A2 `dirty ⊆ free ⊆ USABLE` (the header slots are never free), `purged ⊆ free` and disjoint from
//!   `dirty`; the pools (a head and its span) tile exactly the slots that are not free;
//! - A3 an arena is in the dirty list exactly when it is not advised to huge pages and its
//!   `dirty` is not zero, and `dirty_slots` is the sum of their dirty bits (`huge_dirty_slots`
//!   that of the advised arenas'); an arena is in the empty list exactly when every slot is
//!   free, `empty` counts them, and is at most [`Arenas::empty_limit`];
//! - A4 the [`ArenaMap`] maps every arena's granule to its header, and nothing else;
//! - A5 the first-slot entry of a slot `i` in a pool names the pool's first slot
//!   (`first_slot_of` reads it as that slot's index), and 0 for a free slot (slot 0, the
//!   header's, starts no pool);
//! - A6 an arena is marked advised to huge pages (`huge`) once the platform took the advice,
//!   and stays so until it is unmapped; the policy advises each arena when it is due (every
//!   one under [`HugePages::Always`], every one once [`AUTO_HUGE_ARENAS`] are mapped under
//!   [`HugePages::Auto`]).
//!
//! The map lives outside the manager: the manager is used under its owner's lock, while
//! [`ArenaMap::pool_of`] answers "which pool holds this address?" from any thread without one.

use core::ptr::NonNull;

pub use pymalloc_pool::{ARENA_SHIFT, ARENA_SIZE, SLOTS};
use pymalloc_pool::{
    Chain, HEADER_BYTES, HEADER_SLOTS, List, MAX_SPAN_SLOTS, POOL_SIZE, ensure, fatal,
    slot_zero_line_is_clear,
};
use pymalloc_radix::NodeAlloc;

use crate::header::{
    All, Dirty, DirtyRuns, Empty, Header, Runs, header_of, pool_head, set_pool_head, slot,
    slot_index,
};
use crate::map::ArenaMap;
use crate::platform::{Capabilities, Platform};
use crate::slots::{SlotBits, USABLE, longest_run, place_run, run_mask, stretch_at};

/// Pool slots per arena.
pub const POOLS_PER_ARENA: usize = SLOTS - HEADER_SLOTS;
/// Wholly free arenas always allowed to stay mapped, by default (see [`Arenas::empty_limit`]
/// and [`Arenas::set_policy`]).
pub const MIN_EMPTY_ARENAS: usize = 4;
/// Dirty free slots always allowed before the oldest are decommitted, at first: one arena's
/// worth (see [`Arenas::dirty_limit`]).
pub const MIN_DIRTY_SLOTS: usize = SLOTS;
/// The most the dirty floor grows to when releases keep being undone, by default: 128 arenas'
/// worth (256 MiB; see [`Arenas::set_policy`]).
pub const MAX_DIRTY_FLOOR: usize = 128 * SLOTS;
/// Beyond the dirty floor, one dirty free slot may be kept per this many slots in use.
/// Measured on random medium sizes (`docs/design.md`): keeping less makes the program fault
/// freed memory back in, slower and with no lower peak.
pub const DIRTY_SHARE: usize = 2;
/// Beyond [`MIN_EMPTY_ARENAS`], one empty arena may stay mapped per this many arenas' worth of
/// slots in use.
pub const EMPTY_SHARE: usize = 8;
/// Arenas mapped from which [`HugePages::Auto`] advises them to huge pages: 16 MiB of heap,
/// against which a huge page resident beside a part in use is little. Measured against 32
/// (`docs/notes.md`): peaks within 1.4% of each other, a third of the page faults.
pub const AUTO_HUGE_ARENAS: usize = 8;

/// Whether arenas are advised to huge pages (module documentation; `PYMALLOC_HUGEPAGES`).
/// The `pymalloc` crate applies the same policy to its large blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HugePages {
    /// Never: every arena is backed page by page (the default: on the machine measured, a
    /// huge page's fault, zeroing 2 MiB and compacting memory to find it, cost Python more
    /// system time than the faults it saved; `docs/notes.md`).
    Never,
    /// Once [`AUTO_HUGE_ARENAS`] are mapped (large blocks: once as many bytes of them are
    /// in use).
    Auto,
    /// Every arena, from the first (large blocks: every one of a huge page or more).
    Always,
}

/// Buckets by longest run: 1 ..= MAX_SPAN_SLOTS (bucket 0, no run, is never used).
const RUN_BUCKETS: usize = MAX_SPAN_SLOTS + 1;

/// Under the `secure` feature, makes the last page of the header slots of the fresh arena at
/// `base` a guard page, which nothing uses (the lines and hot records end before it): a write
/// below the arena's first pool faults rather than reach the pools' hot records. Skipped
/// where a page is larger than that unused room, or the system refuses.
fn guard_headers<P: Platform>(platform: &P, base: NonNull<u8>) {
    let page = platform.page_size();
    let end = HEADER_SLOTS * POOL_SIZE;
    if page <= end - HEADER_BYTES {
        // SAFETY: a page inside the fresh reservation, past every line and hot record, which
        // nothing reads or writes (pools start at the next slot).
        unsafe { platform.set_guard(base.add(end - page), page, true) };
    }
}

/// Buckets of arenas by the length of a longest run (A1), with a bitmap of the non-empty ones.
struct Buckets<C: Chain<Header>> {
    lists: [List<Header, C>; RUN_BUCKETS],
    nonempty: u32,
}

impl<C: Chain<Header>> Buckets<C> {
    const fn new() -> Self {
        Buckets {
            lists: [const { List::new() }; RUN_BUCKETS],
            nonempty: 0,
        }
    }

    /// The arena of the shortest bucket holding runs of at least `len` slots, if any.
    fn best_fit(&self, len: usize) -> Option<NonNull<Header>> {
        let fits = self.nonempty & !((1u32 << len) - 1);
        if fits == 0 {
            return None;
        }
        // SAFETY: a set bit is below RUN_BUCKETS.
        unsafe { self.lists.get_unchecked(fits.trailing_zeros() as usize) }.head()
    }

    /// Moves `h` from bucket `from` to bucket `to` (0: none).
    ///
    /// # Safety
    /// `h` is a live header, in bucket `from` of these buckets; both are below RUN_BUCKETS.
    unsafe fn shift(&mut self, h: NonNull<Header>, from: usize, to: usize) {
        if from == to {
            return;
        }
        // SAFETY: in range and in that bucket (caller).
        unsafe {
            if from != 0 {
                let list = self.lists.get_unchecked_mut(from);
                list.remove(h);
                if list.is_empty() {
                    self.nonempty &= !(1 << from);
                }
            }
            if to != 0 {
                self.lists.get_unchecked_mut(to).push_back(h);
                self.nonempty |= 1 << to;
            }
        }
    }

    /// Checks the bitmap against the lists, and the lists (N1, N2), and returns each
    /// bucket's length.
    fn lengths(&self) -> Result<[usize; RUN_BUCKETS], &'static str> {
        let mut lengths = [0; RUN_BUCKETS];
        for ((n, list), length) in self.lists.iter().enumerate().zip(lengths.iter_mut()) {
            // SAFETY: bucketed headers are live (A1).
            *length = unsafe { list.check() }?;
            if (self.nonempty >> n & 1 == 1) != (*length != 0) || (n == 0 && *length != 0) {
                return Err("arenas: a bucket bitmap disagrees with its buckets");
            }
        }
        Ok(lengths)
    }
}

/// Node memory for the radix tree, straight from the platform (never from pymalloc).
pub(crate) struct PlatformNodes<'a, P>(pub(crate) &'a P);

// SAFETY: whole pages from the platform, zero-filled here if the platform does not promise it.
unsafe impl<P: Platform> NodeAlloc for PlatformNodes<'_, P> {
    fn alloc_node(&self, bytes: usize) -> Option<NonNull<u8>> {
        let size = bytes.next_multiple_of(self.0.page_size());
        let node = self.0.reserve(size, 1)?;
        if !P::CAPABILITIES.contains(Capabilities::ZERO_FILLED) {
            // SAFETY: a fresh reservation of `size` bytes.
            unsafe { node.as_ptr().write_bytes(0, size) };
        }
        Some(node)
    }

    unsafe fn free_node(&self, node: NonNull<u8>, bytes: usize) {
        // SAFETY: reserved by alloc_node with this rounded size (caller).
        unsafe {
            self.0
                .release(node, bytes.next_multiple_of(self.0.page_size()))
        }
    }
}

/// Figures about the arenas, for statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Arenas mapped.
    pub arenas: usize,
    /// Arenas with every pool slot free.
    pub empty_arenas: usize,
    /// Pools (of one slot or a span of several) in use.
    pub pools_in_use: usize,
    /// Slots in use by pools.
    pub slots_in_use: usize,
    /// Free pool slots whose memory is still committed.
    pub free_dirty_slots: usize,
    /// Free pool slots that are fresh or decommitted.
    pub free_clean_slots: usize,
    /// Dirty free slots allowed before the oldest are decommitted ([`Arenas::dirty_limit`]).
    pub dirty_limit: usize,
    /// Bytes mapped for arenas and for the arena map (its flat map and radix nodes).
    pub mapped_bytes: usize,
}

/// The arena manager. See the module documentation for its policies and invariants.
pub struct Arenas {
    /// Every arena.
    all: List<Header, All>,
    /// Arenas by their longest free run.
    by_run: Buckets<Runs>,
    /// Arenas by their longest dirty run.
    by_dirty_run: Buckets<DirtyRuns>,
    /// Arenas with dirty free slots, the oldest first, but those advised to huge pages (A3).
    dirty: List<Header, Dirty>,
    dirty_slots: usize,
    /// Dirty free slots of arenas advised to huge pages, which are not purged (A3).
    huge_dirty_slots: usize,
    /// Whether arenas are advised to huge pages.
    huge_pages: HugePages,
    /// Dirty free slots always allowed: [`MIN_DIRTY_SLOTS`] (or `max_floor` if less), raised
    /// up to `max_floor` each time a release is found undone.
    dirty_floor: usize,
    /// The most the dirty floor rises to ([`MAX_DIRTY_FLOOR`] unless set by
    /// [`Arenas::set_policy`]).
    max_floor: usize,
    /// Wholly free arenas always allowed to stay mapped ([`MIN_EMPTY_ARENAS`] unless set).
    min_empty: usize,
    /// Slots given back to the system (decommitted, or in arenas unmapped) since the floor
    /// last changed.
    released: usize,
    /// Of those, slots taken back into use since: purged slots, and slots of arenas mapped
    /// while released ones were outstanding (both marked `purged`).
    released_taken: usize,
    /// Arenas with every slot free, the one emptied longest ago first.
    empties: List<Header, Empty>,
    /// Slots in pools in use, over all arenas.
    slots_in_use: usize,
    arenas: usize,
    empty: usize,
}

// SAFETY: the manager exclusively owns the arenas its pointers lead to; moving it to another
// thread moves that ownership. Shared access is only through `&self` methods that read.
unsafe impl Send for Arenas {}

impl Default for Arenas {
    fn default() -> Self {
        Self::new()
    }
}

impl Arenas {
    /// A manager with no arena; maps nothing until the first pool is asked for.
    pub const fn new() -> Arenas {
        Arenas {
            all: List::new(),
            by_run: Buckets::new(),
            by_dirty_run: Buckets::new(),
            dirty: List::new(),
            dirty_slots: 0,
            huge_dirty_slots: 0,
            huge_pages: HugePages::Never,
            dirty_floor: MIN_DIRTY_SLOTS,
            max_floor: MAX_DIRTY_FLOOR,
            min_empty: MIN_EMPTY_ARENAS,
            released: 0,
            released_taken: 0,
            empties: List::new(),
            slots_in_use: 0,
            arenas: 0,
            empty: 0,
        }
    }

    /// Dirty free slots allowed before the oldest are decommitted: the dirty floor (from
    /// [`MIN_DIRTY_SLOTS`] to [`MAX_DIRTY_FLOOR`], by default), or one per [`DIRTY_SHARE`]
    /// slots in use if that is more.
    pub fn dirty_limit(&self) -> usize {
        self.dirty_floor.max(self.slots_in_use / DIRTY_SHARE)
    }

    /// Wholly free arenas allowed to stay mapped: [`MIN_EMPTY_ARENAS`] (by default), one per
    /// [`EMPTY_SHARE`] arenas' worth of slots in use, or the dirty floor's worth of arenas,
    /// whichever is most (a floor raised because released memory was taken back applies to
    /// whole arenas as it does to slots).
    pub fn empty_limit(&self) -> usize {
        self.min_empty
            .max(self.slots_in_use / (POOLS_PER_ARENA * EMPTY_SHARE))
            .max(self.dirty_floor / POOLS_PER_ARENA)
    }

    /// Puts the arena in the bucket of its longest free run (A1), after `free` changed.
    ///
    /// # Safety
    /// `h` is a live arena header of this manager, in the buckets its fields name.
    unsafe fn rebucket_free(&mut self, h: NonNull<Header>) {
        // SAFETY: a live header, in the bucket it names (caller); runs are capped below
        // RUN_BUCKETS.
        unsafe {
            let run = longest_run((*h.as_ptr()).free);
            self.by_run.shift(h, (*h.as_ptr()).run_bucket as usize, run);
            (*h.as_ptr()).run_bucket = run as u8;
        }
    }

    /// Puts the arena in the bucket of its longest dirty run (A1), after `dirty` changed.
    ///
    /// # Safety
    /// As [`Arenas::rebucket_free`].
    unsafe fn rebucket_dirty(&mut self, h: NonNull<Header>) {
        // SAFETY: as `rebucket_free`.
        unsafe {
            let run = longest_run((*h.as_ptr()).dirty);
            self.by_dirty_run
                .shift(h, (*h.as_ptr()).dirty_run_bucket as usize, run);
            (*h.as_ptr()).dirty_run_bucket = run as u8;
        }
    }

    /// Both of the above, after both bitmaps changed.
    ///
    /// # Safety
    /// As [`Arenas::rebucket_free`].
    unsafe fn rebucket(&mut self, h: NonNull<Header>) {
        // SAFETY: as the caller guarantees.
        unsafe {
            self.rebucket_free(h);
            self.rebucket_dirty(h);
        }
    }

    /// Both buckets, after slots holding slot `start` were added to `free` and `dirty`: no
    /// other stretch changed, so each longest run is the old one or the stretch at `start`.
    ///
    /// # Safety
    /// As [`Arenas::rebucket_free`], and slot `start` is free and dirty.
    unsafe fn rebucket_after_adding(&mut self, h: NonNull<Header>, start: u32) {
        // SAFETY: as the caller guarantees; runs are capped below RUN_BUCKETS.
        unsafe {
            let (old, run) = (
                (*h.as_ptr()).run_bucket as usize,
                stretch_at((*h.as_ptr()).free, start),
            );
            if run > old {
                self.by_run.shift(h, old, run);
                (*h.as_ptr()).run_bucket = run as u8;
            }
            let (old, run) = (
                (*h.as_ptr()).dirty_run_bucket as usize,
                stretch_at((*h.as_ptr()).dirty, start),
            );
            if run > old {
                self.by_dirty_run.shift(h, old, run);
                (*h.as_ptr()).dirty_run_bucket = run as u8;
            }
        }
    }

    /// Hands out one pool of `slots` consecutive slots (1 to [`MAX_SPAN_SLOTS`]):
    /// `slots * POOL_SIZE` bytes starting at a slot, exclusively the caller's until given
    /// back with [`Arenas::free_pool`], with whether they read zero. `None` if the platform
    /// refuses memory; the manager is unchanged but for a possibly new, empty arena. New arenas
    /// are entered in `map`, which must be the one this manager has always been given.
    pub fn alloc_pool<P: Platform>(
        &mut self,
        slots: usize,
        platform: &P,
        map: &ArenaMap,
    ) -> Option<(NonNull<u8>, bool)> {
        ensure(
            (1..=MAX_SPAN_SLOTS).contains(&slots),
            "alloc_pool: bad span length",
        );
        let h = match self
            .by_dirty_run
            .best_fit(slots)
            .or(self.by_run.best_fit(slots))
        {
            Some(h) => h,
            None => self.new_arena(platform, map)?,
        };
        let len = slots as u32;
        // SAFETY: `h` is a live arena with a free run of `len` slots (its bucket, or a new
        // arena); the run chosen becomes the caller's.
        unsafe {
            // A wholly dirty run first (`dirty ⊆ free`), else any free run.
            let Some(start) =
                place_run((*h.as_ptr()).dirty, len).or_else(|| place_run((*h.as_ptr()).free, len))
            else {
                fatal("alloc_pool: an arena bucketed with a free run has none")
            };
            let had_dirty = self.take_run(h, start, len, platform)?;
            (*h.as_ptr()).heads |= 1 << start;
            // `start < SLOTS`: a slot of the arena (place_run).
            *(*h.as_ptr()).span.get_unchecked_mut(start as usize) = len as u8;
            set_pool_head(h, start, len, start as u8);
            Some((
                slot(h, start),
                !had_dirty && P::CAPABILITIES.contains(Capabilities::ZERO_FILLED),
            ))
        }
    }

    /// Takes the free slots `start .. start + len` of `h` into use, committing those that are
    /// not dirty; returns whether any was dirty, or `None` (and changes nothing) if the
    /// platform refused the commit. The caller records the pool they belong to.
    ///
    /// # Safety
    /// `h` is a live arena of ours and those slots are free.
    unsafe fn take_run<P: Platform>(
        &mut self,
        h: NonNull<Header>,
        start: u32,
        len: u32,
        platform: &P,
    ) -> Option<bool> {
        let run = run_mask(start, len);
        // SAFETY: `h` is live and the run free (caller), so its memory is ours to commit.
        unsafe {
            let dirty_in_run = (*h.as_ptr()).dirty & run;
            if dirty_in_run != run && !platform.commit(slot(h, start), len as usize * POOL_SIZE) {
                return None;
            }
            if (*h.as_ptr()).free == USABLE {
                self.empties.remove(h);
                self.empty -= 1;
            }
            let purged_in_run = (*h.as_ptr()).purged & run;
            if purged_in_run != 0 {
                (*h.as_ptr()).purged &= !run;
                self.released_taken += purged_in_run.count_ones() as usize;
            }
            (*h.as_ptr()).free &= !run;
            self.slots_in_use += len as usize;
            if dirty_in_run != 0 {
                (*h.as_ptr()).dirty &= !run;
                let taken = dirty_in_run.count_ones() as usize;
                if (*h.as_ptr()).huge {
                    self.huge_dirty_slots -= taken;
                } else {
                    self.dirty_slots -= taken;
                    if (*h.as_ptr()).dirty == 0 {
                        self.dirty.remove(h);
                    }
                }
                self.rebucket_dirty(h);
            }
            self.rebucket_free(h);
            Some(dirty_in_run != 0)
        }
    }

    /// Gives the slots `start .. start + len` of `h` back: free, and dirty since they were in
    /// use. The caller has removed them from their pool, and lists the arena as empty if it
    /// now is.
    ///
    /// # Safety
    /// `h` is a live arena of ours and those slots are in use, no longer by anyone.
    unsafe fn give_back_run(&mut self, h: NonNull<Header>, start: u32, len: u32) {
        let run = run_mask(start, len);
        // SAFETY: `h` is live (caller).
        unsafe {
            (*h.as_ptr()).free |= run;
            self.slots_in_use -= len as usize;
            if (*h.as_ptr()).huge {
                self.huge_dirty_slots += len as usize;
            } else {
                if (*h.as_ptr()).dirty == 0 {
                    self.dirty.push_back(h);
                }
                self.dirty_slots += len as usize;
            }
            (*h.as_ptr()).dirty |= run;
            self.rebucket_after_adding(h, start);
        }
    }

    /// Raises the dirty floor if half of what was given back to the system since it last
    /// changed has been taken back into use: the program reuses that much, and releasing it
    /// again would only make it fault the same memory in again. The floor doubles, or jumps to
    /// what was released if more, up to the policy's most ([`MAX_DIRTY_FLOOR`]; glibc's mmap threshold follows
    /// the largest block freed in the same spirit).
    fn raise_floor_if_undone(&mut self) {
        if self.released > 0
            && self.released_taken * 2 >= self.released
            && self.dirty_floor < self.max_floor
        {
            self.dirty_floor = (self.dirty_floor * 2)
                .max(self.released)
                .min(self.max_floor);
            self.released = 0;
            self.released_taken = 0;
        }
    }

    /// Decommits the oldest dirty slots if more are dirty than [`Arenas::dirty_limit`] allows,
    /// until half that remains; first raises the dirty floor if what was released before has
    /// been taken back into use since ([`Arenas::raise_floor_if_undone`]).
    fn purge_over_limit<P: Platform>(&mut self, platform: &P) {
        if self.all_dirty_slots() <= self.dirty_limit() {
            return;
        }
        self.raise_floor_if_undone();
        if self.all_dirty_slots() <= self.dirty_limit() {
            return;
        }
        let before = self.all_dirty_slots();
        self.purge(platform, self.dirty_limit() / 2);
        self.released += before - self.all_dirty_slots();
    }

    /// Dirty free slots, in arenas advised to huge pages or not.
    fn all_dirty_slots(&self) -> usize {
        self.dirty_slots + self.huge_dirty_slots
    }

    /// Maps, registers and lists a new, empty arena.
    fn new_arena<P: Platform>(&mut self, platform: &P, map: &ArenaMap) -> Option<NonNull<Header>> {
        let base = platform.reserve(ARENA_SIZE, ARENA_SIZE)?;
        let h = base.cast::<Header>();
        // Advised before its first touch (the header's), which would otherwise map a small
        // page and leave the arena on small pages for good.
        // SAFETY: a fresh reservation, exclusively ours.
        let huge = self.huge_due(self.arenas + 1)
            && unsafe { platform.advise_huge_pages(base, ARENA_SIZE) };
        // SAFETY: a fresh reservation, exclusively ours, large and aligned enough for a header.
        unsafe {
            h.write(Header::new(
                USABLE,
                if self.released > 0 { USABLE } else { 0 },
            ));
            (*h.as_ptr()).huge = huge;
        }
        if pymalloc_pool::secure::ENABLED {
            guard_headers(platform, base);
        }
        if map.insert(h, &PlatformNodes(platform)).is_err() {
            // SAFETY: the reservation was never published.
            unsafe { platform.release(base, ARENA_SIZE) };
            return None;
        }
        self.arenas += 1;
        self.empty += 1;
        // SAFETY: a live header in no list, every pool slot free; then a live arena of ours.
        unsafe {
            self.all.push_back(h);
            self.empties.push_back(h);
            self.rebucket(h);
        }
        if self.huge_pages == HugePages::Auto && self.arenas == AUTO_HUGE_ARENAS {
            // The arenas before it too (their pages mapped already stay small, but the
            // system may gather them into huge pages later).
            self.advise_all(platform);
        }
        Some(h)
    }

    /// Takes back a pool. Its contents are given up; its slots may go to any class next.
    ///
    /// # Safety
    /// `pool` came from [`Arenas::alloc_pool`] on this manager and is no longer used; `map` is
    /// the manager's.
    pub unsafe fn free_pool<P: Platform>(
        &mut self,
        pool: NonNull<u8>,
        platform: &P,
        map: &ArenaMap,
    ) {
        let h = header_of(pool);
        let start = slot_index(pool);
        // SAFETY: `pool` starts a pool of a live arena of ours (caller), so `h` is its header.
        unsafe {
            ensure(
                pool.addr().get() % POOL_SIZE == 0 && (*h.as_ptr()).heads & (1 << start) != 0,
                "free_pool: not the start of a pool in use",
            );
            // `start < SLOTS`, the index of a slot of the arena.
            let len = *(*h.as_ptr()).span.get_unchecked(start as usize) as u32;
            (*h.as_ptr()).heads &= !(1 << start);
            set_pool_head(h, start, len, 0);
            self.give_back_run(h, start, len);
            if (*h.as_ptr()).free == USABLE {
                self.empties.push_back(h);
                self.empty += 1;
            }
        }
        self.release_over_limits(platform, map);
    }

    /// Unmaps the empty arenas emptied longest ago while more are empty than
    /// [`Arenas::empty_limit`] allows, then decommits dirty slots over
    /// [`Arenas::dirty_limit`] ([`Arenas::purge_over_limit`]).
    fn release_over_limits<P: Platform>(&mut self, platform: &P, map: &ArenaMap) {
        // Fewer slots in use may allow fewer empty arenas: unmap the oldest.
        if self.empty > self.empty_limit() {
            self.raise_floor_if_undone();
        }
        while self.empty > self.empty_limit()
            && let Some(h) = self.empties.head()
        {
            self.released += POOLS_PER_ARENA;
            // SAFETY: the head of the empty list is a live, empty arena (A3).
            unsafe { self.release_arena(h, platform, map) };
        }
        self.purge_over_limit(platform);
    }

    /// Sets the policy — wholly free arenas kept mapped at least, the most the dirty floor
    /// may rise to, in slots, and huge pages — and gives back at once what the new limits do
    /// not allow (arenas advised to huge pages stay so). `map` is the manager's.
    pub fn set_policy<P: Platform>(
        &mut self,
        min_empty: usize,
        max_floor: usize,
        huge_pages: HugePages,
        platform: &P,
        map: &ArenaMap,
    ) {
        self.min_empty = min_empty;
        self.max_floor = max_floor;
        self.dirty_floor = MIN_DIRTY_SLOTS.min(max_floor);
        self.huge_pages = huge_pages;
        if self.huge_due(self.arenas) {
            self.advise_all(platform);
        }
        self.release_over_limits(platform, map);
    }

    /// Resizes a pool in place to `slots` slots (1 to [`MAX_SPAN_SLOTS`]): it grows into the
    /// free slots right after it, if there are enough, or gives its last slots back. Returns
    /// whether it did; the pool keeps its start, and grown slots hold what they held (they are
    /// not known to read zero).
    ///
    /// # Safety
    /// `pool` came from [`Arenas::alloc_pool`] on this manager and is in use; slots it gives
    /// back are no longer used.
    pub unsafe fn resize_pool<P: Platform>(
        &mut self,
        pool: NonNull<u8>,
        slots: usize,
        platform: &P,
    ) -> bool {
        let h = header_of(pool);
        let start = slot_index(pool);
        // SAFETY: `pool` starts a pool of a live arena of ours (caller), so `h` is its header.
        unsafe {
            ensure(
                pool.addr().get() % POOL_SIZE == 0
                    && (*h.as_ptr()).heads & (1 << start) != 0
                    && (1..=MAX_SPAN_SLOTS).contains(&slots),
                "resize_pool: not the start of a pool in use, or a bad span length",
            );
            // `start < SLOTS`, the index of a slot of the arena.
            let old = *(*h.as_ptr()).span.get_unchecked(start as usize) as u32;
            let new = slots as u32;
            if new > old {
                let (added, more) = (start + old, new - old);
                // The bounds first: `run_mask` needs `added < SLOTS`.
                if start + new > SLOTS as u32
                    || (*h.as_ptr()).free & run_mask(added, more) != run_mask(added, more)
                    || self.take_run(h, added, more, platform).is_none()
                {
                    return false;
                }
                set_pool_head(h, added, more, start as u8);
            } else if new < old {
                set_pool_head(h, start + new, old - new, 0);
                self.give_back_run(h, start + new, old - new);
            }
            *(*h.as_ptr()).span.get_unchecked_mut(start as usize) = new as u8;
        }
        self.purge_over_limit(platform);
        true
    }

    /// Unmaps an empty arena.
    ///
    /// # Safety
    /// `h` is a live arena of ours in the empty list; `map` is the manager's.
    unsafe fn release_arena<P: Platform>(
        &mut self,
        h: NonNull<Header>,
        platform: &P,
        map: &ArenaMap,
    ) {
        // SAFETY: live header in the lists its fields name (caller); afterwards nothing refers
        // to the arena.
        unsafe {
            let dirty = (*h.as_ptr()).dirty.count_ones() as usize;
            if (*h.as_ptr()).huge {
                self.huge_dirty_slots -= dirty;
            } else if dirty != 0 {
                self.dirty_slots -= dirty;
                self.dirty.remove(h);
            }
            self.by_run.shift(h, (*h.as_ptr()).run_bucket as usize, 0);
            self.by_dirty_run
                .shift(h, (*h.as_ptr()).dirty_run_bucket as usize, 0);
            self.all.remove(h);
            self.empties.remove(h);
            map.remove(h.addr().get());
            self.arenas -= 1;
            self.empty -= 1;
            platform.release(h.cast(), ARENA_SIZE);
        }
    }

    /// Decommits the oldest dirty free slots until at most `target` remain dirty: those of
    /// arenas on small pages first, then those of arenas advised to huge pages, wholly free
    /// arenas before the others. Stops early, leaving everything consistent, if the platform
    /// refuses a decommit.
    pub fn purge<P: Platform>(&mut self, platform: &P, target: usize) {
        while self.all_dirty_slots() > target {
            let Some(h) = self.dirty.head() else {
                break;
            };
            // SAFETY: `h` is a live arena in the dirty list.
            if !unsafe { self.decommit_dirty(h, platform) } {
                return;
            }
        }
        // Then arenas advised to huge pages: whole ones first (empty arenas, the one emptied
        // longest ago first), so that no huge page is split while that is enough; then the
        // others — the program has given back more than the limit allows, and the memory
        // matters more than the huge pages.
        type Next = fn(&Arenas, NonNull<Header>) -> Option<NonNull<Header>>;
        // SAFETY: an empty arena's header is live and in the empty list (A3), which
        // decommitting does not change.
        let whole: Next = |a, h| unsafe { a.empties.next(h) };
        // SAFETY: every header is live and in the list of all arenas (A1), which decommitting
        // does not change.
        let any: Next = |a, h| unsafe { a.all.next(h) };
        for (first, next) in [(self.empties.head(), whole), (self.all.head(), any)] {
            // SAFETY: each list's head, with the walk along that list.
            if !unsafe { self.decommit_huge_along(first, next, target, platform) } {
                return;
            }
        }
    }

    /// Decommits the dirty free slots of the arenas advised to huge pages along a list, from
    /// `first` on to the next by `next`, while more than `target` are dirty; `false` if the
    /// platform refused one.
    ///
    /// # Safety
    /// `first` is the head of one of the manager's lists, and `next` walks that list.
    unsafe fn decommit_huge_along<P: Platform>(
        &mut self,
        first: Option<NonNull<Header>>,
        next: fn(&Self, NonNull<Header>) -> Option<NonNull<Header>>,
        target: usize,
        platform: &P,
    ) -> bool {
        let mut at = first;
        while let Some(h) = at
            && self.all_dirty_slots() > target
        {
            at = next(self, h);
            // SAFETY: `h` was reached along one of the manager's lists (caller), so it is
            // live (A1).
            if unsafe { (*h.as_ptr()).huge && !self.decommit_dirty(h, platform) } {
                return false;
            }
        }
        true
    }

    /// Decommits every dirty free slot of `h`, keeping the counts and the dirty list (A3);
    /// `false` if the platform refused one (what was done stays done).
    ///
    /// # Safety
    /// `h` is a live arena of this manager.
    unsafe fn decommit_dirty<P: Platform>(&mut self, h: NonNull<Header>, platform: &P) -> bool {
        // SAFETY: a live arena (caller); its dirty slots are free, so their contents are ours
        // to give up.
        unsafe {
            let huge = (*h.as_ptr()).huge;
            let mut refused = false;
            while (*h.as_ptr()).dirty != 0 && !refused {
                let d = (*h.as_ptr()).dirty;
                let start = d.trailing_zeros();
                let len = (!(d >> start)).trailing_zeros();
                refused = !platform.decommit(slot(h, start), len as usize * POOL_SIZE);
                if !refused {
                    (*h.as_ptr()).dirty &= !run_mask(start, len);
                    (*h.as_ptr()).purged |= run_mask(start, len);
                    if huge {
                        self.huge_dirty_slots -= len as usize;
                    } else {
                        self.dirty_slots -= len as usize;
                    }
                }
            }
            if (*h.as_ptr()).dirty == 0 && !huge {
                self.dirty.remove(h);
            }
            self.rebucket_dirty(h);
            !refused
        }
    }

    /// Whether the policy advises arenas to huge pages once `arenas` are mapped (A6).
    fn huge_due(&self, arenas: usize) -> bool {
        match self.huge_pages {
            HugePages::Never => false,
            HugePages::Auto => arenas >= AUTO_HUGE_ARENAS,
            HugePages::Always => true,
        }
    }

    /// Advises every arena to huge pages.
    fn advise_all<P: Platform>(&mut self, platform: &P) {
        let mut next = self.all.head();
        while let Some(h) = next {
            // SAFETY: listed headers are live (A1); advising one changes no list of `all`.
            unsafe {
                next = self.all.next(h);
                self.advise_huge(h, platform);
            }
        }
    }

    /// Advises `h` to huge pages; if the platform takes the advice, its dirty slots leave the
    /// purge's count and list (A3, A6).
    ///
    /// # Safety
    /// `h` is a live arena of this manager.
    unsafe fn advise_huge<P: Platform>(&mut self, h: NonNull<Header>, platform: &P) {
        // SAFETY: a live arena (caller), inside its reservation.
        unsafe {
            if (*h.as_ptr()).huge || !platform.advise_huge_pages(h.cast(), ARENA_SIZE) {
                return;
            }
            (*h.as_ptr()).huge = true;
            let dirty = (*h.as_ptr()).dirty.count_ones() as usize;
            if dirty != 0 {
                self.dirty.remove(h);
                self.dirty_slots -= dirty;
                self.huge_dirty_slots += dirty;
            }
        }
    }

    /// Gives back what is not needed: decommits every dirty free slot and unmaps every empty
    /// arena (`map` is the manager's).
    pub fn trim<P: Platform>(&mut self, platform: &P, map: &ArenaMap) {
        while let Some(h) = self.empties.head() {
            // SAFETY: the head of the empty list is a live, empty arena (A3).
            unsafe { self.release_arena(h, platform, map) };
        }
        self.purge(platform, 0);
    }

    /// Visits every arena.
    fn for_each_arena(&self, f: impl FnMut(NonNull<Header>)) {
        // SAFETY: listed headers are live (A1).
        unsafe { self.all.for_each(f) };
    }

    /// Visits the start of every pool in use.
    pub fn for_each_pool(&self, mut f: impl FnMut(NonNull<u8>)) {
        self.for_each_arena(|h| {
            // SAFETY: a live header.
            let mut heads = unsafe { (*h.as_ptr()).heads };
            while heads != 0 {
                f(slot(h, heads.trailing_zeros()));
                heads &= heads - 1;
            }
        });
    }

    /// Current figures (`map` is the manager's).
    pub fn stats(&self, map: &ArenaMap) -> ArenaStats {
        let mut pools = 0;
        // SAFETY: a live header.
        self.for_each_arena(|h| pools += unsafe { (*h.as_ptr()).heads.count_ones() } as usize);
        let free_slots = self.arenas * POOLS_PER_ARENA - self.slots_in_use;
        ArenaStats {
            arenas: self.arenas,
            empty_arenas: self.empty,
            pools_in_use: pools,
            slots_in_use: self.slots_in_use,
            free_dirty_slots: self.all_dirty_slots(),
            free_clean_slots: free_slots - self.all_dirty_slots(),
            dirty_limit: self.dirty_limit(),
            mapped_bytes: self.arenas * ARENA_SIZE + map.mapped_bytes(),
        }
    }

    /// Checks the invariants of one arena: A2, its buckets (A1), A5 and its map entry.
    ///
    /// # Safety
    /// `h` is a live arena header of this manager.
    unsafe fn check_arena(&self, h: NonNull<Header>, map: &ArenaMap) -> Result<(), &'static str> {
        // SAFETY: a live header (caller).
        let (free, dirty, purged, heads, span, buckets) = unsafe {
            (
                (*h.as_ptr()).free,
                (*h.as_ptr()).dirty,
                (*h.as_ptr()).purged,
                (*h.as_ptr()).heads,
                &(*h.as_ptr()).span,
                (
                    (*h.as_ptr()).run_bucket as usize,
                    (*h.as_ptr()).dirty_run_bucket as usize,
                ),
            )
        };
        if free & !USABLE != 0 || dirty & !free != 0 || heads & (free | !USABLE) != 0 {
            return Err("arenas: dirty slots not free, a head slot free, or the header slot free");
        }
        if purged & !free != 0 || purged & dirty != 0 {
            return Err("arenas: purged slots in use or dirty");
        }
        if buckets != (longest_run(free), longest_run(dirty)) {
            return Err("arenas: an arena is in the wrong bucket for its longest runs");
        }
        let mut tiled: SlotBits = 0;
        let mut rest = heads;
        while rest != 0 {
            let start = rest.trailing_zeros();
            let len = span.get(start as usize).copied().unwrap_or(0) as u32;
            if len == 0 || len as usize > MAX_SPAN_SLOTS || start + len > SLOTS as u32 {
                return Err("arenas: a pool's span is misshapen or past the arena's end");
            }
            let run = run_mask(start, len);
            if run & (tiled | free) != 0 {
                return Err("arenas: pools overlap each other or free slots");
            }
            for i in start..start + len {
                // SAFETY: a live header (caller); `i < SLOTS` as checked above.
                if unsafe { pool_head(h, i) } as u32 != start {
                    return Err("arenas: a slot of a pool does not lead to the pool's start");
                }
            }
            tiled |= run;
            rest &= rest - 1;
        }
        if tiled != USABLE & !free {
            return Err("arenas: slots in use that belong to no pool");
        }
        let mut free_slots = free;
        while free_slots != 0 {
            let i = free_slots.trailing_zeros();
            // SAFETY: a live header (caller); `i < SLOTS`.
            if unsafe { pool_head(h, i) } != 0 {
                return Err("arenas: a free slot leads to a pool");
            }
            free_slots &= free_slots - 1;
        }
        let start = h.cast::<u8>();
        if map.arena_of(start) != Some(h) {
            return Err("arenas: the map does not lead from the arena to its header");
        }
        // SAFETY: a live arena starts there.
        if !unsafe { slot_zero_line_is_clear(start) } {
            return Err("arenas: the line of slot 0 was written (pool P11)");
        }
        Ok(())
    }

    /// Checks invariants A1 to A5 (`map` is the manager's).
    pub fn check(&self, map: &ArenaMap) -> Result<(), &'static str> {
        let (mut arenas, mut empty, mut dirty_slots, mut dirty_arenas) = (0, 0, 0, 0);
        let mut huge_dirty_slots = 0;
        let mut free_slots = 0;
        let (mut runs, mut dirty_runs) = ([0usize; RUN_BUCKETS], [0usize; RUN_BUCKETS]);
        let mut result = Ok(());
        self.for_each_arena(|h| {
            // SAFETY: a live header.
            unsafe {
                arenas += 1;
                free_slots += (*h.as_ptr()).free.count_ones() as usize;
                empty += ((*h.as_ptr()).free == USABLE) as usize;
                let dirty = (*h.as_ptr()).dirty.count_ones() as usize;
                if (*h.as_ptr()).huge {
                    huge_dirty_slots += dirty;
                } else {
                    dirty_slots += dirty;
                    dirty_arenas += (dirty != 0) as usize;
                }
                for (counts, bucket) in [
                    (&mut runs, (*h.as_ptr()).run_bucket),
                    (&mut dirty_runs, (*h.as_ptr()).dirty_run_bucket),
                ] {
                    if let Some(count) = counts.get_mut(bucket as usize) {
                        *count += 1;
                    }
                }
                if result.is_ok() {
                    result = self.check_arena(h, map);
                }
            }
        });
        result?;
        let (listed_runs, listed_dirty_runs) =
            (self.by_run.lengths()?, self.by_dirty_run.lengths()?);
        if listed_runs[1..] != runs[1..] || listed_dirty_runs[1..] != dirty_runs[1..] {
            return Err("arenas: bucket lengths disagree with the arenas' own records");
        }
        let (mut listed, mut listed_empty) = (0, 0);
        // SAFETY: headers in the lists are live (A1, A3).
        unsafe {
            if self.all.check()? != arenas {
                return Err("arenas: the list of all arenas is off");
            }
            self.dirty.check()?;
            self.empties.check()?;
            self.dirty
                .for_each(|h| listed += ((*h.as_ptr()).dirty != 0 && !(*h.as_ptr()).huge) as usize);
            self.empties
                .for_each(|h| listed_empty += ((*h.as_ptr()).free == USABLE) as usize);
        }
        if arenas != self.arenas || empty != self.empty || listed_empty != empty {
            return Err("arenas: arena or empty-arena count, or the empty list, is off");
        }
        if empty > self.empty_limit() {
            return Err("arenas: more empty arenas than the limit");
        }
        if dirty_slots != self.dirty_slots
            || huge_dirty_slots != self.huge_dirty_slots
            || listed != dirty_arenas
        {
            return Err("arenas: dirty slot count or dirty list is off");
        }
        if self.slots_in_use != self.arenas * POOLS_PER_ARENA - free_slots {
            return Err("arenas: count of slots in use is off");
        }
        Ok(())
    }

    /// Unmaps every arena and the map's nodes, whatever they hold.
    ///
    /// # Safety
    /// Nothing handed out by this manager is used any more, and nobody looks up `map`, the
    /// manager's, any more.
    pub unsafe fn release_all<P: Platform>(&mut self, platform: &P, map: &mut ArenaMap) {
        // SAFETY: listed headers are live; the next link is read before each is unmapped, and
        // nothing uses the arenas any more (caller).
        unsafe {
            self.all
                .for_each(|h| platform.release(h.cast(), ARENA_SIZE))
        };
        // SAFETY: every node came from PlatformNodes over this platform; no lookup follows.
        unsafe { map.release(&PlatformNodes(platform)) };
        *self = Arenas::new();
    }
}
