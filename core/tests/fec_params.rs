//! The block planner and parity-count rules of protocol notes §6.3/§6.4, checked against the client's
//! own arithmetic: whatever the plan, the client recomputes the same parity count from `fecInfo`.

use lumen_core::fec::{
    block_fec, client_parity_count, max_data_shards_per_block, plan_frame, FecConfig, FramePlan,
    PlanError, Protection, MAX_PROTECTED_DATA_SHARDS_PER_BLOCK,
};
use proptest::prelude::*;

fn config(percent: u8) -> FecConfig {
    FecConfig {
        percent,
        ..FecConfig::default()
    }
}

/// What a client reading these datagrams would conclude, and the limits it depends on.
fn check_plan(plan: &FramePlan, data_shards: usize, cfg: &FecConfig) {
    let blocks = plan.blocks();
    assert!((1..=4).contains(&blocks.len()));
    assert!(blocks.len() <= usize::from(cfg.max_blocks.clamp(1, 4)));
    assert_eq!(plan.data_shards(), data_shards);
    let mut next = 0;
    for (b, block) in blocks.iter().enumerate() {
        assert_eq!(block.first_data_shard, next, "blocks are contiguous");
        next += block.data_shards;
        assert!(block.data_shards >= 1 && block.data_shards <= 1023);
        // Decode fecInfo the way moonlight-common-c does.
        let info = block.fec_info(0);
        let d = ((info & 0xFFC0_0000) >> 22) as usize;
        let pct = ((info & 0xFF0) >> 4) as u8;
        assert_eq!(d, block.data_shards);
        #[allow(clippy::manual_div_ceil)] // moonlight-common-c's expression, verbatim
        let client_p = (d * usize::from(pct) + 99) / 100;
        assert_eq!(client_p, block.parity_shards, "client recomputes P");
        if block.parity_shards > 0 {
            assert!(block.total_shards() <= 255, "nanors block limit");
            assert!(
                block.parity_shards >= usize::from(cfg.min_parity).min(255 - block.data_shards)
            );
            assert!(cfg.percent > 0);
        }
        assert_eq!(plan.multi_fec_blocks(b) >> 6, (blocks.len() - 1) as u8);
        assert_eq!((plan.multi_fec_blocks(b) >> 4) & 3, b as u8);
        assert_eq!(plan.multi_fec_blocks(b) & 0x0F, 0);
    }
}

#[test]
fn parity_count_is_the_ceiling_the_client_computes() {
    assert_eq!(client_parity_count(212, 20), 43);
    assert_eq!(client_parity_count(100, 20), 20);
    assert_eq!(client_parity_count(201, 20), 41);
    assert_eq!(client_parity_count(5, 20), 1);
    assert_eq!(block_fec(212, 20, 2), Some((43, 20)));
    assert_eq!(block_fec(213, 20, 2), None, "213 + 43 > 255");
    assert_eq!(block_fec(10, 0, 2), None);
}

#[test]
fn small_blocks_get_the_minimum_parity_with_sunshines_percentage() {
    // D=5 at 20 % gives 1; raised to 2 with pct = floor(200/5) = 40, and ceil(5·40/100) = 2.
    assert_eq!(block_fec(5, 20, 2), Some((2, 40)));
    // D=1: pct 200, ceil(1·200/100) = 2.
    assert_eq!(block_fec(1, 20, 2), Some((2, 200)));
    // D=3: floor(200/3) = 66 → ceil(1.98) = 2.
    assert_eq!(block_fec(3, 10, 2), Some((2, 66)));
    // A minimum beyond what 8 bits of percentage can express for D=1 stays as close as it can.
    assert_eq!(block_fec(1, 20, 4), Some((3, 255)));
    for d in 1..=100 {
        for pct in 1..=255u8 {
            if let Some((p, field)) = block_fec(d, pct, 2) {
                assert!(p >= 2);
                assert_eq!(client_parity_count(d, field), p, "d={d} pct={pct}");
            }
        }
    }
}

#[test]
fn per_block_limits_follow_from_the_255_shard_cap() {
    assert_eq!(
        max_data_shards_per_block(20, 2),
        212,
        "Sunshine's Dmax at 20 %"
    );
    assert_eq!(
        max_data_shards_per_block(1, 2),
        MAX_PROTECTED_DATA_SHARDS_PER_BLOCK
    );
    assert_eq!(MAX_PROTECTED_DATA_SHARDS_PER_BLOCK, 252);
    assert_eq!(max_data_shards_per_block(100, 2), 127);
    assert_eq!(max_data_shards_per_block(0, 2), 0);
    for pct in 1..=255u8 {
        let dmax = max_data_shards_per_block(pct, 2);
        // Sunshine's closed form floor(255·100 / (100 + pct)) may overshoot by the ceiling; never under.
        assert!(dmax <= 255 * 100 / (100 + usize::from(pct)), "pct {pct}");
        assert!(block_fec(dmax, pct, 2).is_some());
    }
}

#[test]
fn frames_that_fit_keep_the_configured_percentage_in_the_fewest_even_blocks() {
    let cfg = config(20);
    let plan = plan_frame(1, &cfg).unwrap();
    assert_eq!(plan.blocks().len(), 1);
    assert_eq!(
        (plan.blocks()[0].parity_shards, plan.blocks()[0].fec_percent),
        (2, 200)
    );

    let plan = plan_frame(212, &cfg).unwrap();
    assert_eq!(plan.blocks().len(), 1);
    assert_eq!(plan.protection(), Protection::Full);

    // The E2E-tested 401-shard IDR: 2 blocks, evenly 201 + 200 (Sunshine: 200 + 201 by remainder).
    let plan = plan_frame(401, &cfg).unwrap();
    let shapes: Vec<_> = plan
        .blocks()
        .iter()
        .map(|b| (b.data_shards, b.parity_shards))
        .collect();
    assert_eq!(shapes, vec![(201, 41), (200, 40)]);
    assert_eq!(plan.protection(), Protection::Full);
    check_plan(&plan, 401, &cfg);

    let plan = plan_frame(848, &cfg).unwrap();
    assert_eq!(plan.blocks().len(), 4);
    assert!(plan
        .blocks()
        .iter()
        .all(|b| b.data_shards == 212 && b.parity_shards == 43));
    assert_eq!(plan.protection(), Protection::Full);
}

#[test]
fn frames_too_big_for_the_percentage_keep_reduced_fec_instead_of_none() {
    let cfg = config(20);
    // Sunshine would send 849 shards with no FEC at all.
    let plan = plan_frame(849, &cfg).unwrap();
    assert_eq!(plan.protection(), Protection::Reduced);
    assert_eq!(plan.blocks().len(), 4);
    check_plan(&plan, 849, &cfg);
    assert!(plan.blocks().iter().all(|b| b.parity_shards >= 40));

    // The largest fully protected frame: 4 × (252 + 3).
    let plan = plan_frame(1008, &cfg).unwrap();
    assert_eq!(plan.protection(), Protection::Reduced);
    for block in plan.blocks() {
        assert_eq!(
            (block.data_shards, block.parity_shards, block.fec_percent),
            (252, 3, 1)
        );
    }
}

#[test]
fn frames_beyond_four_protected_blocks_protect_what_they_can() {
    let cfg = config(20);
    let plan = plan_frame(1009, &cfg).unwrap();
    assert_eq!(plan.protection(), Protection::Partial);
    check_plan(&plan, 1009, &cfg);
    let protected: usize = plan
        .blocks()
        .iter()
        .filter(|b| b.parity_shards > 0)
        .map(|b| b.data_shards)
        .sum();
    assert_eq!(
        protected, 756,
        "three 252 + 3 blocks, the rest (253) unprotected"
    );

    // 3·252 + 1023 is the last size with three protected blocks.
    let plan = plan_frame(756 + 1023, &cfg).unwrap();
    assert_eq!(
        plan.blocks().iter().filter(|b| b.parity_shards > 0).count(),
        3
    );
    let plan = plan_frame(756 + 1024, &cfg).unwrap();
    assert_eq!(
        plan.blocks().iter().filter(|b| b.parity_shards > 0).count(),
        2
    );
    check_plan(&plan, 1780, &cfg);

    let plan = plan_frame(4092, &cfg).unwrap();
    assert_eq!(plan.protection(), Protection::None);
    assert!(plan.blocks().iter().all(|b| b.data_shards == 1023));
    assert_eq!(
        plan_frame(4093, &cfg),
        Err(PlanError::TooManyShards {
            data_shards: 4093,
            max: 4092,
            blocks: 4
        })
    );
    assert_eq!(plan_frame(0, &cfg), Err(PlanError::NoData));
}

#[test]
fn fec_off_sends_plain_blocks() {
    let cfg = config(0);
    let plan = plan_frame(300, &cfg).unwrap();
    assert_eq!(plan.protection(), Protection::None);
    assert_eq!(plan.blocks().len(), 2);
    assert!(plan
        .blocks()
        .iter()
        .all(|b| b.parity_shards == 0 && b.fec_percent == 0));
    check_plan(&plan, 300, &cfg);
}

#[test]
fn single_block_clients_get_one_block() {
    let cfg = FecConfig {
        max_blocks: 1,
        ..config(20)
    };
    let plan = plan_frame(240, &cfg).unwrap();
    assert_eq!(plan.blocks().len(), 1);
    assert_eq!(plan.protection(), Protection::Reduced);
    check_plan(&plan, 240, &cfg);
    assert_eq!(
        plan.blocks()[0].parity_shards,
        15,
        "the most that fits: 240 + ceil(240·6/100)"
    );
    // One block cannot protect more than 252 data shards.
    assert_eq!(
        plan_frame(300, &cfg).unwrap().protection(),
        Protection::None
    );
    let plan = plan_frame(1023, &cfg).unwrap();
    assert_eq!(plan.protection(), Protection::None);
    assert!(plan_frame(1024, &cfg).is_err());
}

#[test]
fn fec_info_packs_the_fields_where_the_client_reads_them() {
    let plan = plan_frame(401, &config(20)).unwrap();
    let block = plan.blocks()[1];
    let info = block.fec_info(203);
    assert_eq!(info >> 22, 200);
    assert_eq!((info >> 12) & 0x3FF, 203);
    assert_eq!((info >> 4) & 0xFF, 20);
    assert_eq!(info & 0xF, 0);
    assert_eq!(plan.multi_fec_blocks(1), 0x10 | 0x40);
}

proptest! {
    #[test]
    fn every_plan_is_one_the_client_reads_back(
        data_shards in 1usize..=4092,
        percent in 0u8..=255,
        min_parity in 0u8..=8,
        max_blocks in 1u8..=4,
    ) {
        let cfg = FecConfig { percent, min_parity, max_blocks };
        match plan_frame(data_shards, &cfg) {
            Ok(plan) => {
                check_plan(&plan, data_shards, &cfg);
                // Fully protected whenever 4 blocks of 252 + 3 can hold the frame.
                let cap = max_data_shards_per_block(1, min_parity);
                if percent > 0 && data_shards <= usize::from(max_blocks) * cap {
                    prop_assert!(plan.blocks().iter().all(|b| b.parity_shards > 0));
                }
            }
            Err(e) => prop_assert!(data_shards > usize::from(max_blocks) * 1023, "{e}"),
        }
    }
}
