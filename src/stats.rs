//! [`Stats`]: a snapshot of an allocator's figures, in the spirit of CPython's
//! `sys._debugmallocstats()`. Every field is public; `Display` prints it as a table.
//!
//! Pooled-block figures are counted by walking every pool, so they are exact, not estimates.

use core::fmt;

use pymalloc_pool::{NUM_CLASSES, PoolPtr, SizeClass, blocks_per_pool};

use crate::allocator::State;

/// Figures for one size class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Bytes per block.
    pub block_size: usize,
    /// Pools of this class (used and full).
    pub pools: usize,
    /// Of those, pools with no block left to hand out.
    pub full_pools: usize,
    /// Blocks in use.
    pub blocks_in_use: usize,
    /// Blocks available in this class's pools (free or not yet carved).
    pub blocks_free: usize,
}

/// A snapshot of an allocator. See [`crate::stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Arenas mapped.
    pub arenas: usize,
    /// Arenas with no pool in use (kept mapped to absorb the next burst).
    pub empty_arenas: usize,
    /// Pools in use with a block left to hand out.
    pub pools_used: usize,
    /// Pools in use with no block left to hand out.
    pub pools_full: usize,
    /// Free pool slots whose memory is still committed (reused first).
    pub pools_free_dirty: usize,
    /// Free pool slots never used or decommitted (no physical memory).
    pub pools_free_clean: usize,
    /// Per size class, indexed by `SizeClass::index`.
    pub classes: [ClassStats; NUM_CLASSES],
    /// Pooled blocks (small and medium classes) in use.
    pub pooled_blocks: usize,
    /// Bytes of pooled blocks in use (block sizes, not requested sizes).
    pub pooled_bytes: usize,
    /// Large blocks in use.
    pub large_blocks: usize,
    /// Bytes mapped for large blocks in use.
    pub large_bytes: usize,
    /// Freed large mappings kept for reuse.
    pub large_cached_blocks: usize,
    /// Bytes of freed large mappings kept for reuse.
    pub large_cached_bytes: usize,
    /// Bytes handed out: `pooled_bytes + large_bytes`.
    pub bytes_in_use: usize,
    /// Bytes mapped from the system: arenas, radix-tree nodes, large blocks and the cache.
    pub bytes_mapped: usize,
}

impl Stats {
    pub(crate) fn collect(state: &State) -> Stats {
        let mut classes = [ClassStats::default(); NUM_CLASSES];
        for (class, stats) in SizeClass::all().zip(classes.iter_mut()) {
            stats.block_size = class.block_size();
        }
        state.arenas.for_each_pool(|memory| {
            // SAFETY: the arenas' pools in use are live, and the caller holds the lock.
            let pool = unsafe { PoolPtr::at(memory) };
            // SAFETY: as above.
            let (class, used, full) = unsafe { (pool.class(), pool.used(), pool.is_full()) };
            let c = &mut classes[class.index()];
            c.pools += 1;
            c.full_pools += full as usize;
            c.blocks_in_use += used;
            c.blocks_free += blocks_per_pool(class) - used;
        });
        let arenas = state.arenas.stats();
        let large = state.large.stats();
        let pooled_blocks = classes.iter().map(|c| c.blocks_in_use).sum();
        let pooled_bytes = classes
            .iter()
            .map(|c| c.blocks_in_use * c.block_size)
            .sum::<usize>();
        let pools_full = classes.iter().map(|c| c.full_pools).sum();
        Stats {
            arenas: arenas.arenas,
            empty_arenas: arenas.empty_arenas,
            pools_used: arenas.pools_in_use - pools_full,
            pools_full,
            pools_free_dirty: arenas.free_dirty_slots,
            pools_free_clean: arenas.free_clean_slots,
            classes,
            pooled_blocks,
            pooled_bytes,
            large_blocks: large.blocks,
            large_bytes: large.bytes,
            large_cached_blocks: large.cached_blocks,
            large_cached_bytes: large.cached_bytes,
            bytes_in_use: pooled_bytes + large.bytes,
            bytes_mapped: arenas.mapped_bytes + large.bytes + large.cached_bytes,
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "pymalloc statistics")?;
        writeln!(
            f,
            "class   size   pools    full   blocks in use   free blocks"
        )?;
        for (i, c) in self.classes.iter().enumerate().filter(|(_, c)| c.pools > 0) {
            writeln!(
                f,
                "{i:>5} {:>6} {:>7} {:>7} {:>15} {:>13}",
                c.block_size, c.pools, c.full_pools, c.blocks_in_use, c.blocks_free
            )?;
        }
        writeln!(
            f,
            "# arenas mapped              {:>14} ({} empty)",
            self.arenas, self.empty_arenas
        )?;
        writeln!(
            f,
            "# pools used / full          {:>14} / {}",
            self.pools_used, self.pools_full
        )?;
        writeln!(
            f,
            "# free pool slots            {:>14} ({} committed, {} released)",
            self.pools_free_dirty + self.pools_free_clean,
            self.pools_free_dirty,
            self.pools_free_clean
        )?;
        writeln!(
            f,
            "# pooled blocks in use       {:>14} ({} bytes)",
            self.pooled_blocks, self.pooled_bytes
        )?;
        writeln!(
            f,
            "# large blocks in use        {:>14} ({} bytes)",
            self.large_blocks, self.large_bytes
        )?;
        writeln!(
            f,
            "# large mappings cached      {:>14} ({} bytes)",
            self.large_cached_blocks, self.large_cached_bytes
        )?;
        writeln!(f, "# bytes in use               {:>14}", self.bytes_in_use)?;
        write!(f, "# bytes mapped               {:>14}", self.bytes_mapped)
    }
}
