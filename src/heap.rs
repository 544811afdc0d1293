//! Heaps: [`HeapCell`], one heap — for each size class the list of its *usable* pools, and a
//! few empty pools kept back — with the lock-free lists of blocks other threads freed into it
//! (one per [`REMOTE_SHARDS`] shard, the freeing heap's), and its counters.
//!
//! A heap is used by one thread at a time: the one that *claimed* it (its `claim` lock). A
//! thread's own heap stays claimed as long as the thread is bound to it; an instance's
//! fallback heap is claimed around each call; an unbound heap is claimed for a moment by
//! whoever collects the blocks freed into it. Heaps are never freed while their allocator
//! lives: a pool records its heap as its owner (pool invariant P7), and a heap is handed on
//! whole, so that owner stays valid for every block.
//!
//! Invariants:
//! - H1 a pool is in its class's list exactly when it has a block to hand out and a block in
//!   use — or it is a one-slot pool that emptied at the head of the list, which stays there
//!   (so that one block allocated and freed in a loop never leaves the fast path) until
//!   it is unparked (H7); full pools are in no list, and one that takes a block back
//!   rejoins at the tail (a new pool joins an empty list); any other pool whose
//!   last block comes back goes to the heap's few kept empty pools or back to the arenas,
//!   where any class may take its slots (O(1));
//! - H2 every pool listed or cached is a pool slot in use in the arenas, owned by this heap;
//! - H3 only the claimant reads or writes the heap's pools, lists and kept blocks (H8); other
//!   threads touch only `remote` (push) and the pools' `owner` field (read);
//! - H4 a block freed by a thread that does not own its pool is kept by the freeing heap (H8)
//!   or pushed on one of the owner's remote lists (the freeing heap's shard), alone or in a
//!   chain of the owner's blocks, and stays in use in its pool until the owner
//!   takes the lists back — when it has no usable pool for a class, before taking new memory;
//!   a pool that was full rejoins its list then, so no full pool is ever lost. If the owner
//!   has no thread, whoever sees that after pushing collects the lists itself (`collect`): a
//!   pusher pushes then looks at the claim, a releasing claimant releases then looks at every
//!   list, both sequentially consistent, so at least one of them sees the other;
//! - H5 `counters` are written only by the claimant, with plain loads and stores (no
//!   read-modify-write), and read by anyone: per class, the pools owned and full, and the
//!   blocks of other heaps' pools freed here (kept, H8, or sent back; less those kept and
//!   handed out again) and taken back from this heap's remote lists. Blocks in
//!   use are not counted here but in each pool's `used` (pool invariant P8), which still
//!   counts a block waiting on a remote list: the sum over all heaps of blocks freed
//!   remotely less blocks taken back is what to subtract, exact whenever no thread is
//!   between the two;
//! - H6 a *sharing* heap (a thread's; never the fallback heap, nor a local heap) with no
//!   usable pool for a class of blocks up to [`SHARED_MAX`] takes the class's blocks from the
//!   fallback heap, claiming it, until it has taken [`SHARED_BYTES`] of the class; then it
//!   takes pools of its own. A block of a pool the fallback heap owns is freed, and checked,
//!   in the fallback heap, claimed, whoever frees it — never through a remote list;
//! - H7 every empty pool listed (a one-slot pool at its class's head, H1) has its class
//!   *parked*: one bit of a mask, counted in the allocator's total. Parking one more class
//!   when the heap has [`PARKED_POOLS`] parked and all heaps together [`PARKED_TOTAL`]
//!   unparks others and gives up their empty heads. So each of many threads holds
//!   at most [`PARKED_POOLS`] listed empty pools and [`CACHED_POOLS`] kept ones, however
//!   many classes it touched, while each of a few keeps an empty pool per class it cycles
//!   through.
//! - H8 a thread's heap or a local heap (never the fallback heap) keeps the blocks of other
//!   heaps' pools that its claimant frees, per class, up to [`FOREIGN_BLOCKS`] and
//!   [`FOREIGN_CLASS_BYTES`] of a class and [`FOREIGN_BYTES`] in all (none of a class whose
//!   blocks are larger than [`FOREIGN_CLASS_BYTES`]), each owner's in a chain of its own
//!   (at most [`KEPT_OWNERS`] a class), and hands them out, the last kept chain's last freed
//!   first, when it has no usable pool of the class — before it takes the fallback heap's
//!   blocks or its remote lists back or a new pool. (Handing them out before its own pools'
//!   blocks was tried, twice: with a test on every allocation, and with a per-class front
//!   for the fast paths that costs them nothing. Either way a kept block handed out here is
//!   still the other heap's, so its next free here is remote again and it never goes home:
//!   C churn on two threads executed 16% more instructions; `docs/notes.md`.)
//!   A kept block is free: it holds its freed mark (so a second free of it, from any thread,
//!   aborts), and is counted as freed remotely (H5), while its pool still counts it in use.
//!   Past a class's limit, or a block of one more owner than it has chains for, the class's
//!   longest chain goes back to its owner whole, with one compare-and-swap and no block
//!   read; all of them go back when the heap is handed on (its thread
//!   exits, a local heap is dropped) and when its thread calls `trim`. So a thread keeps at
//!   most [`FOREIGN_BYTES`] of other threads' blocks, however long it stops allocating.
//!
//! The fast path is [`Claim::alloc`] and [`Claim::free`]: a freelist pop or push, no
//! lock and no atomic read-modify-write; a new pool, a full or empty pool and remote frees are
//! `#[cold]`.

use core::cell::UnsafeCell;
use core::ops::Deref;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use pymalloc_arena::{ARENA_SIZE, ArenaMap, Arenas, Platform};
use pymalloc_pool::secure::{self, read_link, write_link};
use pymalloc_pool::{
    Freed, FreedMark, Inbox, MAX_SPAN_SLOTS, NUM_CLASSES, POOL_SIZE, POOLED_MAX, PoolList, PoolPtr,
    SizeClass, blocks_per_pool, clear_freed_mark, fatal, holds_freed_mark,
};

use crate::shared::{Shared, SharedAccess};

/// Empty pools a heap keeps rather than return them to the arenas, so that a pool emptied
/// and refilled in a loop takes no lock.
pub const CACHED_POOLS: usize = 4;
/// Most slots the kept pools may hold together (one span of the largest class).
pub const CACHED_SLOTS: usize = MAX_SPAN_SLOTS;
/// Empty one-slot pools a heap may leave listed at the head of their class's list (H1, H7)
/// however many heaps there are; more while all heaps together park fewer than
/// [`PARKED_TOTAL`]. So a program of a few threads keeps an empty pool for every class it
/// cycles through, as obmalloc does (a producer whose blocks other threads free never waits
/// on the arenas' lock for one), while each of a thousand threads that touched many classes
/// for a few blocks and went idle holds only these few.
pub const PARKED_POOLS: usize = 4;
/// Empty listed pools all heaps together may hold, beyond [`PARKED_POOLS`] each: 1 024
/// pools, at most 16 MiB of slots, of which only the pages once used are committed.
pub const PARKED_TOTAL: usize = 1024;
/// Bytes of each class a sharing heap (a thread's) takes from the fallback heap's pools,
/// shared by all threads, before it takes a pool of its own: one page, the least a pool of
/// its own costs in memory. A thread that uses a class for a few blocks — most classes of
/// most threads — so never holds a pool of it mostly idle (H6).
pub const SHARED_BYTES: usize = 4096;
/// The largest block size shared (H6): a bigger block fills most of a page on its own, so a
/// pool of its own costs little more, and a block of another heap's pool cannot grow in
/// place (`resize_in_place`), which growing vectors of a few KiB rely on.
pub const SHARED_MAX: usize = SHARED_BYTES / 2;

/// The classes whose list may start with an empty pool (H7), one bit each; a bit may stay set
/// after its pool took a block again. When too many are set, the next class parked displaces
/// the first set one from `cursor` on, which goes round: roughly the oldest.
struct Parked {
    classes: u128,
    cursor: u32,
}

const _: () = assert!(NUM_CLASSES <= u128::BITS as usize, "a bit per class");

impl Parked {
    const fn new() -> Parked {
        Parked {
            classes: 0,
            cursor: 0,
        }
    }

    #[inline(always)]
    fn has(&self, class: SizeClass) -> bool {
        self.classes >> class.index() & 1 != 0
    }

    fn count(&self) -> usize {
        self.classes.count_ones() as usize
    }

    fn add(&mut self, class: SizeClass) {
        self.classes |= 1 << class.index();
    }

    fn remove(&mut self, class: SizeClass) {
        self.classes &= !(1 << class.index());
    }

    /// Unparks and returns the first parked class other than `keep` from the cursor on.
    fn take_other(&mut self, keep: Option<SizeClass>) -> Option<SizeClass> {
        let others = self.classes & !keep.map_or(0, |keep| 1 << keep.index());
        if others == 0 {
            return None;
        }
        // The set bits at or above the cursor first, then from the bottom.
        let above = others & (u128::MAX << self.cursor);
        let bits = if above != 0 { above } else { others };
        let index = bits.trailing_zeros();
        self.cursor = (index + 1) % u128::BITS;
        let class = SizeClass::from_index(index as usize)?;
        self.remove(class);
        Some(class)
    }
}

/// A heap's empty pools, with their sizes in slots.
struct EmptyPools {
    pools: [(*mut u8, usize); CACHED_POOLS],
    len: usize,
    slots: usize,
}

impl EmptyPools {
    const fn new() -> EmptyPools {
        EmptyPools {
            pools: [(ptr::null_mut(), 0); CACHED_POOLS],
            len: 0,
            slots: 0,
        }
    }

    /// An empty pool of `slots` slots, if one is kept.
    fn take(&mut self, slots: usize) -> Option<NonNull<u8>> {
        self.take_first(|_, s| s == slots)
    }

    /// A kept pool that starts at an address in `range`, taken out of the cache.
    fn take_within(&mut self, range: core::ops::Range<usize>) -> Option<NonNull<u8>> {
        self.take_first(|memory, _| range.contains(&memory.addr()))
    }

    /// The first kept pool whose memory and slots satisfy `wanted`, taken out of the cache.
    fn take_first(&mut self, wanted: impl Fn(*mut u8, usize) -> bool) -> Option<NonNull<u8>> {
        let kept = self.pools.get_mut(..self.len)?;
        let i = kept
            .iter()
            .position(|&(memory, slots)| wanted(memory, slots))?;
        // The last kept pool takes the place of the one taken.
        kept.swap(i, kept.len() - 1);
        self.pop()
    }

    /// Keeps an empty pool if there is room.
    fn put(&mut self, memory: NonNull<u8>, slots: usize) -> bool {
        if self.slots + slots > CACHED_SLOTS {
            return false;
        }
        let Some(vacant) = self.pools.get_mut(self.len) else {
            return false; // CACHED_POOLS kept already
        };
        *vacant = (memory.as_ptr(), slots);
        self.len += 1;
        self.slots += slots;
        true
    }

    fn pop(&mut self) -> Option<NonNull<u8>> {
        let len = self.len.checked_sub(1)?;
        let (memory, slots) = self.pools.get(len).copied()?;
        self.len = len;
        self.slots -= slots;
        NonNull::new(memory)
    }
}

/// The message of a free of a block found free (its freed mark, P9).
const ALREADY_FREE: &str = "free of a block that is already free (double free)";
/// The same, for a block found free that is neither on its pool's freelist nor on its
/// heap's remote lists: kept by another heap, say (H8).
const FREED_NOT_HANDED_OUT: &str =
    "free of a block that is already free: freed and not handed out since (double free)";

/// Most blocks of one class a heap keeps of other heaps' pools (H8).
pub const FOREIGN_BLOCKS: usize = 64;
/// Most bytes of one class a heap keeps of other heaps' pools (H8): fewer blocks of larger
/// classes, and none of classes above it, which go back to their owners at once.
pub const FOREIGN_CLASS_BYTES: usize = 4 * 1024;
/// Most bytes a heap keeps of other heaps' pools, all classes together (H8). (A thread that
/// only frees others' blocks never hands them out: 256 KiB, and 16 KiB a class, held
/// producer-consumer's blocks to no use, 7% of its peak RSS; `docs/notes.md`.)
pub const FOREIGN_BYTES: usize = 64 * 1024;

/// How many blocks of `class` a heap keeps of other heaps' pools (H8); 0 for a class that
/// goes back to its owners at once.
#[inline(always)]
fn foreign_limit(class: SizeClass) -> usize {
    (FOREIGN_CLASS_BYTES / class.block_size()).min(FOREIGN_BLOCKS)
}

/// Owners whose blocks of one class a heap keeps at once (H8), each owner's in a chain of
/// its own: sending a chain back is one push, with no block read (sorting one mixed stack by
/// owner read every block again, blocks freed long before; `docs/notes.md`).
pub const KEPT_OWNERS: usize = 2;

/// One owner's kept blocks of a class (H8): a stack through the blocks' first words.
#[derive(Clone, Copy)]
struct Chain {
    /// The block kept last, handed out first.
    head: *mut u8,
    /// The block kept first, at the bottom: where the chain sent back ends.
    tail: *mut u8,
    /// The heap that owns every block's pool; null for an empty chain.
    owner: *mut (),
    count: u32,
}

impl Chain {
    const NONE: Chain = Chain {
        head: ptr::null_mut(),
        tail: ptr::null_mut(),
        owner: ptr::null_mut(),
        count: 0,
    };
}

/// One class's kept blocks (H8): a chain per owner, at most [`KEPT_OWNERS`].
#[derive(Clone, Copy)]
struct Kept {
    chains: [Chain; KEPT_OWNERS],
    /// The chain a block was kept in last: the one handed out from first.
    last: usize,
}

impl Kept {
    const NONE: Kept = Kept {
        chains: [Chain::NONE; KEPT_OWNERS],
        last: 0,
    };

    /// Blocks kept, all chains together.
    fn count(&self) -> usize {
        self.chains.iter().map(|c| c.count as usize).sum()
    }

    /// The chain holding `owner`'s blocks, else an empty one.
    fn chain_for(&self, owner: *mut ()) -> Option<usize> {
        let chains = self.chains.iter();
        chains
            .clone()
            .position(|c| c.owner == owner)
            .or_else(|| chains.clone().position(|c| c.count == 0))
    }

    /// The chain with the most blocks.
    fn longest(&self) -> usize {
        let chains = self.chains.iter().enumerate();
        chains.max_by_key(|(_, c)| c.count).map_or(0, |(i, _)| i)
    }

    /// The chain to hand a block out from: the one kept in last, else any that has one.
    fn chain_to_hand_out(&self) -> Option<usize> {
        let has = |i: usize| self.chains.get(i).is_some_and(|c| c.count > 0);
        if has(self.last) {
            return Some(self.last);
        }
        (0..KEPT_OWNERS).find(|&i| has(i))
    }

    #[inline(always)]
    fn chain(&mut self, i: usize) -> &mut Chain {
        match self.chains.get_mut(i) {
            Some(chain) => chain,
            None => fatal("heap: a kept chain out of range (H8)"),
        }
    }
}

/// Blocks of other heaps' pools that the claimant freed, kept to hand out again rather than
/// sent back one by one (H8), per class, every block holding its freed mark.
struct Foreign {
    classes: [Kept; NUM_CLASSES],
    /// Bytes kept, all classes together.
    bytes: usize,
    /// Whether the heap keeps foreign blocks at all: a thread's heap or a local heap does;
    /// the fallback heap, claimed for a moment by whoever needs it, does not.
    enabled: bool,
}

impl Foreign {
    const fn new() -> Foreign {
        Foreign {
            classes: [Kept::NONE; NUM_CLASSES],
            bytes: 0,
            enabled: false,
        }
    }

    #[inline(always)]
    fn class(&mut self, class: SizeClass) -> &mut Kept {
        // SAFETY: a SizeClass's index is below NUM_CLASSES.
        unsafe { self.classes.get_unchecked_mut(class.index()) }
    }

    /// Takes chain `i` of the blocks kept of `class`, leaving it empty.
    fn take(&mut self, class: SizeClass, i: usize) -> Chain {
        let chain = core::mem::replace(self.class(class).chain(i), Chain::NONE);
        self.bytes -= chain.count as usize * class.block_size();
        chain
    }
}

/// What only the claimant of a heap touches.
struct Heap {
    usable: [PoolList; NUM_CLASSES],
    empty: EmptyPools,
    parked: Parked,
    /// Whether the heap takes its claimant's first [`SHARED_BYTES`] of each class from the
    /// fallback heap (H6): set by whoever claims an unbound heap.
    shares: bool,
    /// Bytes of each class taken from the fallback heap, up to [`SHARED_BYTES`].
    shared_taken: [u32; NUM_CLASSES],
    /// Blocks of other heaps' pools kept to hand out again (H8).
    foreign: Foreign,
}

impl Heap {
    #[inline(always)]
    fn list(&mut self, class: SizeClass) -> &mut PoolList {
        // SAFETY: a SizeClass's index is below NUM_CLASSES.
        unsafe { self.usable.get_unchecked_mut(class.index()) }
    }
}

/// Per-class counters of one heap (H5).
pub(crate) struct Counters {
    /// Blocks its claimant freed onto other heaps' remote lists.
    pub(crate) freed_remotely: [AtomicUsize; NUM_CLASSES],
    /// Blocks taken back from this heap's remote lists. Summed over all heaps, the first
    /// less this is the blocks waiting on remote lists: still counted in their pools'
    /// `used`, though their owners no longer hold them.
    pub(crate) taken_back: [AtomicUsize; NUM_CLASSES],
    /// Pools owned, not counting kept empty ones.
    pub(crate) pools: [AtomicUsize; NUM_CLASSES],
    /// Of those, pools with no block left to hand out.
    pub(crate) full: [AtomicUsize; NUM_CLASSES],
}

/// Adds `delta` (wrapping) to a counter only its heap's claimant writes: a load and a store.
#[inline(always)]
fn bump(counters: &[AtomicUsize; NUM_CLASSES], class: SizeClass, delta: isize) {
    // SAFETY: a SizeClass's index is below NUM_CLASSES.
    let c = unsafe { counters.get_unchecked(class.index()) };
    c.store(
        c.load(Ordering::Relaxed).wrapping_add_signed(delta),
        Ordering::Relaxed,
    );
}

/// Remote lists per heap. A freeing heap pushes onto the list of its own shard
/// (`HeapCell::shard`), so that threads freeing into one heap each update a line of their
/// own rather than all contending for one; the owner takes them all back together.
pub const REMOTE_SHARDS: usize = 8;

/// One heap, its claim and remote lists (its [`Inbox`]) and its counters. See the module
/// documentation.
pub(crate) struct HeapCell {
    inbox: Inbox<REMOTE_SHARDS>,
    heap: UnsafeCell<Heap>,
    pub(crate) counters: Counters,
    /// The next heap of the allocator's list of all heaps; set before the heap is published,
    /// then never changed.
    pub(crate) next_all: *const HeapCell,
    /// The next heap on the allocator's stack of unbound heaps; only under its lock.
    pub(crate) next_free: AtomicPtr<HeapCell>,
    /// Which of other heaps' remote lists this heap's frees go to: set when the heap is made,
    /// then never changed.
    shard: usize,
}

// SAFETY: the heap's own state is only touched by its claimant (H3), which the claim lock
// makes one thread at a time; everything else is atomic or immutable.
unsafe impl Sync for HeapCell {}
// SAFETY: as above; the pools a heap points to are its own.
unsafe impl Send for HeapCell {}

impl HeapCell {
    /// A heap whose frees into other heaps go to their remote lists of `shard` (taken modulo
    /// [`REMOTE_SHARDS`]).
    pub(crate) const fn new(shard: usize) -> HeapCell {
        HeapCell {
            inbox: Inbox::new(),
            heap: UnsafeCell::new(Heap {
                usable: [const { PoolList::new() }; NUM_CLASSES],
                empty: EmptyPools::new(),
                parked: Parked::new(),
                shares: false,
                shared_taken: [0; NUM_CLASSES],
                foreign: Foreign::new(),
            }),
            counters: Counters {
                freed_remotely: [const { AtomicUsize::new(0) }; NUM_CLASSES],
                taken_back: [const { AtomicUsize::new(0) }; NUM_CLASSES],
                pools: [const { AtomicUsize::new(0) }; NUM_CLASSES],
                full: [const { AtomicUsize::new(0) }; NUM_CLASSES],
            },
            next_all: ptr::null(),
            next_free: AtomicPtr::new(ptr::null_mut()),
            shard: shard % REMOTE_SHARDS,
        }
    }

    /// The heap's identity, recorded as its pools' owner.
    #[inline(always)]
    pub(crate) fn id(&self) -> *mut () {
        ptr::from_ref(self).cast_mut().cast()
    }

    /// Claims the heap, waiting for its holder to release it.
    #[inline]
    pub(crate) fn lock(&self) -> Claim<'_> {
        self.inbox.claim().lock();
        Claim { cell: self }
    }

    /// Claims the heap if nobody holds it.
    #[inline]
    pub(crate) fn try_claim(&self) -> Option<Claim<'_>> {
        self.inbox.try_claim().then_some(Claim { cell: self })
    }

    /// The claim of a heap the calling thread holds already (a thread's own heap, claimed
    /// when the thread bound it and held until it exits).
    ///
    /// # Safety
    /// The calling thread holds the heap's claim, and no other [`Claim`] of it is live.
    #[inline(always)]
    pub(crate) unsafe fn claimed(&self) -> Claim<'_> {
        Claim { cell: self }
    }

    /// The claim flag itself, for `fork` handlers, which take and release it around the copy.
    pub(crate) fn fork_lock(&self) -> &pymalloc_pool::RawLock {
        self.inbox.claim()
    }

    /// Whether blocks wait on the remote lists.
    pub(crate) fn has_remote(&self) -> bool {
        self.inbox.has_waiting()
    }
}

/// Proof that the calling thread holds a heap's claim: the heap's own state (H3) is reached
/// through it alone, and `&mut` on it makes each use the only one. Made by
/// [`HeapCell::lock`] and [`HeapCell::try_claim`], released by [`Claim::release`]; a
/// thread's own heap, held across calls, is reached with [`HeapCell::claimed`].
pub(crate) struct Claim<'a> {
    cell: &'a HeapCell,
}

impl Deref for Claim<'_> {
    type Target = HeapCell;
    #[inline(always)]
    fn deref(&self) -> &HeapCell {
        self.cell
    }
}

impl<'a> Claim<'a> {
    /// The heap.
    #[inline(always)]
    pub(crate) fn cell(&self) -> &'a HeapCell {
        self.cell
    }

    /// The same claim, for a call that takes it by value (so that it travels in a register,
    /// not through memory); `self` is borrowed meanwhile, so there is still one user.
    #[inline(always)]
    pub(crate) fn reborrow(&mut self) -> Claim<'_> {
        Claim { cell: self.cell }
    }

    /// Releases the claim; `true` if blocks wait on the remote lists then, which the caller
    /// must collect ([`collect`]: `pymalloc_pool::Inbox`, I1).
    #[inline]
    pub(crate) fn release(self) -> bool {
        // SAFETY: a Claim exists only while its heap is claimed.
        unsafe { self.cell.inbox.release() }
    }

    /// The heap's own state.
    #[inline(always)]
    fn heap(&mut self) -> &mut Heap {
        // SAFETY: the claim makes this thread the heap's only user (H3), and `&mut self`
        // makes this the only reference into it.
        unsafe { &mut *self.cell.heap.get() }
    }

    /// Sets the heap up for its next claimant, a thread or a local heap (never the fallback
    /// heap): it takes its first blocks of each class from the fallback heap if it `shares`
    /// (H6), and keeps blocks of other heaps' pools that it frees (H8).
    pub(crate) fn set_up(&mut self, shares: bool) {
        let heap = self.heap();
        heap.shares = shares;
        heap.shared_taken = [0; NUM_CLASSES];
        heap.foreign.enabled = true;
    }

    /// Frees `block`, of another heap's pool: kept here to hand out again (H8); past the
    /// limits, the class's kept blocks go back to their owners first. A class above
    /// [`FOREIGN_CLASS_BYTES`], or a heap that keeps none, sends the block back at once. A
    /// block that holds its freed mark is free already (P9): reported, and the process
    /// aborts.
    ///
    /// # Safety
    /// `block` starts a carved block of `pool`, a live pool owned by `owner`, another heap
    /// (not the fallback heap), in use unless this is a double free; not used after this
    /// call.
    #[cold]
    #[inline(never)]
    unsafe fn keep_foreign<P: Platform>(
        mut self,
        block: NonNull<u8>,
        pool: PoolPtr,
        owner: &HeapCell,
        shared: &Shared<P>,
    ) {
        let freed = FreedMark::of(block);
        // SAFETY: a carved block of a live pool (caller), so two words at least.
        if unsafe { freed.is_held() } {
            // Free already (P9): kept by some heap, or on its way back, or back.
            fatal(ALREADY_FREE);
        }
        // SAFETY: the pool is live (caller).
        let class = unsafe { pool.class() };
        bump(&self.counters.freed_remotely, class, 1);
        let limit = foreign_limit(class);
        if !self.heap().foreign.enabled || limit == 0 {
            // SAFETY: as the caller guarantees.
            return unsafe { free_remote(owner, self.shard, block, shared) };
        }
        if self.heap().foreign.class(class).count() >= limit {
            let longest = self.heap().foreign.class(class).longest();
            self.flush_chain(class, longest, shared);
        }
        if self.heap().foreign.bytes + class.block_size() > FOREIGN_BYTES {
            self.flush_foreign(shared);
        }
        let i = match self.heap().foreign.class(class).chain_for(owner.id()) {
            Some(i) => i,
            None => {
                // As many other owners as chains: the longest chain goes back.
                let longest = self.heap().foreign.class(class).longest();
                self.flush_chain(class, longest, shared);
                longest
            }
        };
        let foreign = &mut self.heap().foreign;
        foreign.bytes += class.block_size();
        let kept = foreign.class(class);
        kept.last = i;
        let chain = kept.chain(i);
        // SAFETY: the block is ours to overwrite, two words at least (caller).
        unsafe {
            write_link(block, chain.head);
            freed.write();
        }
        if chain.count == 0 {
            chain.tail = block.as_ptr();
            chain.owner = owner.id();
        }
        chain.head = block.as_ptr();
        chain.count += 1;
    }

    /// A block of `class` from the blocks of other heaps' pools kept here (H8), handed out:
    /// its freed mark cleared, no longer counted as freed remotely.
    #[inline]
    fn take_foreign(&mut self, class: SizeClass, map: &ArenaMap) -> Option<NonNull<u8>> {
        let foreign = &mut self.heap().foreign;
        let kept = foreign.class(class);
        let chain = kept.chain(kept.chain_to_hand_out()?);
        let block = NonNull::new(chain.head)?;
        // SAFETY: a kept block is a block in use of a live pool, linked through its first
        // word (H8), now ours to hand out.
        unsafe {
            chain.head = checked_link(block, map);
            clear_freed_mark(block);
        }
        chain.count -= 1;
        if chain.count == 0 {
            *chain = Chain::NONE;
        }
        foreign.bytes -= class.block_size();
        bump(&self.counters.freed_remotely, class, -1);
        Some(block)
    }

    /// How many blocks of each class the heap keeps of other heaps' pools (H8).
    pub(crate) fn foreign_counts(&mut self) -> [usize; NUM_CLASSES] {
        self.heap().foreign.classes.map(|kept| kept.count())
    }

    /// Sends every kept block of other heaps' pools back to its owner (H8): what a heap does
    /// before it is left without a thread, and what `trim` does. Call with no lock held: an
    /// owner that has no thread is collected here.
    pub(crate) fn flush_foreign<P: Platform>(&mut self, shared: &Shared<P>) {
        for class in SizeClass::all() {
            self.flush_foreign_class(class, shared);
        }
    }

    /// Sends the kept blocks of `class` back to their owners, a chain each (H8). Call with no
    /// lock held.
    fn flush_foreign_class<P: Platform>(&mut self, class: SizeClass, shared: &Shared<P>) {
        for i in 0..KEPT_OWNERS {
            self.flush_chain(class, i, shared);
        }
    }

    /// Sends chain `i` of the kept blocks of `class` back to its owner, pushed whole with one
    /// compare-and-swap, no block read (H8). Call with no lock held.
    #[cold]
    #[inline(never)]
    fn flush_chain<P: Platform>(&mut self, class: SizeClass, i: usize, shared: &Shared<P>) {
        let chain = self.heap().foreign.take(class, i);
        let (Some(first), Some(last)) = (NonNull::new(chain.head), NonNull::new(chain.tail)) else {
            return;
        };
        // SAFETY: owners are heaps, which live as long as the allocator; the chain is of the
        // owner's blocks, linked and marked (H8), given up here.
        unsafe {
            let owner = &*chain.owner.cast::<HeapCell>();
            if owner.inbox.push_chain(self.shard, first, last) {
                collect(owner, shared);
            }
        }
    }

    /// One block of `class`, with whether it reads zero; `None` if no memory can be had.
    #[inline(always)]
    pub(crate) fn alloc<P: Platform>(
        &mut self,
        class: SizeClass,
        ctx: &Context<P>,
    ) -> Option<(NonNull<u8>, bool)> {
        if let Some(found) = self.alloc_fast(class) {
            return Some(found);
        }
        self.reborrow().alloc_from_any_pool(class, ctx)
    }

    /// The fast path of [`Claim::alloc`]: a block of the class's first pool, when the pool
    /// keeps another to hand out (`PoolPtr::alloc_unless_last`), with whether it reads zero;
    /// `None` (and nothing changed) otherwise.
    #[inline(always)]
    pub(crate) fn alloc_fast(&mut self, class: SizeClass) -> Option<(NonNull<u8>, bool)> {
        // SAFETY: listed pools are live, ours, and have a block to hand
        // out (H1).
        unsafe { self.heap().list(class).first()?.alloc_unless_last() }
    }

    /// The smallest fast path, for callers that inline it: a block off the freelist of the
    /// class's first pool when another follows it there (`PoolPtr::alloc_unless_last_free`);
    /// `None` (and nothing changed) otherwise.
    #[inline(always)]
    pub(crate) fn alloc_freelist(&mut self, class: SizeClass) -> Option<NonNull<u8>> {
        // SAFETY: listed pools are live, ours, and have a block to hand
        // out (H1).
        unsafe { self.heap().list(class).first()?.alloc_unless_last_free() }
    }

    /// [`Claim::alloc`] (and C's `malloc`) past the fast path, `Claim::alloc_fast`:
    /// the last free block, a never-used one, or a pool from `refill`. Out of line, so that
    /// the fast path keeps no registers to restore.
    #[inline(never)]
    pub(crate) fn alloc_from_any_pool<P: Platform>(
        mut self,
        class: SizeClass,
        ctx: &Context<P>,
    ) -> Option<(NonNull<u8>, bool)> {
        // SAFETY: listed pools are live, ours, and have a block to hand
        // out (H1).
        unsafe {
            let pool = match self.heap().list(class).first() {
                Some(pool) => pool,
                None => {
                    if let Some(block) = self.take_foreign(class, &ctx.shared.map) {
                        return Some((block, false));
                    }
                    if let Some(shared) = self.reborrow().alloc_shared(class, ctx) {
                        return Some(shared);
                    }
                    self.reborrow().refill(class, ctx)?
                }
            };
            let Some(block) = pool.alloc() else {
                fatal("heap: a usable pool had no block")
            };
            if pool.is_full() {
                self.heap().list(class).remove(pool.into());
                bump(&self.counters.full, class, 1);
            }
            Some(block)
        }
    }

    /// A block of `class` from the fallback heap, if this heap shares, the class's blocks are
    /// at most [`SHARED_MAX`] and it has taken less than [`SHARED_BYTES`] of them (H6).
    /// Called when `class` has no usable pool.
    #[cold]
    #[inline(never)]
    fn alloc_shared<P: Platform>(
        mut self,
        class: SizeClass,
        ctx: &Context<P>,
    ) -> Option<(NonNull<u8>, bool)> {
        let heap = self.heap();
        // SAFETY: a SizeClass's index is below NUM_CLASSES.
        let taken = unsafe { heap.shared_taken.get_unchecked_mut(class.index()) };
        if !heap.shares || *taken as usize >= SHARED_BYTES || class.block_size() > SHARED_MAX {
            return None;
        }
        // A block is at most POOLED_MAX (2^18) bytes, so this stays below 2^19.
        *taken += class.block_size() as u32;
        ctx.with_fallback(|fallback| fallback.alloc(class, ctx))
    }

    /// A usable pool for `class`: from the blocks other threads freed, else a kept empty
    /// pool, else new slots from the arenas.
    /// Called when `class` has no usable pool.
    #[cold]
    #[inline(never)]
    fn refill<P: Platform>(mut self, class: SizeClass, ctx: &Context<P>) -> Option<PoolPtr> {
        let mut shared = SharedAccess::new(&ctx.shared);
        // SAFETY: a kept pool is ours, empty and of the slots' size (H2); new slots are ours
        // alone, and their descriptor is written under the lock.
        unsafe {
            if self.has_remote() {
                self.collect_remote(&mut shared);
                if let Some(pool) = self.heap().list(class).first() {
                    return Some(pool);
                }
            }
            let slots = class.span_slots();
            let pool = match self.heap().empty.take(slots) {
                Some(memory) => {
                    // A kept pool is ours, empty, and of the same size (H2).
                    let pool = PoolPtr::at(memory);
                    pool.reinit(class);
                    pool
                }
                None => {
                    let Some((memory, fresh)) =
                        shared
                            .arenas()
                            .alloc_pool(slots, &ctx.shared.platform, &ctx.shared.map)
                    else {
                        // Only a new arena can be refused.
                        ctx.shared.refused(ARENA_SIZE);
                        return None;
                    };
                    // Under the lock, so that nobody reads the header half-written.
                    PoolPtr::init(memory, class, fresh, self.id())
                }
            };
            self.heap().list(class).push_front(pool.into());
            bump(&self.counters.pools, class, 1);
            Some(pool)
        }
    }

    /// Makes a block of `from`, alone in its pool, a block of `to` without moving it, where
    /// pools of both classes hold one block: the pool grows into the free slots right after
    /// it (giving back, to make room, empty pools this heap keeps there), or gives its last
    /// slots back. Returns whether it did (not for a block of another heap's pool, nor
    /// without free slots to grow into).
    ///
    /// # Safety
    /// `block` is the start of a block of `from` in use,
    /// handed out by a heap of `alloc`.
    pub(crate) unsafe fn resize_in_place<P: Platform>(
        &mut self,
        block: NonNull<u8>,
        from: SizeClass,
        to: SizeClass,
        ctx: &Context<P>,
    ) -> bool {
        if blocks_per_pool(from) != 1 || blocks_per_pool(to) != 1 {
            return false;
        }
        // SAFETY: the block is in use (caller), so its pool is live; a pool of one block in
        // use is full, in no list (H1), so nothing else refers to it while it changes class.
        unsafe {
            let pool = PoolPtr::containing(block);
            if pool.owner() != self.id() || pool.first_block() != block {
                return false;
            }
            let mut shared = SharedAccess::new(&ctx.shared);
            let memory = pool.memory();
            let mut resized =
                shared
                    .arenas()
                    .resize_pool(memory, to.span_slots(), &ctx.shared.platform);
            if !resized && to.span_slots() > from.span_slots() {
                // Empty pools this heap keeps may hold the slots it would grow into: growing
                // in place saves a copy, and a kept pool only a call to the arenas. They go
                // back, and the growth is tried again.
                let grown = memory.addr().get() + from.span_slots() * POOL_SIZE
                    ..memory.addr().get() + to.span_slots() * POOL_SIZE;
                let mut gave_back = false;
                while let Some(kept) = self.heap().empty.take_within(grown.clone()) {
                    // A kept pool is ours, empty, in no list (H2), and no longer kept.
                    shared.free_pool(PoolPtr::at(kept));
                    gave_back = true;
                }
                resized = gave_back
                    && shared
                        .arenas()
                        .resize_pool(memory, to.span_slots(), &ctx.shared.platform);
            }
            if !resized {
                return false;
            }
            pool.reclass_sole_block(to);
        }
        for counters in [&self.counters.pools, &self.counters.full] {
            bump(counters, from, -1);
            bump(counters, to, 1);
        }
        true
    }

    /// Frees a block: onto its pool's freelist if this heap owns it, else onto its owner's
    /// remote list. The pool says the block's class: a free needs no size class computed.
    /// A pointer inside a pool that does not start a block handed out (one inside a block, or
    /// past the blocks carved, or in a slot no pool holds) is reported and aborts.
    ///
    /// # Safety
    /// `block` lies in an arena of `alloc` and is, as far as
    /// the caller knows, the start of a pooled block in use, not used after this call.
    #[inline(always)]
    pub(crate) unsafe fn free<P: Platform>(&mut self, block: NonNull<u8>, ctx: &Context<P>) {
        // SAFETY: the block lies in a mapped arena (caller); a pool it names is live.
        let pool = unsafe { PoolPtr::of_block(block) };
        let Some(pool) = pool else {
            fatal("free: pointer is no block of this allocator (not a block's start in a pool)")
        };
        // SAFETY: a carved block of a live pool, in use unless this is a double free, which
        // `free_local` looks for (caller).
        unsafe { self.free_in(block, pool, ctx) }
    }

    /// [`Claim::free`] for a caller that has found the block's pool already and knows
    /// `block` to start a carved block of it.
    ///
    /// # Safety
    /// As [`Claim::free`], and `pool` is the live pool of `block`, which starts one of its
    /// carved blocks.
    #[inline(always)]
    pub(crate) unsafe fn free_in<P: Platform>(
        &mut self,
        block: NonNull<u8>,
        pool: PoolPtr,
        ctx: &Context<P>,
    ) {
        // SAFETY: as the caller guarantees.
        unsafe { self.free_in_reading_mark(block, pool, ctx, true) }
    }

    /// [`Claim::free_in`], with the block's freed mark read first (the check for a double
    /// free) if `read_mark`. A caller that has just found the block in use
    /// ([`Claim::ensure_in_use`], as a `realloc` that moves it) need not read it again.
    ///
    /// # Safety
    /// As [`Claim::free_in`]; unless `read_mark`, `block` is in use: nothing has freed it
    /// since [`Claim::ensure_in_use`] said so.
    #[inline(always)]
    pub(crate) unsafe fn free_in_reading_mark<P: Platform>(
        &mut self,
        block: NonNull<u8>,
        pool: PoolPtr,
        ctx: &Context<P>,
        read_mark: bool,
    ) {
        // The common free, which makes no call but the tail call of a pool that has emptied:
        // a block of a pool this heap owns, not free already (P9), into a pool that was not
        // full (`PoolPtr::free_unless_was_full`). A block of another thread's heap is kept
        // here (H8), out of line.
        // SAFETY: the block is in use, so its pool is live (caller); its owner does not
        // change while a block is in use (P7), so a pool this heap owns is ours to change;
        // heaps live as long as their allocator, and pools record theirs (P7).
        unsafe {
            let owner = pool.owner();
            if owner == self.id() {
                let freed = FreedMark::of(block);
                if !read_mark || !freed.is_held() {
                    if let Some(now_empty) = pool.free_unless_was_full(freed) {
                        if now_empty && !self.keeps_empty(pool) {
                            let freed = Freed {
                                was_full: false,
                                now_empty,
                            };
                            self.reborrow()
                                .pool_changed_state_unlocked(pool, freed, ctx);
                        }
                        return;
                    }
                }
            } else if owner != ctx.fallback.id() {
                let owner = &*owner.cast::<HeapCell>();
                return self
                    .reborrow()
                    .keep_foreign(block, pool, owner, &ctx.shared);
            }
        }
        // Everything else, by a tail call, so that the caller needs no stack frame.
        // SAFETY: as the caller guarantees, and nothing has changed.
        unsafe { self.reborrow().free_in_rarely(block, pool, ctx) }
    }

    /// [`Claim::free_in`] past its fast path: the whole of a free (a block of another heap,
    /// a pool that changes state, a double free).
    ///
    /// # Safety
    /// As [`Claim::free_in`].
    #[inline(never)]
    unsafe fn free_in_rarely<P: Platform>(
        mut self,
        block: NonNull<u8>,
        pool: PoolPtr,
        ctx: &Context<P>,
    ) {
        // SAFETY: the block is in use, so its pool is live (caller); its owner does not
        // change while a block is in use (P7).
        let owner = unsafe { pool.owner() };
        if owner == self.id() {
            // SAFETY: a block in use of a pool this claimed heap owns (caller).
            unsafe { self.free_local(block, pool, ctx) }
        } else if owner == ctx.fallback.id() {
            // SAFETY: as the caller guarantees, and the fallback heap owns the pool.
            unsafe { free_shared(block, pool, ctx) }
        } else {
            // SAFETY: as the caller guarantees; heaps live as long as their allocator, and
            // pools record theirs (P7).
            unsafe { self.keep_foreign(block, pool, &*owner.cast::<HeapCell>(), &ctx.shared) }
        }
    }

    /// A free of a block of a pool this heap owns. A block that holds its freed mark (pool
    /// invariant P9) is free already: [`Claim::double_free`] aborts.
    ///
    /// # Safety
    /// `block` starts a carved block of `pool`, which
    /// this heap owns, in use unless this is a double free.
    #[inline(always)]
    unsafe fn free_local<P: Platform>(
        &mut self,
        block: NonNull<u8>,
        pool: PoolPtr,
        ctx: &Context<P>,
    ) {
        let freed = FreedMark::of(block);
        // SAFETY: as the caller guarantees; the change of state is this pool's.
        unsafe {
            if freed.is_held() {
                self.reborrow().double_free(block, pool, ctx);
            }
            self.free_unmarked(freed, pool, ctx)
        }
    }

    /// The rest of [`Claim::free_local`], once the block is known not to be free: back to
    /// its pool, and the pool's change of state dealt with.
    ///
    /// # Safety
    /// As [`Claim::free_local`], and `block` is in use.
    #[inline(always)]
    unsafe fn free_unmarked<P: Platform>(
        &mut self,
        block: FreedMark,
        pool: PoolPtr,
        ctx: &Context<P>,
    ) {
        // SAFETY: as the caller guarantees; the change of state is this pool's.
        unsafe {
            if let Some(freed) = self.put_back(block, pool) {
                self.reborrow()
                    .pool_changed_state_unlocked(pool, freed, ctx)
            }
        }
    }

    /// Aborts for `block`, which holds its freed mark, so is free already (P9, `mark.rs`),
    /// saying where it is: on its pool's freelist, waiting on this heap's remote lists (which
    /// are taken back to look), or elsewhere (another thread's cache of blocks freed there).
    ///
    /// # Safety
    /// `block` starts a carved block of `pool`, which
    /// this heap owns.
    #[cold]
    #[inline(never)]
    unsafe fn double_free<P: Platform>(
        mut self,
        block: NonNull<u8>,
        pool: PoolPtr,
        ctx: &Context<P>,
    ) -> ! {
        // SAFETY: the pool is ours (caller), so its freelist is ours to walk.
        if unsafe { pool.on_freelist(block) } {
            fatal(ALREADY_FREE);
        }
        if self.has_remote() {
            self.collect_remote_watching(&mut SharedAccess::new(&ctx.shared), Some(block));
        }
        fatal(FREED_NOT_HANDED_OUT)
    }

    /// For a block being resized, which must be in use: aborts if it holds its freed mark,
    /// so is free already (P9).
    ///
    /// # Safety
    /// `block` starts a carved block of `pool`.
    #[inline(always)]
    pub(crate) unsafe fn ensure_in_use<P: Platform>(
        &mut self,
        block: NonNull<u8>,
        pool: PoolPtr,
        ctx: &Context<P>,
    ) {
        // SAFETY: as the caller guarantees.
        unsafe {
            if holds_freed_mark(block) {
                self.reborrow().resize_of_free_block(block, pool, ctx);
            }
        }
    }

    /// [`Claim::ensure_in_use`] of a block that holds its freed mark: aborts, saying where the
    /// block is if this heap or the fallback heap owns its pool (another heap's lists belong
    /// to a thread that may be using them).
    ///
    /// # Safety
    /// As [`Claim::ensure_in_use`].
    #[cold]
    #[inline(never)]
    unsafe fn resize_of_free_block<P: Platform>(
        mut self,
        block: NonNull<u8>,
        pool: PoolPtr,
        ctx: &Context<P>,
    ) -> ! {
        // SAFETY: as the caller guarantees; the owner does not change while a block of the
        // pool is in use, and a pool that is not ours is only compared.
        unsafe {
            let owner = pool.owner();
            if owner == self.id() {
                self.reborrow().double_free(block, pool, ctx);
            } else if owner == ctx.fallback.id() {
                // SAFETY: the fallback heap, claimed around the call, owns the pool.
                ctx.with_fallback(|fallback| fallback.reborrow().double_free(block, pool, ctx));
            }
        }
        fatal(FREED_NOT_HANDED_OUT)
    }

    /// Returns a block to its pool, which this heap owns: the one free path for blocks freed
    /// here and for those taken back from the remote list. Returns the pool's change of state
    /// if `pool_changed_state` must deal with it (not a one-slot pool staying listed empty).
    ///
    /// # Safety
    /// `block` is a block in use of `pool`, which this
    /// heap owns.
    #[inline(always)]
    unsafe fn put_back(&mut self, block: FreedMark, pool: PoolPtr) -> Option<Freed> {
        // SAFETY: as the caller guarantees.
        unsafe {
            let freed = pool.free(block);
            let stays = freed.now_empty && self.keeps_empty(pool);
            (freed.changed_state() && !stays).then_some(freed)
        }
    }

    /// Whether a pool that has just emptied stays listed without more ado: a pool that may
    /// ([`Claim::may_park`]) of a class parked already (H7). Any other pool that may stay
    /// is parked by `pool_changed_state`.
    ///
    /// # Safety
    /// `pool` is ours and empty.
    #[inline(always)]
    unsafe fn keeps_empty(&mut self, pool: PoolPtr) -> bool {
        // SAFETY: `pool` is ours, so live (caller).
        unsafe { self.heap().parked.has(pool.class()) && self.may_park(pool) }
    }

    /// Whether an empty pool may stay listed: a one-slot pool at the head of its class's
    /// list, where the next allocation of the class will look (H1).
    ///
    /// # Safety
    /// `pool` is ours.
    #[inline(always)]
    unsafe fn may_park(&mut self, pool: PoolPtr) -> bool {
        // SAFETY: `pool` is ours, so live (caller).
        unsafe {
            let class = pool.class();
            class.span_slots() == 1 && self.heap().list(class).first() == Some(pool)
        }
    }

    /// Leaves `pool`, empty and listed at its class's head, listed (H7), after making room.
    ///
    /// # Safety
    /// `pool` is ours, empty, and [`Claim::may_park`].
    unsafe fn park<P: Platform>(&mut self, pool: PoolPtr, shared: &mut SharedAccess<'_, P>) {
        // SAFETY: `pool` is ours, so live (caller).
        unsafe {
            let class = pool.class();
            self.unpark_over_limit(Some(class), 1, shared);
            let before = self.heap().parked.count();
            self.heap().parked.add(class);
            shared
                .shared
                .parked_changed(before, self.heap().parked.count());
        }
    }

    /// Unparks classes other than `keep`, retiring the empty heads they still have, until
    /// `room` more fit (H7): under [`PARKED_POOLS`] for this heap, or under [`PARKED_TOTAL`]
    /// for all heaps together.
    fn unpark_over_limit<P: Platform>(
        &mut self,
        keep: Option<SizeClass>,
        room: usize,
        shared: &mut SharedAccess<'_, P>,
    ) {
        let state = shared.shared;
        let before = self.heap().parked.count();
        // The other heaps' parked classes, as far as this heap can tell.
        let others = state.parked_total().saturating_sub(before);
        let fits =
            |mine: usize| mine + room <= PARKED_POOLS || others + mine + room <= PARKED_TOTAL;
        if fits(before) {
            return;
        }
        // SAFETY: listed pools are ours and live (H2).
        unsafe {
            // Bits whose class's head took a block again are dropped first, so that only
            // pools still empty make way.
            let mut bits = self.heap().parked.classes;
            while bits != 0 {
                let index = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let Some(class) = SizeClass::from_index(index) else {
                    break;
                };
                let head = self.heap().list(class).first();
                if head.is_none_or(|head| head.used() != 0) {
                    self.heap().parked.remove(class);
                }
            }
            while !fits(self.heap().parked.count()) {
                let Some(other) = self.heap().parked.take_other(keep) else {
                    break;
                };
                let list = self.heap().list(other);
                if let Some(head) = list.first().filter(|head| head.used() == 0) {
                    list.remove(head.into());
                    self.give_up(head, shared);
                }
            }
            state.parked_changed(before, self.heap().parked.count());
        }
    }

    /// [`Claim::pool_changed_state`] with the shared lock not yet taken; out of line, so
    /// that the free path needs no room on the stack for the lock's guard.
    ///
    /// # Safety
    /// As [`Claim::pool_changed_state`].
    #[cold]
    #[inline(never)]
    unsafe fn pool_changed_state_unlocked<P: Platform>(
        mut self,
        pool: PoolPtr,
        freed: Freed,
        ctx: &Context<P>,
    ) {
        // SAFETY: as the caller guarantees.
        unsafe {
            // The common change needs nothing shared: a full pool taking a block back.
            if freed.was_full && !freed.now_empty {
                return self.relist(pool);
            }
            self.reborrow()
                .pool_changed_state(pool, freed, &mut SharedAccess::new(&ctx.shared))
        }
    }

    /// A full pool that took a block back (and is not empty) rejoins its class's list at the
    /// tail (H1): the pools ahead of it, which have more blocks to hand out, serve the class
    /// first, while it gathers more of its blocks back. (At the head, as obmalloc relists, a
    /// pool that took one block back hands it out next and is full again: where a class's
    /// pools are nearly full, that was a pool leaving and rejoining the list for one in five
    /// frees of a C program's churn; `docs/notes.md`.) An empty pool parked at the head stays
    /// there (H7).
    ///
    /// # Safety
    /// `pool` is ours, was full (so in no list) and is not empty.
    #[inline(always)]
    unsafe fn relist(&mut self, pool: PoolPtr) {
        // SAFETY: the pool is ours, so live (caller); listed pools are live (H1).
        unsafe {
            let class = pool.class();
            self.heap().list(class).push_back(pool.into());
            bump(&self.counters.full, class, -1);
        }
    }

    /// A full pool rejoins its class's list; an empty one is parked if it may stay listed
    /// ([`Claim::may_park`]), else kept or given back to the arenas.
    ///
    /// # Safety
    /// `pool` is ours and `freed` is what its last free
    /// reported, as passed on by `put_back`.
    #[cold]
    #[inline(never)]
    unsafe fn pool_changed_state<P: Platform>(
        mut self,
        pool: PoolPtr,
        freed: Freed,
        shared: &mut SharedAccess<'_, P>,
    ) {
        // SAFETY: the pool is ours (caller); a pool that was full is in no list, one that was
        // not is in its class's list (H1).
        unsafe {
            let class = pool.class();
            if freed.was_full {
                if !freed.now_empty {
                    return self.relist(pool);
                }
                bump(&self.counters.full, class, -1);
            } else if self.may_park(pool) {
                self.park(pool, shared);
                return;
            } else {
                self.heap().list(class).remove(pool.into());
            }
            self.give_up(pool, shared);
        }
    }

    /// An empty pool, in no list, leaves the heap's pools: kept, or back to the arenas.
    ///
    /// # Safety
    /// `pool` is ours, empty and in no list.
    unsafe fn give_up<P: Platform>(&mut self, pool: PoolPtr, shared: &mut SharedAccess<'_, P>) {
        // SAFETY: as the caller guarantees.
        unsafe {
            let class = pool.class();
            bump(&self.counters.pools, class, -1);
            if !self.heap().empty.put(pool.memory(), class.span_slots()) {
                shared.free_pool(pool);
            }
        }
    }

    /// Frees every block other threads pushed on this heap's remote lists, as if they had been
    /// freed here (H4).
    pub(crate) fn collect_remote<P: Platform>(&mut self, shared: &mut SharedAccess<'_, P>) {
        self.collect_remote_watching(shared, None)
    }

    /// [`Claim::collect_remote`], aborting if `suspect` is among the blocks taken back: a
    /// block freed again by its owner while it waits there (a double free).
    fn collect_remote_watching<P: Platform>(
        &mut self,
        shared: &mut SharedAccess<'_, P>,
        suspect: Option<NonNull<u8>>,
    ) {
        let (cell, id, map) = (self.cell(), self.id(), &shared.shared.map);
        // A pushed block is in use in a live pool of this heap (R1, H4); under `secure`,
        // where a link led is checked before the block is read.
        // SAFETY: the heap is claimed.
        let blocks = unsafe { cell.inbox.take_lists() }.flat_map(|mut drain| {
            core::iter::from_fn(move || {
                // SAFETY: as above.
                drain.next_with(|block| unsafe { pool_of_returned(id, block, map) })
            })
        });
        for (block, pool) in blocks {
            if suspect == Some(block) {
                fatal(
                    "free of a block that is already free: another thread freed it, and it \
                     waits to go back to its heap (double free)",
                );
            }
            // SAFETY: pushed blocks are in use in live pools of this heap (R1, H4).
            unsafe {
                bump(&self.counters.taken_back, pool.class(), 1);
                if let Some(freed) = self.put_back(FreedMark::of(block), pool) {
                    self.reborrow().pool_changed_state(pool, freed, shared);
                }
            }
        }
    }

    /// Returns the empty pools, listed or kept, to the arenas.
    fn release_empty<P: Platform>(&mut self, shared: &mut SharedAccess<'_, P>) {
        // SAFETY: listed and kept pools are ours (H2).
        unsafe {
            for class in SizeClass::all() {
                let list = self.heap().list(class);
                if let Some(head) = list.first().filter(|head| head.used() == 0) {
                    list.remove(head.into());
                    bump(&self.counters.pools, class, -1);
                    shared.free_pool(head);
                }
            }
            // No listed pool is empty now: every bit left is stale.
            let before = self.heap().parked.count();
            self.heap().parked = Parked::new();
            shared.shared.parked_changed(before, 0);
            while let Some(memory) = self.heap().empty.pop() {
                shared.free_pool(PoolPtr::at(memory));
            }
        }
    }

    /// Takes back the remotely freed blocks and returns the kept empty pools: what a heap
    /// does before it is left without a thread, and what `trim` does.
    pub(crate) fn tidy<P: Platform>(&mut self, shared: &mut SharedAccess<'_, P>) {
        self.collect_remote(shared);
        self.release_empty(shared);
    }

    /// Checks H1 and H2 and the pools' own invariants.
    pub(crate) fn check(&mut self, arenas: &Arenas, map: &ArenaMap) -> Result<(), &'static str> {
        let id = self.id();
        let heap = self.heap();
        // H6: each count stops growing at the first block past SHARED_BYTES.
        if heap
            .shared_taken
            .iter()
            .any(|&taken| taken as usize >= SHARED_BYTES + POOLED_MAX)
        {
            return Err("heap: more bytes of a class taken from the fallback heap than shared");
        }
        check_foreign(&heap.foreign, id, map)?;
        let (mut listed, mut listed_empty) = (0, 0);
        let mut result = Ok(());
        for (index, list) in heap.usable.iter().enumerate() {
            let mut empty_here = 0;
            // SAFETY: listed pools are live (H2 is what is being checked, through the arenas,
            // before anything else is read).
            unsafe {
                list.for_each(|pool| {
                    let pool = PoolPtr::from(pool);
                    listed += 1;
                    if result.is_err() {
                        return;
                    }
                    result = if map.pool_of(pool.memory()) != Some(pool.memory()) {
                        Err("heap: a listed pool is not a pool in use")
                    } else if pool.owner() != id {
                        Err("heap: a listed pool has another owner")
                    } else if pool.class().index() != index {
                        Err("heap: pool listed under the wrong class")
                    } else if pool.is_full() {
                        Err("heap: a full pool is listed as usable")
                    } else if pool.used() == 0
                        && (pool.class().span_slots() != 1 || list.first() != Some(pool))
                    {
                        Err("heap: an empty pool is listed other than at a one-slot head")
                    } else if pool.used() == 0
                        && SizeClass::from_index(index).is_none_or(|c| !heap.parked.has(c))
                    {
                        Err("heap: an empty listed pool is not parked")
                    } else {
                        empty_here += (pool.used() == 0) as usize;
                        Ok(())
                    };
                });
            }
            result?;
            if empty_here > 1 {
                return Err("heap: more than one empty pool listed for a class");
            }
            listed_empty += empty_here;
        }
        let (mut usable, mut empty) = (0, 0);
        arenas.for_each_pool(|memory| {
            // SAFETY: pools in use in the arenas are live; only their owner is read unless
            // they are ours.
            unsafe {
                let pool = PoolPtr::at(memory);
                if result.is_err() || pool.owner() != id {
                    return;
                }
                result = pool.check();
                if pool.used() == 0 {
                    empty += 1;
                } else if !pool.is_full() {
                    usable += 1;
                }
            }
        });
        result?;
        if usable + listed_empty != listed {
            return Err("heap: a usable pool is missing from its class's list");
        }
        if empty != listed_empty + heap.empty.len {
            return Err("heap: an empty pool in use is neither listed nor kept");
        }
        let kept = heap.empty.pools.get(..heap.empty.len).unwrap_or(&[]);
        let kept_slots: usize = kept.iter().map(|&(_, slots)| slots).sum();
        if kept_slots != heap.empty.slots || kept_slots > CACHED_SLOTS {
            return Err("heap: the kept empty pools' slots are miscounted or too many");
        }
        Ok(())
    }
}

/// Checks H8 for the blocks of other heaps' pools that heap `id` keeps: each chain holds as
/// many blocks as counted, ending at its tail, each the start of a block carved in a pool in
/// use of the class that the chain's owner owns (another heap), holding its freed mark; a
/// class's chains have distinct owners and hold at most the class's limit; the bytes add
/// up, within [`FOREIGN_BYTES`]; a heap that keeps none has none.
fn check_foreign(foreign: &Foreign, id: *mut (), map: &ArenaMap) -> Result<(), &'static str> {
    let mut bytes = 0;
    for (class, kept) in SizeClass::all().zip(&foreign.classes) {
        let count = kept.count();
        if count > foreign_limit(class) || (count > 0 && !foreign.enabled) {
            return Err("heap: more blocks of another heap's pools kept than allowed (H8)");
        }
        for (i, chain) in kept.chains.iter().enumerate() {
            let owner = chain.owner;
            let twice = kept.chains.iter().skip(i + 1).any(|c| c.owner == owner);
            if (chain.count == 0) != owner.is_null() || (!owner.is_null() && twice) {
                return Err("heap: a kept chain's owner is missing or twice (H8)");
            }
            let (mut block, mut last) = (chain.head, ptr::null_mut());
            for _ in 0..chain.count {
                let Some(b) = NonNull::new(block) else {
                    return Err("heap: fewer blocks of other heaps' pools kept than counted (H8)");
                };
                let memory = map.pool_of(b);
                // SAFETY: a pool in use at `memory` (the map says so) is live; its block `b`
                // is read only once it is known to start a carved block.
                unsafe {
                    let pool = memory.map(|m| PoolPtr::at(m));
                    let Some(pool) = pool.filter(|pool| pool.starts_carved_block(b)) else {
                        return Err("heap: a kept block is no block of a pool in use (H8)");
                    };
                    if pool.class() != class
                        || pool.owner() == id
                        || pool.owner() != owner
                        || !holds_freed_mark(b)
                    {
                        return Err("heap: a kept block of the wrong class, owner or mark (H8)");
                    }
                    last = b.as_ptr();
                    block = read_link(b);
                }
            }
            if !block.is_null() || chain.tail != last {
                return Err("heap: a kept chain does not end where counted (H8)");
            }
        }
        bytes += count * class.block_size();
    }
    if bytes != foreign.bytes || bytes > FOREIGN_BYTES {
        return Err("heap: the bytes kept of other heaps' pools do not add up (H8)");
    }
    Ok(())
}

/// What a heap works with besides itself: what all heaps share, and the fallback heap (H6);
/// passed by reference, one word.
pub(crate) struct Context<P: Platform> {
    pub(crate) shared: Shared<P>,
    pub(crate) fallback: HeapCell,
}

impl<P: Platform> Context<P> {
    pub(crate) const fn new(shared: Shared<P>) -> Self {
        Context {
            shared,
            fallback: HeapCell::new(0),
        }
    }

    /// Runs `f` with the fallback heap claimed; then collects what waits on its remote lists
    /// if nobody holds it (H4).
    #[inline]
    pub(crate) fn with_fallback<R>(&self, f: impl FnOnce(&mut Claim<'_>) -> R) -> R {
        let mut claim = self.fallback.lock();
        let result = f(&mut claim);
        if claim.release() {
            collect(&self.fallback, &self.shared);
        }
        result
    }
}

/// Pushes a block on its owner's remote list of `shard` (below [`REMOTE_SHARDS`]); if the
/// owner has no thread at that moment, collects its lists (H4).
///
/// # Safety
/// `block` is a block in use of a live pool owned by `owner`, and not used after this call;
/// `shard < REMOTE_SHARDS`.
#[cold]
#[inline(never)]
unsafe fn free_remote<P: Platform>(
    owner: &HeapCell,
    shard: usize,
    block: NonNull<u8>,
    shared: &Shared<P>,
) {
    // SAFETY: as the caller guarantees.
    if unsafe { owner.inbox.push(shard, block) } {
        collect(owner, shared);
    }
}

/// Frees a shared block (H6) in the fallback heap, which owns its pool, claimed: with every
/// check of a local free.
///
/// # Safety
/// `block` starts a carved block of `pool`, in use unless this is a double free, and the
/// fallback heap of `ctx` owns `pool`.
#[cold]
#[inline(never)]
unsafe fn free_shared<P: Platform>(block: NonNull<u8>, pool: PoolPtr, ctx: &Context<P>) {
    // SAFETY: as the caller guarantees; the fallback heap is claimed around the call.
    ctx.with_fallback(|fallback| unsafe { fallback.free_local(block, pool, ctx) })
}

/// The pool in use of which `ptr` starts a carved block, if `ptr` lies in an arena of `map`:
/// exact for a block the caller holds, a hint that is never undefined behaviour for any other
/// address (`PoolPtr::of_block`).
#[inline(always)]
pub(crate) fn pool_of_block(map: &ArenaMap, ptr: NonNull<u8>) -> Option<PoolPtr> {
    if !map.contains(ptr.addr().get()) {
        return None;
    }
    // SAFETY: `ptr` lies in one of our arenas (the map), which stays mapped while a block the
    // caller holds is in it; for any other pointer the answer is a hint (see above).
    unsafe { PoolPtr::of_block(ptr) }
}

/// The pool of `block`, taken back from the remote lists of the heap `id`. Under `secure`, a block
/// that is no carved block of a pool the heap `id` owns was reached through an overwritten
/// link: reported, and the process aborts.
///
/// # Safety
/// `block` was taken from this heap's remote lists: pushed as a block in use of a live
/// pool of the heap `id` (R1, H4), unless a link was overwritten.
#[inline(always)]
unsafe fn pool_of_returned(id: *mut (), block: NonNull<u8>, map: &ArenaMap) -> PoolPtr {
    if !secure::ENABLED {
        // SAFETY: as the caller guarantees.
        return unsafe { PoolPtr::containing(block) };
    }
    // SAFETY: a pool in use that `pool_of_block` found is live.
    match pool_of_block(map, block).filter(|pool| unsafe { pool.owner() } == id) {
        Some(pool) => pool,
        None => fatal(LINK_OVERWRITTEN),
    }
}

/// What a `secure` build reports for a link that leads nowhere it may.
const LINK_OVERWRITTEN: &str =
    "secure: the link of a freed block was overwritten (heap overflow or write after free)";

/// The link of `block`, a free block on a chain of the caller's (a heap's kept blocks): the
/// next block, or null. Under `secure`, a link that leads to no carved block of a pool of
/// `map`'s arenas was overwritten: reported, and the process aborts.
///
/// # Safety
/// `block` is a linked free block that the caller has exclusive use of.
#[inline(always)]
unsafe fn checked_link(block: NonNull<u8>, map: &ArenaMap) -> *mut u8 {
    // SAFETY: as the caller guarantees.
    let next = unsafe { read_link(block) };
    if secure::ENABLED {
        if let Some(next) = NonNull::new(next) {
            if pool_of_block(map, next).is_none() {
                fatal(LINK_OVERWRITTEN);
            }
        }
    }
    next
}

/// Tidies a heap nobody holds while blocks wait on its remote list (H4).
pub(crate) fn collect<P: Platform>(cell: &HeapCell, shared: &Shared<P>) {
    while cell.has_remote() && tidy_unclaimed(cell, shared) {}
}

/// Tidies `cell` if nobody holds it; false if somebody does. The claim is taken only under
/// the shared lock, so a `fork` (whose handler holds that lock) never happens in the middle
/// of it.
pub(crate) fn tidy_unclaimed<P: Platform>(cell: &HeapCell, shared: &Shared<P>) -> bool {
    let guard = shared.arenas();
    let Some(mut claim) = cell.try_claim() else {
        return false;
    };
    let mut access = SharedAccess::held(shared, guard);
    claim.tidy(&mut access);
    // Released under the shared lock, as it was taken; what waits now is for the caller's
    // loop to see.
    claim.release();
    drop(access);
    true
}
