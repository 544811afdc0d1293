//! [`Options`]: what a user may set in the environment, as `MIMALLOC_*` and `MALLOC_CONF`
//! users expect. The global allocator reads them once, at first use, without allocating
//! ([`from_environment`]); an instance made with [`crate::Allocator::with_options`] takes
//! them as given.
//!
//! | variable | values | default | effect |
//! |---|---|---|---|
//! | `PYMALLOC_STATS` | `0`, `1`, `json` | `0` | the statistics at exit, on stderr: the table, or one line of JSON |
//! | `PYMALLOC_VERBOSE` | `0`, `1` | `0` | the options in effect at first use, and a warning each time the system refuses memory, so that a request gets null (the first 16 times) |
//! | `PYMALLOC_EMPTY_ARENAS` | a count | 4 | wholly free 2 MiB arenas kept mapped, at least |
//! | `PYMALLOC_DIRTY_FLOOR` | bytes | 256M | the most that freed, still-committed pool memory kept for reuse may rise to |
//! | `PYMALLOC_LARGE_CACHE` | bytes | 1G | the most bytes of freed large blocks kept for reuse (what is kept follows the program: at most its large blocks in use lately, or 16 MiB) |
//! | `PYMALLOC_HUGEPAGES` | `never`, `auto`, `always` | `never` | whether 2 MiB arenas, and large blocks of 2 MiB or more, are advised to be backed by transparent huge pages: never, once 16 MiB of arenas (of large blocks in use) are mapped, or from the first |
//!
//! Bytes are a number with an optional `K`, `M` or `G` (powers of 1024, `KiB` and `KB` read
//! the same). A value that cannot be read, and a `PYMALLOC_*` variable that is not an option,
//! are warned about on stderr once, and leave the default.

use core::cell::UnsafeCell;
use core::ffi::{CStr, c_char};
use core::fmt;
use core::sync::atomic::{AtomicU8, Ordering};

use pymalloc_arena::{HugePages, MAX_DIRTY_FLOOR, MIN_EMPTY_ARENAS};
use pymalloc_pool::POOL_SIZE;

use crate::large::MAX_CACHE_BYTES;
use crate::report;

/// What `PYMALLOC_STATS` asks for at exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsAtExit {
    /// Nothing (`0`, the default).
    Off,
    /// The statistics table (`1`), as [`crate::Stats`]'s `Display` writes it.
    Table,
    /// One line of JSON (`json`), as [`crate::Stats::json`] writes it.
    Json,
}

/// The settings of an allocator. See the module documentation for each one's variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// The statistics at exit (`PYMALLOC_STATS`; the global allocator only).
    pub stats: StatsAtExit,
    /// The options, and a warning whenever the system refuses memory, on stderr
    /// (`PYMALLOC_VERBOSE`).
    pub verbose: bool,
    /// Wholly free arenas kept mapped, at least (`PYMALLOC_EMPTY_ARENAS`).
    pub empty_arenas: usize,
    /// The most bytes the dirty floor rises to: committed free pool memory kept for reuse
    /// (`PYMALLOC_DIRTY_FLOOR`).
    pub dirty_floor: usize,
    /// The most bytes of freed large blocks kept for reuse (`PYMALLOC_LARGE_CACHE`).
    pub large_cache: usize,
    /// Whether arenas are advised to huge pages (`PYMALLOC_HUGEPAGES`).
    pub huge_pages: HugePages,
}

/// The largest byte count an option takes (1 TiB): well inside every sum made with it.
pub const MAX_OPTION_BYTES: usize = 1 << 40;

impl Options {
    /// Every option at its default.
    pub const DEFAULT: Options = Options {
        stats: StatsAtExit::Off,
        verbose: false,
        empty_arenas: MIN_EMPTY_ARENAS,
        dirty_floor: MAX_DIRTY_FLOOR * POOL_SIZE,
        large_cache: MAX_CACHE_BYTES,
        huge_pages: HugePages::Never,
    };

    /// The options set by `entries` (`NAME=VALUE` strings; those not starting `PYMALLOC_`
    /// are skipped), the rest at their defaults; each problem found goes to `warn`.
    pub fn parse<'a>(
        entries: impl Iterator<Item = &'a [u8]>,
        mut warn: impl FnMut(fmt::Arguments<'_>),
    ) -> Options {
        let mut options = Options::DEFAULT;
        for entry in entries {
            let Some(setting) = entry.strip_prefix(b"PYMALLOC_") else {
                continue;
            };
            let (name, value) = match setting.iter().position(|&b| b == b'=') {
                Some(i) => (setting.get(..i), setting.get(i + 1..)),
                None => (Some(setting), None),
            };
            let (name, value) = (name.unwrap_or_default(), value.unwrap_or_default());
            let shown = Shown(value);
            let ok = match name {
                b"STATS" => match value {
                    b"" | b"0" => Some(StatsAtExit::Off),
                    b"1" => Some(StatsAtExit::Table),
                    b"json" => Some(StatsAtExit::Json),
                    _ => None,
                }
                .map(|v| options.stats = v),
                b"VERBOSE" => match value {
                    b"" | b"0" => Some(false),
                    b"1" => Some(true),
                    _ => None,
                }
                .map(|v| options.verbose = v),
                b"EMPTY_ARENAS" => parse_count(value).map(|v| options.empty_arenas = v),
                b"DIRTY_FLOOR" => parse_bytes(value).map(|v| options.dirty_floor = v),
                b"LARGE_CACHE" => parse_bytes(value).map(|v| options.large_cache = v),
                b"HUGEPAGES" => match value {
                    b"never" => Some(HugePages::Never),
                    b"auto" => Some(HugePages::Auto),
                    b"always" => Some(HugePages::Always),
                    _ => None,
                }
                .map(|v| options.huge_pages = v),
                _ => {
                    warn(format_args!(
                        "PYMALLOC_{} is not an option of pymalloc (they are PYMALLOC_STATS, \
                         PYMALLOC_VERBOSE, PYMALLOC_EMPTY_ARENAS, PYMALLOC_DIRTY_FLOOR, \
                         PYMALLOC_LARGE_CACHE, PYMALLOC_HUGEPAGES); ignored",
                        Shown(name)
                    ));
                    continue;
                }
            };
            if ok.is_none() {
                warn(format_args!(
                    "PYMALLOC_{}={shown}: {}; the default is kept",
                    Shown(name),
                    match name {
                        b"STATS" => "expected 0, 1 or json",
                        b"VERBOSE" => "expected 0 or 1",
                        b"EMPTY_ARENAS" => "expected a count",
                        b"HUGEPAGES" => "expected never, auto or always",
                        _ =>
                            "expected bytes: a number, optionally followed by K, M or G, \
                              up to 1T",
                    }
                ));
            }
        }
        options
    }
}

impl fmt::Display for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stats = match self.stats {
            StatsAtExit::Off => "0",
            StatsAtExit::Table => "1",
            StatsAtExit::Json => "json",
        };
        let huge_pages = match self.huge_pages {
            HugePages::Never => "never",
            HugePages::Auto => "auto",
            HugePages::Always => "always",
        };
        write!(
            f,
            "PYMALLOC_STATS={stats} PYMALLOC_VERBOSE={} PYMALLOC_EMPTY_ARENAS={} \
             PYMALLOC_DIRTY_FLOOR={} PYMALLOC_LARGE_CACHE={} PYMALLOC_HUGEPAGES={huge_pages}",
            u8::from(self.verbose),
            self.empty_arenas,
            self.dirty_floor,
            self.large_cache
        )
    }
}

/// Bytes shown as text, a byte that is not printable ASCII as `?` (environment strings need
/// not be UTF-8).
struct Shown<'a>(&'a [u8]);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            let c = if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            };
            fmt::Write::write_char(f, c)?;
        }
        Ok(())
    }
}

/// A decimal count, up to [`MAX_OPTION_BYTES`].
fn parse_count(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 13 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = value
        .iter()
        .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0'));
    (n <= MAX_OPTION_BYTES).then_some(n)
}

/// A byte count: a decimal number, then optionally `K`, `M` or `G` (either case, powers of
/// 1024) and `B` or `iB`; up to [`MAX_OPTION_BYTES`].
fn parse_bytes(value: &[u8]) -> Option<usize> {
    let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
    let (number, unit) = value.split_at_checked(digits)?;
    let unit = unit
        .strip_suffix(b"iB")
        .or_else(|| unit.strip_suffix(b"B"))
        .unwrap_or(unit);
    let shift = match unit {
        b"" => 0,
        b"k" | b"K" => 10,
        b"m" | b"M" => 20,
        b"g" | b"G" => 30,
        _ => return None,
    };
    let n = parse_count(number)?;
    n.checked_shl(shift)
        .filter(|&bytes| bytes >> shift == n && bytes <= MAX_OPTION_BYTES)
}

const UNREAD: u8 = 0;
const READING: u8 = 1;
const READ: u8 = 2;

/// Whether [`FROM_ENVIRONMENT`] holds the options: `UNREAD`, `READING` (one thread parsing
/// and warning), or `READ` (written, never again).
static STATE: AtomicU8 = AtomicU8::new(UNREAD);

/// The options read from the environment, once `STATE` is `READ`.
static FROM_ENVIRONMENT: Holder = Holder(UnsafeCell::new(Options::DEFAULT));

struct Holder(UnsafeCell<Options>);

// SAFETY: written once, by the one thread that moved `STATE` from UNREAD to READING, before
// it stores READ with Release; read only after loading READ with Acquire.
unsafe impl Sync for Holder {}

/// The options the environment sets, read on the first call that finds it readable, and
/// warned about then; `None` while the process has no environment yet (`environ` is null,
/// as it is for the dynamic loader's calls before libc is set up). Allocates nothing, takes
/// no lock: a thread that finds another reading parses for itself, without warnings.
pub(crate) fn from_environment() -> Option<Options> {
    if STATE.load(Ordering::Acquire) == READ {
        // SAFETY: READ was stored after the options were written, never to change again.
        return Some(unsafe { *FROM_ENVIRONMENT.0.get() });
    }
    read_environment()
}

#[cold]
#[inline(never)]
fn read_environment() -> Option<Options> {
    let entries = environment()?;
    match STATE.compare_exchange(UNREAD, READING, Ordering::Acquire, Ordering::Acquire) {
        Ok(_) => {
            let options = Options::parse(entries, report::warn);
            if options.verbose {
                report::to_fd(
                    libc::STDERR_FILENO,
                    format_args!("pymalloc: options: {options}\n"),
                );
            }
            // SAFETY: this thread alone moved STATE to READING; nobody reads until READ.
            unsafe { *FROM_ENVIRONMENT.0.get() = options };
            STATE.store(READ, Ordering::Release);
            Some(options)
        }
        Err(READ) => {
            // SAFETY: as in `from_environment`.
            Some(unsafe { *FROM_ENVIRONMENT.0.get() })
        }
        Err(_) => Some(Options::parse(entries, |_| {})),
    }
}

unsafe extern "C" {
    /// The process's environment: a null-terminated array of `NAME=VALUE` strings.
    static environ: *const *const c_char;
}

/// The environment's entries, if the process has one yet.
fn environment() -> Option<impl Iterator<Item = &'static [u8]>> {
    // SAFETY: reading the pointer itself; libc sets it before running any program code.
    let mut next = unsafe { environ };
    if next.is_null() {
        return None;
    }
    Some(core::iter::from_fn(move || {
        // SAFETY: `next` walks the array up to its null terminator, never past it; each
        // entry is a NUL-terminated string that the program does not change while we read
        // (changing the environment while other threads run is undefined in C too).
        unsafe {
            let entry = *next;
            if entry.is_null() {
                return None;
            }
            next = next.add(1);
            Some(CStr::from_ptr(entry).to_bytes())
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(entries: &[&str]) -> (Options, Vec<String>) {
        let mut warnings = Vec::new();
        let options = Options::parse(entries.iter().map(|e| e.as_bytes()), |w| {
            warnings.push(w.to_string())
        });
        (options, warnings)
    }

    #[test]
    fn every_option_is_read() {
        let (o, w) = parsed(&[
            "HOME=/root",
            "PYMALLOC_STATS=json",
            "PYMALLOC_VERBOSE=1",
            "PYMALLOC_EMPTY_ARENAS=0",
            "PYMALLOC_DIRTY_FLOOR=8M",
            "PYMALLOC_LARGE_CACHE=64KiB",
            "PYMALLOC_HUGEPAGES=always",
        ]);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            o,
            Options {
                stats: StatsAtExit::Json,
                verbose: true,
                empty_arenas: 0,
                dirty_floor: 8 << 20,
                large_cache: 64 << 10,
                huge_pages: HugePages::Always,
            }
        );
        assert_eq!(
            parsed(&["PYMALLOC_HUGEPAGES=auto"]).0.huge_pages,
            HugePages::Auto
        );
        assert_eq!(parsed(&["PYMALLOC_STATS=1"]).0.stats, StatsAtExit::Table);
        assert_eq!(parsed(&[]).0, Options::DEFAULT);
    }

    #[test]
    fn byte_counts_take_units_and_refuse_the_rest() {
        for (text, bytes) in [
            ("0", Some(0)),
            ("4096", Some(4096)),
            ("2k", Some(2048)),
            ("3MB", Some(3 << 20)),
            ("1G", Some(1 << 30)),
            ("1024G", Some(1 << 40)),
            ("1025G", None),
            ("99999999999999999999", None),
            ("", None),
            ("M", None),
            ("12 M", None),
            ("-1", None),
            ("1T", None),
            ("0x10", None),
        ] {
            assert_eq!(parse_bytes(text.as_bytes()), bytes, "{text:?}");
        }
    }

    #[test]
    fn unknown_names_and_bad_values_are_warned_about_and_keep_the_default() {
        let (o, w) = parsed(&[
            "PYMALLOC_STAT=1",
            "PYMALLOC_STATS=yes",
            "PYMALLOC_LARGE_CACHE=lots",
            "PYMALLOC_EMPTY_ARENAS=\u{e9}",
            "PYMALLOC_VERBOSE",
            "PYMALLOC_HUGEPAGES=yes",
        ]);
        assert_eq!(o, Options::DEFAULT);
        assert_eq!(w.len(), 5, "{w:?}");
        assert!(w[0].starts_with("PYMALLOC_STAT is not an option"), "{w:?}");
        assert!(w[1].contains("PYMALLOC_STATS=yes: expected 0, 1 or json"));
        assert!(w[2].contains("PYMALLOC_LARGE_CACHE=lots: expected bytes"));
        assert!(w[3].contains("PYMALLOC_EMPTY_ARENAS=??: expected a count"));
        assert!(w[4].contains("PYMALLOC_HUGEPAGES=yes: expected never, auto or always"));
    }

    #[test]
    fn the_options_display_as_the_variables_that_set_them() {
        let (o, _) = parsed(&["PYMALLOC_EMPTY_ARENAS=7"]);
        let shown = o.to_string();
        let (again, w) = parsed(&shown.split(' ').collect::<Vec<_>>());
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(again, o);
    }
}
