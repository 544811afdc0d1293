//! `TestPlatform`: a [`Platform`] on memory the test owns (anonymous mappings of its own,
//! each owned whole by a `memmap2::MmapMut`), with
//! every kind of call able to fail on demand, and every call checked against the live
//! reservations so that a release or decommit of a wrong range aborts the test at once.
//!
//! A release may unmap any whole pages of live reservations, as `munmap` does: the pages
//! are marked unmapped, and a reservation's mapping is dropped (unmapped whole) when none of
//! its pages is left. An aligned reservation maps its alignment's worth more and starts at
//! the first aligned address inside: the slack stays mapped with the rest, since a mapping
//! owned whole cannot give back part of itself — which is why the real platform does not
//! use `memmap2` (`docs/design.md`). At least a page of it lies after the reservation, so two
//! reservations never touch, whatever the kernel's placement. `remap` takes whole, untouched reservations only, and refuses
//! (`None`) a range that is part of one, as a system that cannot remap it would.
//!
//! It runs under Miri. It allocates (its bookkeeping is a `Vec`), so it must serve only a
//! pymalloc instance that is not the process's global allocator.

// Test support, not allocator code: a failed lookup here is the test's failure, so it may
// panic as tests do.
#![allow(clippy::indexing_slicing, clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, PoisonError};

use pymalloc_pool::fatal;

use crate::platform::{Capabilities, Platform};

/// The page size `TestPlatform` reports.
pub const TEST_PAGE_SIZE: usize = 4096;

/// A size no machine can back, for tests of the real platform: twice its RAM and swap
/// together (`/proc/meminfo`), which Linux refuses to map under its heuristic (0) or strict
/// (2) overcommit policy. `None` under policy 1, which backs everything, or where `/proc`
/// cannot be read.
pub fn unbackable_bytes() -> Option<usize> {
    let policy = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").ok()?;
    if policy.trim() == "1" {
        return None;
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| -> Option<usize> {
        let line = meminfo.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some(2 * (kib("MemTotal:")? + kib("SwapTotal:")?) * 1024)
}

struct Region {
    /// The mapping that holds the reservation; dropping it unmaps it whole.
    _mapping: memmap2::MmapMut,
    /// The reservation's start, aligned, inside the mapping.
    ptr: NonNull<u8>,
    len: usize,
    /// The most `remap` grows it to in place: its first length.
    capacity: usize,
    /// Its alignment, which a moving `remap` keeps.
    align: usize,
    /// Offsets of the pages of `0..len` already released.
    unmapped: BTreeSet<usize>,
}

impl Region {
    /// A fresh, zero-filled reservation of `len` bytes aligned to `align` (a power of two,
    /// at least a page).
    fn map(len: usize, align: usize) -> Option<Region> {
        // The alignment's slack, and a page after the reservation that is never handed out:
        // reservations never touch, so what tests see does not depend on where the kernel
        // places mappings.
        let mut map = memmap2::MmapOptions::new()
            .len(len.checked_add(align)?)
            .map_anon()
            .ok()?;
        let base = map.as_mut_ptr();
        let skip = base.addr().next_multiple_of(align) - base.addr();
        Some(Region {
            ptr: NonNull::new(base.wrapping_add(skip))?,
            len,
            capacity: len,
            align,
            _mapping: map,
            unmapped: BTreeSet::new(),
        })
    }
}

impl Region {
    fn end(&self) -> usize {
        self.ptr.addr().get() + self.len
    }
}

#[derive(Default)]
struct State {
    live: Vec<Region>,
    reserve_calls: u64,
    fail_reserve_at: BTreeSet<u64>,
    fail_reserves: bool,
    fail_commits: bool,
    fail_decommits: bool,
    commits: u64,
    decommits: u64,
    huge_advised: Vec<(usize, usize)>,
}

/// Memory owned by the test, failing on demand. See the module documentation.
#[derive(Default)]
pub struct TestPlatform {
    state: Mutex<State>,
}

// SAFETY: the raw pointers in the state are only touched under the mutex.
unsafe impl Send for State {}

impl TestPlatform {
    /// A platform with no reservation and no planned failure.
    pub fn new() -> TestPlatform {
        TestPlatform::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the `n`-th reserve call from now fail (`1` is the next one).
    pub fn fail_reserve_in(&self, n: u64) {
        let mut s = self.state();
        let at = s.reserve_calls + n;
        s.fail_reserve_at.insert(at);
    }

    /// While set, every reserve call fails.
    pub fn set_fail_reserves(&self, fail: bool) {
        self.state().fail_reserves = fail;
    }

    /// While set, every commit fails.
    pub fn set_fail_commits(&self, fail: bool) {
        self.state().fail_commits = fail;
    }

    /// While set, every decommit fails (and leaves the memory untouched).
    pub fn set_fail_decommits(&self, fail: bool) {
        self.state().fail_decommits = fail;
    }

    /// Reserve calls so far, failed ones included.
    pub fn reserve_calls(&self) -> u64 {
        self.state().reserve_calls
    }

    /// Successful decommits so far.
    pub fn decommits(&self) -> u64 {
        self.state().decommits
    }

    /// The ranges advised to be backed by huge pages so far, as (address, bytes).
    pub fn huge_advised(&self) -> Vec<(usize, usize)> {
        self.state().huge_advised.clone()
    }

    /// Successful commits so far.
    pub fn commits(&self) -> u64 {
        self.state().commits
    }

    /// Live reservations: those with a page still mapped.
    pub fn live_reservations(&self) -> usize {
        self.state().live.len()
    }

    /// Bytes still mapped.
    pub fn live_bytes(&self) -> usize {
        let s = self.state();
        s.live
            .iter()
            .map(|r| r.len - r.unmapped.len() * TEST_PAGE_SIZE)
            .sum()
    }

    /// A pointer to `addr` with the provenance of the live reservation that holds it (an
    /// address in none gets none), for tests that compute addresses.
    pub fn pointer(&self, addr: usize) -> NonNull<u8> {
        let s = self.state();
        let within = s
            .live
            .iter()
            .find(|r| (r.ptr.addr().get()..r.end()).contains(&addr));
        let ptr = match within {
            Some(r) => r.ptr.as_ptr().with_addr(addr),
            None => core::ptr::without_provenance_mut(addr),
        };
        NonNull::new(ptr).expect("a nonzero address")
    }

    /// The reservations that hold `size` bytes from `ptr`, as `(index, start, end)` pieces
    /// (offsets in the reservation), in address order; `None` unless every page of the range,
    /// whole pages, is mapped.
    fn pieces(s: &State, ptr: NonNull<u8>, size: usize) -> Option<Vec<(usize, usize, usize)>> {
        let (mut at, end) = (ptr.addr().get(), ptr.addr().get().checked_add(size)?);
        if at % TEST_PAGE_SIZE != 0 || size % TEST_PAGE_SIZE != 0 || size == 0 {
            return None;
        }
        let mut pieces = Vec::new();
        while at < end {
            let i = s
                .live
                .iter()
                .position(|r| (r.ptr.addr().get()..r.end()).contains(&at))?;
            let r = &s.live[i];
            let (from, to) = (
                at - r.ptr.addr().get(),
                end.min(r.end()) - r.ptr.addr().get(),
            );
            if r.unmapped.range(from..to).next().is_some() {
                return None;
            }
            pieces.push((i, from, to));
            at += to - from;
        }
        Some(pieces)
    }

    fn check_inside(s: &State, ptr: NonNull<u8>, size: usize, what: &str) {
        if Self::pieces(s, ptr, size).is_none() {
            fatal(what);
        }
    }
}

// SAFETY: memory comes from fresh anonymous mappings (zero-filled), aligned as asked inside
// them, each handed out once and unmapped only when none of its pages is in use; decommit
// zero-fills; remap copies the contents.
unsafe impl Platform for TestPlatform {
    const CAPABILITIES: Capabilities = Capabilities::ZERO_FILLED.union(Capabilities::REMAP);

    fn page_size(&self) -> usize {
        TEST_PAGE_SIZE
    }

    fn reserve(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let mut s = self.state();
        s.reserve_calls += 1;
        let call = s.reserve_calls;
        if s.fail_reserves || s.fail_reserve_at.remove(&call) {
            return None;
        }
        if size == 0 || size % TEST_PAGE_SIZE != 0 || !align.is_power_of_two() {
            return None;
        }
        let region = Region::map(size, align.max(TEST_PAGE_SIZE))?;
        let ptr = region.ptr;
        s.live.push(region);
        Some(ptr)
    }

    unsafe fn release(&self, ptr: NonNull<u8>, size: usize) {
        let mut s = self.state();
        let Some(pieces) = Self::pieces(&s, ptr, size) else {
            fatal("test platform: release of a range that is not all mapped");
        };
        let mut emptied = Vec::new();
        for (i, from, to) in pieces {
            let r = &mut s.live[i];
            if (from, to) == (0, r.len) {
                emptied.push(i); // Whole (its pages were all mapped): the usual case.
                continue;
            }
            r.unmapped.extend((from..to).step_by(TEST_PAGE_SIZE));
            if r.unmapped.len() * TEST_PAGE_SIZE == r.len {
                emptied.push(i);
            }
        }
        // Highest index first, so that each removal leaves the others' indices valid.
        emptied.sort_unstable();
        for i in emptied.into_iter().rev() {
            // None of its pages is mapped any more, so nothing uses it (caller): unmapped.
            drop(s.live.swap_remove(i));
        }
    }

    unsafe fn commit(&self, ptr: NonNull<u8>, size: usize) -> bool {
        let mut s = self.state();
        Self::check_inside(&s, ptr, size, "test platform: commit outside a reservation");
        if s.fail_commits {
            return false;
        }
        s.commits += 1;
        true
    }

    unsafe fn decommit(&self, ptr: NonNull<u8>, size: usize) -> bool {
        let mut s = self.state();
        Self::check_inside(
            &s,
            ptr,
            size,
            "test platform: decommit outside a reservation",
        );
        if s.fail_decommits {
            return false;
        }
        s.decommits += 1;
        // SAFETY: inside a live reservation (just checked) whose contents the caller gave up.
        unsafe { ptr.as_ptr().write_bytes(0, size) };
        true
    }

    unsafe fn remap(
        &self,
        ptr: NonNull<u8>,
        old_size: usize,
        new_size: usize,
        may_move: bool,
    ) -> Option<NonNull<u8>> {
        let mut s = self.state();
        let whole = s
            .live
            .iter()
            .position(|r| r.ptr == ptr && r.len == old_size && r.unmapped.is_empty());
        let Some(i) = whole else {
            Self::check_inside(
                &s,
                ptr,
                old_size,
                "test platform: remap of a range that is not all mapped",
            );
            return None;
        };
        if new_size == 0 || new_size % TEST_PAGE_SIZE != 0 {
            return None;
        }
        let r = &mut s.live[i];
        if new_size <= r.capacity {
            if new_size > r.len {
                // SAFETY: inside the allocation; pages beyond the old end read zero, as the
                // kernel's fresh pages do.
                unsafe { ptr.as_ptr().add(r.len).write_bytes(0, new_size - r.len) };
            }
            r.len = new_size;
            return Some(ptr);
        }
        if !may_move || s.fail_reserves {
            return None;
        }
        let new = Region::map(new_size, s.live[i].align)?;
        let old = s.live.swap_remove(i);
        // SAFETY: both ranges are live and distinct; the old one is unmapped when dropped.
        unsafe {
            new.ptr
                .as_ptr()
                .copy_from_nonoverlapping(old.ptr.as_ptr(), old.len.min(new_size));
        }
        let ptr = new.ptr;
        s.live.push(new);
        Some(ptr)
    }

    /// Takes the advice and records the range ([`TestPlatform::huge_advised`]).
    unsafe fn advise_huge_pages(&self, ptr: NonNull<u8>, size: usize) -> bool {
        let mut s = self.state();
        Self::check_inside(
            &s,
            ptr,
            size,
            "test platform: huge-page advice outside a reservation",
        );
        s.huge_advised.push((ptr.addr().get(), size));
        true
    }

    /// As the system's: the test's memory is real mappings, whose pages `mprotect` guards.
    unsafe fn set_guard(&self, ptr: NonNull<u8>, size: usize, guard: bool) -> bool {
        let s = self.state();
        Self::check_inside(&s, ptr, size, "test platform: guard outside a reservation");
        crate::platform::protect(ptr, size, guard)
    }
}
