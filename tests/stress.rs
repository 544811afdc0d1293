//! Several threads allocate, hand blocks to each other and free them, on one instance over
//! the operating system; every block's pattern is checked before it is freed.

mod common;

use common::{Via, churn};
use pymalloc::{Allocator, OsPlatform};

#[test]
fn threads_trading_blocks_see_no_corruption_and_everything_comes_back() {
    let a = Allocator::new(OsPlatform);
    for threads in [2, 4, 8] {
        let report = churn(&Via(&a), threads, 100_000, 500, 1 << 20, 4096);
        assert_eq!(report.corrupt, 0, "{report:?}");
        assert_eq!(report.failed_allocs, 0, "{report:?}");
        assert!(report.remote_frees > 1000, "{report:?}");
        a.check().unwrap();
        let stats = a.stats();
        assert_eq!(
            (stats.bytes_in_use, stats.pooled_blocks, stats.large_blocks),
            (0, 0, 0),
            "{stats}"
        );
    }
}
