//! The heap: for each size class, the list of its *usable* pools (neither full nor empty).
//!
//! Invariants (checked by [`Heap::check`]):
//! - H1 a pool is in its class's list exactly when it has a block in use and a block to hand
//!   out; full pools are in no list; a pool whose last block comes back goes straight back
//!   to the arenas, where any class may take its slots next (O(1): a few bit operations and
//!   list moves);
//! - H2 every listed pool is a pool slot in use in the arenas the heap was given.
//!
//! The fast path is [`Heap::alloc`] and [`Heap::dealloc`]: a freelist pop or push, with the
//! state changes (a new pool, a full pool, an empty pool) in `#[cold]` functions. A heap is
//! one self-contained value, so that per-thread heaps are many of them.

use core::ptr::NonNull;

use pymalloc_arena::{Arenas, Platform};
use pymalloc_pool::{Freed, NUM_CLASSES, PoolList, PoolPtr, SizeClass, fatal};

pub(crate) struct Heap {
    usable: [PoolList; NUM_CLASSES],
}

// SAFETY: the heap exclusively owns the pools its lists point to; moving it moves that.
unsafe impl Send for Heap {}

impl Heap {
    pub(crate) const fn new() -> Heap {
        Heap {
            usable: [const { PoolList::new() }; NUM_CLASSES],
        }
    }

    #[inline(always)]
    fn list(&mut self, class: SizeClass) -> &mut PoolList {
        // SAFETY: a SizeClass's index is below NUM_CLASSES.
        unsafe { self.usable.get_unchecked_mut(class.index()) }
    }

    /// One block of `class`, with whether it reads zero; `None` if no memory can be had.
    #[inline(always)]
    pub(crate) fn alloc<P: Platform>(
        &mut self,
        class: SizeClass,
        arenas: &mut Arenas,
        platform: &P,
    ) -> Option<(NonNull<u8>, bool)> {
        let pool = match self.list(class).first() {
            Some(pool) => pool,
            None => self.add_pool(class, arenas, platform)?,
        };
        // SAFETY: listed pools are live, ours, and have a block to hand out (H1).
        unsafe {
            let Some(block) = pool.alloc() else {
                fatal("heap: a usable pool had no block")
            };
            if pool.is_full() {
                self.list(class).remove(pool);
            }
            Some(block)
        }
    }

    #[cold]
    fn add_pool<P: Platform>(
        &mut self,
        class: SizeClass,
        arenas: &mut Arenas,
        platform: &P,
    ) -> Option<PoolPtr> {
        let (memory, fresh) = arenas.alloc_pool(class.span_slots(), platform)?;
        // SAFETY: the arenas hand out pools aligned to their size and exclusively ours;
        // `fresh` says whether the memory reads zero.
        let pool = unsafe { PoolPtr::init(memory, class, fresh) };
        // SAFETY: a new pool in no list.
        unsafe { self.list(class).push_front(pool) };
        Some(pool)
    }

    /// Returns a block of `class` to its pool.
    ///
    /// # Safety
    /// `block` is the start of a block of `class` in use, handed out by this heap with these
    /// arenas.
    #[inline(always)]
    pub(crate) unsafe fn dealloc<P: Platform>(
        &mut self,
        block: NonNull<u8>,
        class: SizeClass,
        arenas: &mut Arenas,
        platform: &P,
    ) {
        let pool = PoolPtr::containing(block, class);
        // SAFETY: the block is in use in a live pool of ours (caller).
        let freed = unsafe { pool.free(block) };
        if freed.changed_state() {
            // SAFETY: `freed` describes what just happened to this live pool of ours.
            unsafe { self.pool_changed_state(pool, class, freed, arenas, platform) }
        }
    }

    /// A full pool rejoins its class's list; an empty one goes back to the arenas.
    ///
    /// # Safety
    /// `pool` is live and ours, and `freed` is what its last free reported.
    #[cold]
    unsafe fn pool_changed_state<P: Platform>(
        &mut self,
        pool: PoolPtr,
        class: SizeClass,
        freed: Freed,
        arenas: &mut Arenas,
        platform: &P,
    ) {
        // SAFETY: a pool that was full is in no list, one that was not is in its class's
        // list (H1); an empty pool's memory came from `arenas` and is no longer used.
        unsafe {
            match (freed.was_full, freed.now_empty) {
                (true, false) => self.list(class).push_front(pool),
                (false, true) => self.list(class).remove(pool),
                _ => {}
            }
            if freed.now_empty {
                arenas.free_pool(pool.memory(), platform);
            }
        }
    }

    /// Checks H1 and H2, and every pool's own invariants.
    pub(crate) fn check(&self, arenas: &Arenas) -> Result<(), &'static str> {
        let mut listed = 0;
        let mut result = Ok(());
        for (index, list) in self.usable.iter().enumerate() {
            // SAFETY: listed pools are live (H2 is what is being checked, through the arenas,
            // before anything else is read).
            unsafe {
                list.for_each(|pool| {
                    listed += 1;
                    if result.is_err() {
                        return;
                    }
                    result = if arenas.pool_slot(pool.memory().addr().get()) != Some(pool.memory())
                    {
                        Err("heap: a listed pool is not a pool in use")
                    } else if pool.class().index() != index {
                        Err("heap: pool listed under the wrong class")
                    } else if pool.is_full() || pool.used() == 0 {
                        Err("heap: a full or empty pool is listed as usable")
                    } else {
                        Ok(())
                    };
                });
            }
            result?;
        }
        let mut usable = 0;
        arenas.for_each_pool(|memory| {
            // SAFETY: pools in use in the arenas are live pools of this heap.
            let pool = unsafe { PoolPtr::at(memory) };
            // SAFETY: as above.
            unsafe {
                if result.is_ok() {
                    result = pool.check();
                }
                usable += (!pool.is_full()) as usize;
            }
        });
        result?;
        if usable != listed {
            return Err("heap: a usable pool is missing from its class's list");
        }
        Ok(())
    }
}
