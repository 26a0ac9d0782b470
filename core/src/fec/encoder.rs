//! The parity encoder for one block shape: coefficients computed once per (D, P), then parity computed
//! in place on the caller's buffers with no allocation per call.

use std::collections::HashMap;

use super::kernel::{self, Kernel, Tables};
use super::matrix::{self, MAX_BLOCK_SHARDS};
use super::FecError;

/// Computes the P parity shards of a D + P block, exactly as Moonlight's decoder expects them.
pub struct Encoder {
    data_shards: usize,
    parity_shards: usize,
    kernel: Kernel,
    coefficients: Box<[u8]>,
    tables: Tables,
}

/// Where a block's shards sit in one contiguous buffer: shard k (data 0..D, then parity D..D+P) is
/// `buffer[offset + k·stride ..][..len]`. The packetizer keeps a frame's datagrams this way, with
/// `stride` ≥ `len` leaving room for per-datagram prefixes such as the encryption header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardLayout {
    /// Byte offset of data shard 0.
    pub offset: usize,
    /// Distance in bytes from one shard to the next.
    pub stride: usize,
    /// Length of every shard in bytes.
    pub len: usize,
}

impl Encoder {
    /// An encoder for D data and P parity shards on the fastest kernel this CPU supports.
    pub fn new(data_shards: usize, parity_shards: usize) -> Result<Encoder, FecError> {
        Encoder::with_kernel(data_shards, parity_shards, Kernel::best())
    }

    /// An encoder on a chosen kernel; fails if the CPU does not support it.
    pub fn with_kernel(
        data_shards: usize,
        parity_shards: usize,
        kernel: Kernel,
    ) -> Result<Encoder, FecError> {
        if !kernel.is_supported() {
            return Err(FecError::KernelUnavailable(kernel));
        }
        let coefficients = matrix::coefficients_by_data_shard(data_shards, parity_shards)?;
        let tables = Tables::new(kernel, &coefficients);
        Ok(Encoder {
            data_shards,
            parity_shards,
            kernel,
            coefficients: coefficients.into_boxed_slice(),
            tables,
        })
    }

    /// D.
    pub fn data_shards(&self) -> usize {
        self.data_shards
    }

    /// P.
    pub fn parity_shards(&self) -> usize {
        self.parity_shards
    }

    /// The kernel this encoder runs.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// The coefficient multiplying data shard `data_index` into parity shard `parity_index`.
    pub fn coefficient(&self, data_index: usize, parity_index: usize) -> Option<u8> {
        if data_index >= self.data_shards || parity_index >= self.parity_shards {
            return None;
        }
        self.coefficients
            .get(data_index * self.parity_shards + parity_index)
            .copied()
    }

    /// Computes `parity` from `data`: D data shards and P parity shards, all the same length. Every
    /// byte of each parity shard is overwritten.
    pub fn encode<D: AsRef<[u8]>, P: AsMut<[u8]>>(
        &self,
        data: &[D],
        parity: &mut [P],
    ) -> Result<(), FecError> {
        self.check_counts(data.len(), parity.len())?;
        let mut data_refs: [&[u8]; MAX_BLOCK_SHARDS] = [&[]; MAX_BLOCK_SHARDS];
        for (r, shard) in data_refs.iter_mut().zip(data) {
            *r = shard.as_ref();
        }
        let mut parity_refs: [&mut [u8]; MAX_BLOCK_SHARDS] =
            std::array::from_fn(|_| Default::default());
        for (r, shard) in parity_refs.iter_mut().zip(parity.iter_mut()) {
            *r = shard.as_mut();
        }
        self.encode_refs(
            &data_refs[..self.data_shards],
            &mut parity_refs[..self.parity_shards],
        )
    }

    /// Computes the parity shards of a block held in one buffer (see [`ShardLayout`]): reads data shards
    /// 0..D and overwrites parity shards D..D+P.
    pub fn encode_in_place(&self, buffer: &mut [u8], layout: ShardLayout) -> Result<(), FecError> {
        let ShardLayout {
            offset,
            stride,
            len,
        } = layout;
        if stride == 0 || stride < len {
            return Err(FecError::BadStride { stride, len });
        }
        let shards = self.data_shards + self.parity_shards;
        let too_small = FecError::BufferTooSmall {
            buffer: buffer.len(),
            shards,
            offset,
            stride,
            len,
        };
        let needed = (shards - 1)
            .checked_mul(stride)
            .and_then(|n| n.checked_add(offset))
            .and_then(|n| n.checked_add(len))
            .ok_or(too_small.clone())?;
        if needed > buffer.len() {
            return Err(too_small);
        }
        let (data_area, parity_area) = buffer.split_at_mut(offset + self.data_shards * stride);
        let mut data_refs: [&[u8]; MAX_BLOCK_SHARDS] = [&[]; MAX_BLOCK_SHARDS];
        for (r, chunk) in data_refs.iter_mut().zip(data_area[offset..].chunks(stride)) {
            *r = chunk.get(..len).ok_or(too_small.clone())?;
        }
        let mut parity_refs: [&mut [u8]; MAX_BLOCK_SHARDS] =
            std::array::from_fn(|_| Default::default());
        for (r, chunk) in parity_refs
            .iter_mut()
            .zip(parity_area.chunks_mut(stride))
            .take(self.parity_shards)
        {
            *r = chunk.get_mut(..len).ok_or(too_small.clone())?;
        }
        self.encode_refs(
            &data_refs[..self.data_shards],
            &mut parity_refs[..self.parity_shards],
        )
    }

    fn check_counts(&self, data: usize, parity: usize) -> Result<(), FecError> {
        if data != self.data_shards {
            return Err(FecError::DataShardCount {
                expected: self.data_shards,
                got: data,
            });
        }
        if parity != self.parity_shards {
            return Err(FecError::ParityShardCount {
                expected: self.parity_shards,
                got: parity,
            });
        }
        Ok(())
    }

    fn encode_refs(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), FecError> {
        self.check_counts(data.len(), parity.len())?;
        let expected = data.first().map_or(0, |s| s.len());
        let lengths = data
            .iter()
            .map(|s| s.len())
            .chain(parity.iter().map(|s| s.len()));
        if let Some((index, len)) = lengths.enumerate().find(|&(_, len)| len != expected) {
            return Err(FecError::ShardLength {
                index,
                len,
                expected,
            });
        }
        if expected == 0 {
            return Ok(());
        }
        kernel::run(self.kernel, &self.tables, data, parity)
    }
}

/// Encoders by shape, built on first use. A frame's block shape changes with the frame's size, so the
/// packetizer asks for an encoder per block; after the first frames every shape it meets is here and
/// asking costs a hash look-up, no allocation.
pub struct EncoderCache {
    kernel: Kernel,
    encoders: HashMap<(u8, u8), Encoder>,
}

impl EncoderCache {
    /// At most this many shapes are kept; past it the cache starts over (a bound, never reached with a
    /// fixed FEC percentage, where D alone decides P).
    pub const MAX_SHAPES: usize = 1024;

    /// A cache whose encoders use the fastest kernel this CPU supports.
    pub fn new() -> EncoderCache {
        EncoderCache {
            kernel: Kernel::best(),
            encoders: HashMap::new(),
        }
    }

    /// A cache whose encoders use `kernel`; fails if the CPU does not support it.
    pub fn with_kernel(kernel: Kernel) -> Result<EncoderCache, FecError> {
        if !kernel.is_supported() {
            return Err(FecError::KernelUnavailable(kernel));
        }
        Ok(EncoderCache {
            kernel,
            encoders: HashMap::new(),
        })
    }

    /// The encoder for D data and P parity shards.
    pub fn get(&mut self, data_shards: usize, parity_shards: usize) -> Result<&Encoder, FecError> {
        matrix::check_shape(data_shards, parity_shards)?;
        // Both fit in a byte after the shape check.
        let key = (data_shards as u8, parity_shards as u8);
        if !self.encoders.contains_key(&key) && self.encoders.len() >= Self::MAX_SHAPES {
            self.encoders.clear();
        }
        match self.encoders.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => Ok(e.insert(Encoder::with_kernel(
                data_shards,
                parity_shards,
                self.kernel,
            )?)),
        }
    }

    /// How many shapes are cached.
    pub fn len(&self) -> usize {
        self.encoders.len()
    }

    /// Whether no shape is cached yet.
    pub fn is_empty(&self) -> bool {
        self.encoders.is_empty()
    }
}

impl Default for EncoderCache {
    fn default() -> Self {
        EncoderCache::new()
    }
}
