//! Reed-Solomon forward error correction over GF(2⁸), byte-identical to what Moonlight clients decode
//! (protocol notes §6.4 for video, §7.4 for audio), and the rules that size a frame's FEC blocks (§6.3).
//!
//! - [`Encoder`] computes the parity of one video block (Cauchy matrix, nanors' layout) in place on the
//!   caller's shards, with no allocation per call; [`EncoderCache`] keeps one per block shape.
//! - [`plan_frame`] splits a frame's data shards into at most 4 blocks and picks each block's parity
//!   count and `fecInfo` percentage so that the client derives the same count.
//! - [`encode_audio_parity`] is the fixed 4 + 2 audio matrix.
//! - [`recover`] rebuilds lost shards (the host only encodes; tests and test clients use it to prove the
//!   parity is a working code).
//!
//! Parity is computed by a SIMD kernel chosen at run time (GFNI or AVX2 on x86-64) or by a portable one;
//! all give the same bytes. See docs/fec.md for the kernels and measured speeds.

mod audio;
mod encoder;
pub mod gf256;
mod kernel;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod kernel_x86;
pub mod matrix;
mod params;
mod recover;

pub use audio::{encode_audio_parity, AUDIO_DATA_SHARDS, AUDIO_PARITY_MATRIX, AUDIO_PARITY_SHARDS};
pub use encoder::{Encoder, EncoderCache, ShardLayout};
pub use kernel::Kernel;
pub use matrix::MAX_BLOCK_SHARDS;
pub use params::{
    block_fec, client_parity_count, max_data_shards_per_block, plan_frame, BlockPlan, FecConfig,
    FramePlan, PlanError, Protection, DEFAULT_MIN_PARITY, MAX_BLOCKS, MAX_DATA_SHARDS_FIELD,
    MAX_PROTECTED_DATA_SHARDS_PER_BLOCK,
};
pub use recover::recover;

/// What can go wrong computing or recovering parity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FecError {
    /// The block shape cannot be one Reed-Solomon block.
    #[error(
        "a Reed-Solomon block needs at least 1 data and 1 parity shard and at most 255 shards in all, \
         not {data_shards}+{parity_shards}"
    )]
    BadShape {
        data_shards: usize,
        parity_shards: usize,
    },
    /// A coefficient index is outside the block.
    #[error(
        "data shard {data_index} or parity shard {parity_index} is outside a \
         {data_shards}+{parity_shards} block"
    )]
    IndexOutOfRange {
        data_index: usize,
        parity_index: usize,
        data_shards: usize,
        parity_shards: usize,
    },
    /// The number of data shards passed differs from the encoder's D.
    #[error("expected {expected} data shards, got {got}")]
    DataShardCount { expected: usize, got: usize },
    /// The number of parity shards passed differs from the encoder's P.
    #[error("expected {expected} parity shards, got {got}")]
    ParityShardCount { expected: usize, got: usize },
    /// Shards of one block differ in length (index counts data shards first, then parity).
    #[error("shard {index} is {len} bytes but shard 0 is {expected}: all shards of a block must be the same length")]
    ShardLength {
        index: usize,
        len: usize,
        expected: usize,
    },
    /// The CPU lacks the instructions of the requested kernel.
    #[error("the {0} kernel is not supported by this CPU")]
    KernelUnavailable(Kernel),
    /// A shard layout whose stride is zero or shorter than a shard.
    #[error("shard stride {stride} must be at least 1 and at least the shard length {len}")]
    BadStride { stride: usize, len: usize },
    /// A buffer too small for the shard layout.
    #[error(
        "a buffer of {buffer} bytes cannot hold {shards} shards of {len} bytes at offset {offset} \
         with stride {stride}"
    )]
    BufferTooSmall {
        buffer: usize,
        shards: usize,
        offset: usize,
        stride: usize,
        len: usize,
    },
    /// `recover` was given a presence mask of the wrong length.
    #[error("the presence mask has {got} entries for {expected} shards")]
    PresenceCount { expected: usize, got: usize },
    /// `recover` was given a different number of shards than the block has.
    #[error("expected {expected} shards (data and parity), got {got}")]
    ShardCount { expected: usize, got: usize },
    /// The surviving shards' rows did not form an invertible matrix (cannot happen with a Cauchy
    /// matrix; reported rather than assumed).
    #[error("the surviving shards' coefficient matrix is singular")]
    SingularMatrix,
    /// Fewer shards survived than the block has data shards.
    #[error("{present} shards are present but {needed} are needed to recover the block")]
    TooFewShards { present: usize, needed: usize },
}
