//! How a frame's data shards become FEC blocks, and how many parity shards each block gets (protocol
//! notes §6.3 and §6.4).
//!
//! The client learns a block's shape only from its `fecInfo`: D (10 bits) and a percentage (8 bits), and
//! recomputes `P = ceil(D · pct / 100)`. So the host never chooses P directly: it chooses a percentage
//! for which that formula yields the P it sends ([`block_fec`]). A protected block holds at most 255
//! shards (nanors); a frame has at most 4 blocks (2 bits of `multiFecBlocks`).
//!
//! Sunshine drops FEC for the whole frame once it needs more than 4 blocks at the configured
//! percentage. [`plan_frame`] degrades step by step instead:
//! 1. **Full**: the fewest blocks that keep the configured percentage, shards spread evenly.
//! 2. **Reduced**: 4 even blocks, each at the highest percentage (≤ configured) that fits in 255
//!    shards; down to 1 %, which protects 252 data shards with 3 parity shards per block.
//! 3. **Partial**: frames over 4 × 252 data shards: as many full 252 + 3 blocks as still leave room for
//!    the rest in unprotected blocks (up to 1023 data shards each, which the client accepts when the
//!    percentage is 0). Fewer packets are exposed to loss than with no FEC at all.
//!
//! So the largest fully protected frame is 4 × 252 = 1008 data shards (Sunshine at 20 %: 4 × 212 = 848),
//! and the largest frame that can be sent at all is 4 × 1023 data shards.

use super::matrix::MAX_BLOCK_SHARDS;

/// Most blocks per frame (`multiFecBlocks` has 2 bits per index).
pub const MAX_BLOCKS: usize = 4;
/// Most data shards one block can announce (`fecInfo` bits 22–31, and the 10-bit shard index).
pub const MAX_DATA_SHARDS_FIELD: usize = 1023;
/// The client's usual `minRequiredFecPackets` (ANNOUNCE `x-nv-vqos[0].fec.minRequiredFecPackets`).
pub const DEFAULT_MIN_PARITY: u8 = 2;
/// Most data shards a protected block can hold: 252 + ceil(252 · 1 / 100) = 255 at the lowest non-zero
/// percentage (253 would need 3 parity shards too, 256 in all).
pub const MAX_PROTECTED_DATA_SHARDS_PER_BLOCK: usize = 252;

/// The FEC settings of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FecConfig {
    /// Parity as a percentage of data shards (0 = no FEC); Sunshine's default is 20.
    pub percent: u8,
    /// The client's `minRequiredFecPackets`: the least parity a protected block gets.
    pub min_parity: u8,
    /// Blocks per frame: 4 for clients at appversion ≥ 7.1.431 (multi-FEC), else 1. Clamped to 1..=4.
    pub max_blocks: u8,
}

impl Default for FecConfig {
    fn default() -> Self {
        FecConfig {
            percent: 20,
            min_parity: DEFAULT_MIN_PARITY,
            max_blocks: MAX_BLOCKS as u8,
        }
    }
}

/// One FEC block of a frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockPlan {
    /// Index of the block's first data shard within the frame's data shards.
    pub first_data_shard: usize,
    /// D: data shards in this block.
    pub data_shards: usize,
    /// P: parity shards in this block (0 = unprotected).
    pub parity_shards: usize,
    /// The percentage written into `fecInfo`, chosen so that `ceil(D · pct / 100) = P`.
    pub fec_percent: u8,
}

impl BlockPlan {
    /// D + P.
    pub fn total_shards(&self) -> usize {
        self.data_shards + self.parity_shards
    }

    /// The `fecInfo` word of the datagram carrying shard `shard_index` of this block (data 0..D, then
    /// parity D..D+P): D in bits 22–31, the index in bits 12–21, the percentage in bits 4–11.
    pub fn fec_info(&self, shard_index: usize) -> u32 {
        let data = (self.data_shards & 0x3FF) as u32;
        let index = (shard_index & 0x3FF) as u32;
        (data << 22) | (index << 12) | (u32::from(self.fec_percent) << 4)
    }
}

/// How well a planned frame is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Every block at the configured percentage.
    Full,
    /// Every block protected, some at a lower percentage than configured.
    Reduced,
    /// Some blocks protected, the rest sent without parity.
    Partial,
    /// No parity at all (FEC off, or nothing fits).
    None,
}

/// A frame's blocks, in sending order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramePlan {
    blocks: [BlockPlan; MAX_BLOCKS],
    count: usize,
    requested_percent: u8,
}

impl FramePlan {
    /// The blocks (1 to 4).
    pub fn blocks(&self) -> &[BlockPlan] {
        &self.blocks[..self.count]
    }

    /// Data shards in the whole frame.
    pub fn data_shards(&self) -> usize {
        self.blocks().iter().map(|b| b.data_shards).sum()
    }

    /// Parity shards in the whole frame.
    pub fn parity_shards(&self) -> usize {
        self.blocks().iter().map(|b| b.parity_shards).sum()
    }

    /// The `multiFecBlocks` byte for block `block_index`: this index in bits 4–5, the last index in
    /// bits 6–7.
    pub fn multi_fec_blocks(&self, block_index: usize) -> u8 {
        let last = self.count.saturating_sub(1) as u8 & 3;
        ((block_index as u8 & 3) << 4) | (last << 6)
    }

    /// How well this frame is protected compared with the configured percentage.
    pub fn protection(&self) -> Protection {
        let blocks = self.blocks();
        let protected = blocks.iter().filter(|b| b.parity_shards > 0).count();
        if protected == 0 {
            Protection::None
        } else if protected < blocks.len() {
            Protection::Partial
        } else if blocks
            .iter()
            .all(|b| b.parity_shards >= client_parity_count(b.data_shards, self.requested_percent))
        {
            Protection::Full
        } else {
            Protection::Reduced
        }
    }
}

/// Why a frame cannot be planned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A frame has at least one data shard (the 8-byte frame header).
    #[error("a frame needs at least one data shard")]
    NoData,
    /// More data shards than the blocks' 10-bit counts can announce.
    #[error(
        "a frame of {data_shards} data shards exceeds the {max} that {blocks} blocks can carry"
    )]
    TooManyShards {
        data_shards: usize,
        max: usize,
        blocks: usize,
    },
}

/// The parity count the client derives from a block's `fecInfo`: `ceil(D · pct / 100)`.
pub fn client_parity_count(data_shards: usize, fec_percent: u8) -> usize {
    (data_shards * usize::from(fec_percent)).div_ceil(100)
}

/// The parity count and `fecInfo` percentage of a protected block of `data_shards` at `percent`:
/// `P = ceil(D · pct / 100)`, raised to `min_parity` if smaller (then the percentage written is
/// Sunshine's `floor(100 · P / D)`, or the next one that makes the client derive exactly P). Always
/// `client_parity_count(D, pct) == P`. `None` if the block would exceed 255 shards, or if `data_shards`
/// or `percent` is 0.
pub fn block_fec(data_shards: usize, percent: u8, min_parity: u8) -> Option<(usize, u8)> {
    if data_shards == 0 || percent == 0 {
        return None;
    }
    let mut chosen = (client_parity_count(data_shards, percent), percent);
    let target = usize::from(min_parity);
    if chosen.0 < target {
        let sunshine = u8::try_from(100 * target / data_shards).unwrap_or(u8::MAX);
        chosen = if client_parity_count(data_shards, sunshine) == target {
            (target, sunshine)
        } else {
            // The smallest percentage reaching the minimum, or as close as 8 bits allow.
            let pct = (percent..=u8::MAX)
                .find(|&p| client_parity_count(data_shards, p) >= target)
                .unwrap_or(u8::MAX);
            (client_parity_count(data_shards, pct), pct)
        };
    }
    (data_shards + chosen.0 <= MAX_BLOCK_SHARDS).then_some(chosen)
}

/// The largest D such that every block of 1..=D data shards can be protected at `percent`; 0 if none
/// (percent 0, or a minimum parity that cannot fit).
pub fn max_data_shards_per_block(percent: u8, min_parity: u8) -> usize {
    (1..MAX_BLOCK_SHARDS)
        .take_while(|&d| block_fec(d, percent, min_parity).is_some())
        .last()
        .unwrap_or(0)
}

/// Splits a frame of `data_shards` data shards into FEC blocks (see the module documentation for the
/// rules and how protection degrades for large frames).
pub fn plan_frame(data_shards: usize, config: &FecConfig) -> Result<FramePlan, PlanError> {
    let max_blocks = usize::from(config.max_blocks).clamp(1, MAX_BLOCKS);
    if data_shards == 0 {
        return Err(PlanError::NoData);
    }
    let max = max_blocks * MAX_DATA_SHARDS_FIELD;
    if data_shards > max {
        return Err(PlanError::TooManyShards {
            data_shards,
            max,
            blocks: max_blocks,
        });
    }
    let mut plan = FramePlan {
        blocks: [BlockPlan::default(); MAX_BLOCKS],
        count: 0,
        requested_percent: config.percent,
    };

    if config.percent == 0 {
        // No FEC: keep blocks within 255 shards where 4 blocks allow, like a protected frame would be.
        let count = data_shards.div_ceil(MAX_BLOCK_SHARDS).clamp(1, max_blocks);
        push_even(&mut plan, 0, data_shards, count, |_| (0, 0));
        return Ok(plan);
    }

    let full = max_data_shards_per_block(config.percent, config.min_parity);
    if full > 0 && data_shards.div_ceil(full) <= max_blocks {
        let count = data_shards.div_ceil(full);
        push_even(&mut plan, 0, data_shards, count, |d| best_fec(d, config));
        return Ok(plan);
    }

    let cap = max_data_shards_per_block(1, config.min_parity);
    if cap > 0 && data_shards.div_ceil(max_blocks) <= cap {
        push_even(&mut plan, 0, data_shards, max_blocks, |d| {
            best_fec(d, config)
        });
        return Ok(plan);
    }

    // Partial: as many full protected blocks as leave room for the rest in unprotected ones.
    let protected = if cap == 0 {
        0
    } else {
        (0..max_blocks)
            .rev()
            .find(|&k| data_shards - k * cap <= (max_blocks - k) * MAX_DATA_SHARDS_FIELD)
            .unwrap_or(0)
    };
    let mut first = 0;
    for _ in 0..protected {
        push_block(&mut plan, first, cap, best_fec(cap, config));
        first += cap;
    }
    let rest = data_shards - first;
    let count = rest.div_ceil(MAX_DATA_SHARDS_FIELD).max(1);
    push_even(&mut plan, first, rest, count, |_| (0, 0));
    Ok(plan)
}

/// The most parity a block of `d` data shards can get at a percentage no higher than configured
/// (unprotected if none fits).
fn best_fec(d: usize, config: &FecConfig) -> (usize, u8) {
    (1..=config.percent)
        .rev()
        .find_map(|p| block_fec(d, p, config.min_parity))
        .unwrap_or((0, 0))
}

/// Appends `count` blocks sharing `total` data shards as evenly as possible (sizes differ by at most 1).
fn push_even(
    plan: &mut FramePlan,
    first: usize,
    total: usize,
    count: usize,
    fec: impl Fn(usize) -> (usize, u8),
) {
    let (base, extra) = (total / count, total % count);
    let mut next = first;
    for b in 0..count {
        let d = base + usize::from(b < extra);
        push_block(plan, next, d, fec(d));
        next += d;
    }
}

fn push_block(plan: &mut FramePlan, first: usize, data_shards: usize, (parity, pct): (usize, u8)) {
    if let Some(slot) = plan.blocks.get_mut(plan.count) {
        *slot = BlockPlan {
            first_data_shard: first,
            data_shards,
            parity_shards: parity,
            fec_percent: pct,
        };
        plan.count += 1;
    }
}
