//! [`Stats`]: a snapshot of an allocator's figures, in the spirit of CPython's
//! `sys._debugmallocstats()`: plain data, every field public, which `Display` prints as a
//! table and [`Stats::json`] as JSON. The allocator collects it (`allocator.rs`).

use core::fmt;

use pymalloc_pool::NUM_CLASSES;

/// Figures for one size class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Bytes per block.
    pub block_size: usize,
    /// Pools of this class (used and full; not empty pools kept by heaps).
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
    /// Heaps made for threads and local heaps (the fallback heap not counted); a heap is
    /// handed on when its thread exits, so this is the most threads ever alive at once.
    pub heaps: usize,
    /// Arenas mapped.
    pub arenas: usize,
    /// Arenas with no pool in use (kept mapped to absorb the next burst).
    pub empty_arenas: usize,
    /// Pools in use with a block left to hand out.
    pub pools_used: usize,
    /// Pools in use with no block left to hand out.
    pub pools_full: usize,
    /// Empty pools that heaps keep for their next pool (see `heap.rs`).
    pub pools_kept: usize,
    /// Free pool slots whose memory is still committed (reused first).
    pub pools_free_dirty: usize,
    /// Free pool slots never used or decommitted (no physical memory).
    pub pools_free_clean: usize,
    /// Committed free slots allowed before the oldest are decommitted: half the slots in use,
    /// or a floor that starts at one arena's worth and doubles when purges are undone.
    pub pools_free_dirty_limit: usize,
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
    /// Freed large ranges kept for reuse.
    pub large_cached_blocks: usize,
    /// Bytes of freed large ranges kept for reuse.
    pub large_cached_bytes: usize,
    /// The most bytes of freed large ranges kept: [`crate::CACHE_BYTES`] at first, more for
    /// a program whose large blocks cycle through more (see `large.rs`).
    pub large_cached_limit: usize,
    /// Bytes handed out: `pooled_bytes + large_bytes`.
    pub bytes_in_use: usize,
    /// Bytes mapped from the system: arenas, radix-tree nodes, large blocks and the cache, and
    /// the heaps.
    pub bytes_mapped: usize,
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
        writeln!(f, "# heaps                      {:>14}", self.heaps)?;
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
        writeln!(f, "# empty pools kept by heaps  {:>14}", self.pools_kept)?;
        writeln!(
            f,
            "# free pool slots            {:>14} ({} committed of at most {}, {} released)",
            self.pools_free_dirty + self.pools_free_clean,
            self.pools_free_dirty,
            self.pools_free_dirty_limit,
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
            "# large ranges cached        {:>14} ({} bytes of at most {})",
            self.large_cached_blocks, self.large_cached_bytes, self.large_cached_limit
        )?;
        writeln!(f, "# bytes in use               {:>14}", self.bytes_in_use)?;
        write!(f, "# bytes mapped               {:>14}", self.bytes_mapped)
    }
}

impl Stats {
    /// The statistics as one line of JSON: an object with every field of [`Stats`] under its
    /// name, and `classes` as an array of the size classes that have pools, each with its
    /// `index` and [`ClassStats`]'s fields. Written without allocating.
    pub fn json(&self) -> impl fmt::Display + '_ {
        Json(self)
    }
}

/// [`Stats::json`].
struct Json<'a>(&'a Stats);

impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let fields = [
            ("heaps", s.heaps),
            ("arenas", s.arenas),
            ("empty_arenas", s.empty_arenas),
            ("pools_used", s.pools_used),
            ("pools_full", s.pools_full),
            ("pools_kept", s.pools_kept),
            ("pools_free_dirty", s.pools_free_dirty),
            ("pools_free_clean", s.pools_free_clean),
            ("pools_free_dirty_limit", s.pools_free_dirty_limit),
            ("pooled_blocks", s.pooled_blocks),
            ("pooled_bytes", s.pooled_bytes),
            ("large_blocks", s.large_blocks),
            ("large_bytes", s.large_bytes),
            ("large_cached_blocks", s.large_cached_blocks),
            ("large_cached_bytes", s.large_cached_bytes),
            ("large_cached_limit", s.large_cached_limit),
            ("bytes_in_use", s.bytes_in_use),
            ("bytes_mapped", s.bytes_mapped),
        ];
        f.write_str("{")?;
        for (name, value) in fields {
            write!(f, "\"{name}\":{value},")?;
        }
        f.write_str("\"classes\":[")?;
        let with_pools = s.classes.iter().enumerate().filter(|(_, c)| c.pools > 0);
        for (n, (i, c)) in with_pools.enumerate() {
            write!(
                f,
                "{}{{\"index\":{i},\"block_size\":{},\"pools\":{},\"full_pools\":{},\
                 \"blocks_in_use\":{},\"blocks_free\":{}}}",
                if n == 0 { "" } else { "," },
                c.block_size,
                c.pools,
                c.full_pools,
                c.blocks_in_use,
                c.blocks_free
            )?;
        }
        f.write_str("]}")
    }
}
