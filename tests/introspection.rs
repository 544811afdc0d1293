//! What C programs ask the allocator about itself (`mallinfo2`, `mallinfo`), and the JSON
//! form of the statistics, against [`pymalloc::stats`] taken at the same moment. One test in
//! this binary, whose global allocator is the system's: nothing else allocates from
//! pymalloc's global instance while the figures are read.
// Figures of the default build's blocks; the `secure` build's differ on purpose (a trailer
// on each block, a guard page on each large one).
#![cfg(not(feature = "secure"))]
#![cfg(target_os = "linux")]

use pymalloc::c_abi;

#[test]
fn mallinfo_and_the_json_agree_with_stats() {
    let small: Vec<_> = (0..500).map(|i| c_abi::malloc(24 + i % 200)).collect();
    let large = c_abi::malloc(5 << 20);
    let cached = c_abi::malloc(1 << 20);
    // SAFETY: blocks from c_abi::malloc, in use, each freed once.
    unsafe { c_abi::free(cached) };

    let stats = pymalloc::stats();
    let info = c_abi::mallinfo2();
    let json: serde_json::Value = serde_json::from_str(&stats.json().to_string()).unwrap();
    assert_eq!(
        pymalloc::stats(),
        stats,
        "nothing changed between the readings"
    );

    assert_eq!(info.uordblks, stats.pooled_bytes);
    assert_eq!((info.hblks, info.hblkhd), (1, stats.large_bytes));
    assert_eq!(info.arena, stats.bytes_mapped - stats.large_bytes);
    assert_eq!(info.fordblks, info.arena - info.uordblks);
    assert_eq!(
        info.ordblks,
        stats.classes.iter().map(|c| c.blocks_free).sum::<usize>()
    );
    assert!(info.keepcost >= 1 << 20 && stats.large_cached_bytes == 1 << 20);
    let short = c_abi::mallinfo();
    assert_eq!(short.uordblks as usize, info.uordblks);
    assert_eq!(short.arena as usize, info.arena);

    let field = |name: &str| json[name].as_u64().unwrap() as usize;
    assert_eq!(field("pooled_bytes"), stats.pooled_bytes);
    assert_eq!(field("pooled_blocks"), stats.pooled_blocks);
    assert_eq!(field("large_bytes"), stats.large_bytes);
    assert_eq!(field("large_cached_bytes"), stats.large_cached_bytes);
    assert_eq!(field("bytes_mapped"), stats.bytes_mapped);
    assert_eq!(field("heaps"), stats.heaps);
    let classes = json["classes"].as_array().unwrap();
    assert_eq!(
        classes.len(),
        stats.classes.iter().filter(|c| c.pools > 0).count()
    );
    for class in classes {
        let i = class["index"].as_u64().unwrap() as usize;
        let c = &stats.classes[i];
        assert_eq!(class["block_size"].as_u64(), Some(c.block_size as u64));
        assert_eq!(
            class["blocks_in_use"].as_u64(),
            Some(c.blocks_in_use as u64)
        );
        assert_eq!(class["blocks_free"].as_u64(), Some(c.blocks_free as u64));
        assert_eq!(class["full_pools"].as_u64(), Some(c.full_pools as u64));
    }

    for p in small.into_iter().chain([large]) {
        // SAFETY: as above.
        unsafe { c_abi::free(p) };
    }
}
