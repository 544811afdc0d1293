//! Model check of the remote-free protocol with `loom`, which runs each test under every
//! interleaving of its threads' atomic operations (within loom's bounds):
//!
//! `RUSTFLAGS="--cfg loom" cargo test -p pymalloc-pool --test loom --release`
//!
//! Covered: the remote list (pushes racing with the owner's `take_all`: every block arrives
//! exactly once, with its pool), the full-pool hand-back (a pool that is full when a block
//! is freed remotely rejoins its list once the owner collects, and its blocks are all
//! accounted for), and the heap hand-off (`Inbox`: a thread freeing into a heap whose holder
//! leaves at the same moment — push-then-look against release-then-look — and the block is
//! collected by one of them, exactly once), and the flush of a heap's kept blocks (a chain of
//! blocks pushed with one compare-and-swap while the owner takes its lists back and then
//! leaves: every block of the chain is collected exactly once). The rest of the allocator is
//! not modelled.
#![cfg(loom)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::collections::BTreeSet;
use std::ptr::NonNull;

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use pymalloc_pool::{
    ARENA_SIZE, FreedMark, Inbox, POOL_SIZE, PoolList, PoolPtr, RemoteList, SizeClass,
    blocks_per_pool, set_first_slot_entries, write_freed_mark,
};

/// A zeroed arena for one model run, with one pool of a class in the slot past its header
/// slot (`ptr`).
struct PoolMemory {
    ptr: NonNull<u8>,
    arena: NonNull<u8>,
    layout: Layout,
}

impl PoolMemory {
    fn new(class: SizeClass) -> PoolMemory {
        let layout = Layout::from_size_align(ARENA_SIZE, ARENA_SIZE).unwrap();
        // SAFETY: a non-zero layout.
        let arena = NonNull::new(unsafe { alloc_zeroed(layout) }).unwrap();
        // SAFETY: a pool's size is below the arena's.
        let ptr = unsafe { arena.add(class.pool_bytes()) };
        let first = (ptr.addr().get() % ARENA_SIZE / POOL_SIZE) as u8;
        // SAFETY: the pool's slots lie in the arena; the entries are set as the arena manager
        // would when handing out the slots.
        unsafe { set_first_slot_entries(ptr, class.span_slots(), first) };
        PoolMemory { ptr, arena, layout }
    }
}

impl Drop for PoolMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.arena.as_ptr(), self.layout) }
    }
}

/// Addresses cross threads as integers: the blocks are only ever touched by one thread at a
/// time, which the protocol (and loom) is checking.
#[derive(Clone, Copy)]
struct Addr(usize);

fn block(addr: Addr) -> NonNull<u8> {
    NonNull::new(addr.0 as *mut u8).unwrap()
}

/// A fresh pool of a class whose pools hold two to four blocks (few enough to model), with
/// the memory that holds it.
fn small_pool() -> (PoolMemory, PoolPtr) {
    let class = SizeClass::all()
        .find(|&c| (2..=4).contains(&blocks_per_pool(c)))
        .expect("a class with two to four blocks a pool");
    let memory = PoolMemory::new(class);
    // SAFETY: fresh memory of the pool's size and alignment, ours alone.
    let pool = unsafe { PoolPtr::init(memory.ptr, class, true, std::ptr::null_mut()) };
    (memory, pool)
}

/// What `heap::collect` does: while blocks wait and the claim can be had, take them, counting
/// them in `collected`.
fn collect(inbox: &Inbox<2>, collected: &AtomicUsize) {
    while inbox.has_waiting() && inbox.try_claim() {
        // SAFETY: claimed just now.
        let taken = unsafe { inbox.take_all() }.count();
        collected.fetch_add(taken, Ordering::Relaxed);
        // SAFETY: claimed above; what it reports is looked at again by the loop.
        unsafe { inbox.release() };
    }
}

#[test]
fn pushes_racing_with_take_all_deliver_every_block_once() {
    loom::model(|| {
        let (memory, pool) = small_pool();
        // SAFETY: the pool is ours; it is empty, so it has blocks to hand out.
        let blocks: Vec<Addr> = (0..2)
            .map(|_| unsafe { pool.alloc() }.map(|(b, _)| Addr(b.as_ptr() as usize)))
            .collect::<Option<_>>()
            .unwrap();
        let list = Arc::new(RemoteList::new());
        let pushers: Vec<_> = blocks
            .iter()
            .copied()
            .map(|b| {
                let list = list.clone();
                thread::spawn(move || {
                    // SAFETY: a block in use of the live pool, given up by this thread.
                    unsafe { list.push(block(b)) };
                })
            })
            .collect();
        let mut seen = BTreeSet::new();
        for b in list.take_all() {
            // SAFETY: a pushed block is in use in the live pool.
            assert_eq!(unsafe { PoolPtr::containing(b) }, pool);
            assert!(seen.insert(b.as_ptr() as usize), "a block arrived twice");
        }
        pushers.into_iter().for_each(|t| t.join().unwrap());
        for b in list.take_all() {
            // SAFETY: a pushed block is in use in the live pool.
            assert_eq!(unsafe { PoolPtr::containing(b) }, pool);
            assert!(seen.insert(b.as_ptr() as usize), "a block arrived twice");
        }
        let expected: BTreeSet<usize> = blocks.iter().map(|b| b.0).collect();
        assert_eq!(seen, expected, "a block was lost");
        drop(memory);
    });
}

#[test]
fn a_full_pool_freed_into_remotely_rejoins_its_list() {
    loom::model(|| {
        let (memory, pool) = small_pool();
        let mut usable = PoolList::new();
        // SAFETY: the owner thread (this one) has the pool to itself.
        unsafe { usable.push_front(pool.into()) };
        // The owner fills the pool: it leaves the list, as the heap does with full pools.
        let mut blocks = Vec::new();
        // SAFETY: as above.
        while let Some((b, _)) = unsafe { pool.alloc() } {
            blocks.push(Addr(b.as_ptr() as usize));
        }
        // SAFETY: as above.
        unsafe {
            assert!(pool.is_full());
            usable.remove(pool.into());
        }
        let list = Arc::new(RemoteList::new());
        let pushed = Arc::new(AtomicUsize::new(0));
        // Another thread frees the first two blocks remotely.
        let remote = {
            let (list, pushed) = (list.clone(), pushed.clone());
            let mine = blocks[..2.min(blocks.len())].to_vec();
            thread::spawn(move || {
                for b in mine {
                    // SAFETY: a block in use of the live pool, given up by this thread.
                    unsafe { list.push(block(b)) };
                    pushed.fetch_add(1, Ordering::Release);
                }
            })
        };
        // The owner collects whenever it looks, as a heap does when it needs a block.
        let mut freed = 0;
        let mut collect = |usable: &mut PoolList| {
            for b in list.take_all() {
                // SAFETY: a pushed block is in use in its live pool, now the owner's again.
                let p = unsafe { PoolPtr::containing(b) };
                // SAFETY: as above.
                let state = unsafe { p.free(FreedMark::of(b)) };
                if state.was_full {
                    // SAFETY: a full pool is in no list.
                    unsafe { usable.push_front(p.into()) };
                }
                freed += 1;
            }
        };
        collect(&mut usable);
        remote.join().unwrap();
        collect(&mut usable);
        assert_eq!(freed, pushed.load(Ordering::Acquire));
        assert_eq!(
            usable.head().map(PoolPtr::from),
            Some(pool),
            "the full pool was lost"
        );
        // SAFETY: the owner's pool.
        unsafe {
            assert_eq!(pool.used(), blocks.len() - freed);
            assert!(pool.check().is_ok());
        }
        drop(memory);
    });
}

/// The heap hand-off (`Inbox`, I1): one thread frees a block into a heap while the heap's
/// holder leaves. Each side follows the heap's code — the freeing thread pushes then looks at
/// the claim, the holder releases then looks at the lists — and collects (claims if it can,
/// takes everything, releases, and looks again, as `heap::collect` does) when it sees the
/// other. In every interleaving the block is collected exactly once, and nothing is left
/// waiting with nobody holding the heap.
#[test]
fn a_block_freed_while_its_heap_is_released_is_collected_once() {
    loom::model(|| {
        let (memory, pool) = small_pool();
        // SAFETY: the pool is ours and has blocks to hand out.
        let b = unsafe { pool.alloc() }
            .map(|(b, _)| Addr(b.as_ptr() as usize))
            .unwrap();
        let inbox = Arc::new(Inbox::<2>::new());
        let collected = Arc::new(AtomicUsize::new(0));
        assert!(inbox.try_claim(), "the holder claims its heap");
        let freeing = {
            let (inbox, collected) = (inbox.clone(), collected.clone());
            thread::spawn(move || {
                // SAFETY: a block in use of the live pool, given up by this thread; shard 1.
                if unsafe { inbox.push(1, block(b)) } {
                    collect(&inbox, &collected);
                }
            })
        };
        // The holder leaves.
        // SAFETY: claimed above.
        if unsafe { inbox.release() } {
            collect(&inbox, &collected);
        }
        freeing.join().unwrap();
        assert_eq!(
            collected.load(Ordering::Relaxed),
            1,
            "lost or collected twice"
        );
        assert!(!inbox.has_waiting() && !inbox.claim().is_locked());
        drop(memory);
    });
}

#[test]
fn a_chain_flushed_while_its_owner_collects_and_leaves_is_collected_once() {
    loom::model(|| {
        let (memory, pool) = small_pool();
        let [first, last] = [(); 2].map(|()| {
            // SAFETY: the pool is ours and has at least two blocks to hand out.
            unsafe { pool.alloc() }
                .map(|(b, _)| Addr(b.as_ptr() as usize))
                .unwrap()
        });
        let inbox = Arc::new(Inbox::<2>::new());
        let collected = Arc::new(AtomicUsize::new(0));
        assert!(inbox.try_claim(), "the owner claims its heap");
        let flushing = {
            let (inbox, collected) = (inbox.clone(), collected.clone());
            thread::spawn(move || {
                // The kept blocks, linked and marked as a heap keeps them (heap H8).
                // SAFETY: blocks in use of the live pool, given up by this thread; shard 1.
                unsafe {
                    block(first).cast::<*mut u8>().write(block(last).as_ptr());
                    write_freed_mark(block(first));
                    write_freed_mark(block(last));
                    if inbox.push_chain(1, block(first), block(last)) {
                        collect(&inbox, &collected);
                    }
                }
            })
        };
        // The owner takes its lists back once, then leaves.
        // SAFETY: claimed above.
        let taken = unsafe { inbox.take_all() }.count();
        collected.fetch_add(taken, Ordering::Relaxed);
        // SAFETY: claimed above.
        if unsafe { inbox.release() } {
            collect(&inbox, &collected);
        }
        flushing.join().unwrap();
        assert_eq!(
            collected.load(Ordering::Relaxed),
            2,
            "a block of the chain lost or collected twice"
        );
        assert!(!inbox.has_waiting() && !inbox.claim().is_locked());
        drop(memory);
    });
}
