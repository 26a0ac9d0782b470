//! Property tests: random shapes, lengths and data; every kernel against the §6.4 formula, computed
//! here independently, and recovery of random erasures.

use lumen_core::fec::{recover, Encoder, Kernel};
use proptest::prelude::*;

mod reference;

use reference::naive_parity;

/// A block shape with D + P ≤ 255, and data for it.
fn block() -> impl Strategy<Value = (usize, Vec<Vec<u8>>)> {
    (1usize..=254, 0usize..300)
        .prop_flat_map(|(d, len)| (1usize..=255 - d, Just(d), Just(len)))
        .prop_flat_map(|(p, d, len)| {
            (
                Just(p),
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), len), d),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_kernel_matches_the_formula((p, data) in block()) {
        let expected = naive_parity(&data, p);
        for kernel in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
            let encoder = Encoder::with_kernel(data.len(), p, kernel).unwrap();
            let mut parity = vec![vec![0x3Cu8; data[0].len()]; p];
            encoder.encode(&data, &mut parity).unwrap();
            prop_assert_eq!(&parity, &expected, "{} {}+{}", kernel, data.len(), p);
        }
    }

    #[test]
    fn up_to_p_erasures_are_recovered(
        (p, data) in block(),
        seed in any::<u64>(),
    ) {
        let d = data.len();
        prop_assume!(!data[0].is_empty());
        let parity = naive_parity(&data, p);
        let original: Vec<Vec<u8>> = data.into_iter().chain(parity).collect();
        // Erase up to P shards chosen by the seed.
        let erase = (seed % (p as u64 + 1)) as usize;
        let mut present = vec![true; d + p];
        let mut s = seed | 1;
        let mut erased = 0;
        while erased < erase {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            let k = (s % (d + p) as u64) as usize;
            if present[k] { present[k] = false; erased += 1; }
        }
        let mut shards = original.clone();
        for (k, shard) in shards.iter_mut().enumerate() {
            if !present[k] { shard.fill(0xC3); }
        }
        recover(d, p, &mut shards, &present).unwrap();
        prop_assert_eq!(shards, original);
    }
}
