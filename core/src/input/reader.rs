//! A bounds-checked cursor over one packet body, with the mixed byte orders §8 uses.

use super::DecodeError;

pub(super) struct Body<'a> {
    kind: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Body<'a> {
    /// A body of a fixed-size kind: exactly `len` bytes, or [`DecodeError::BodyLength`].
    pub(super) fn exact(
        kind: &'static str,
        buf: &'a [u8],
        len: usize,
    ) -> Result<Self, DecodeError> {
        if buf.len() != len {
            return Err(DecodeError::BodyLength {
                kind,
                expected: len,
                actual: buf.len(),
            });
        }
        Ok(Body { kind, buf, pos: 0 })
    }

    pub(super) fn kind(&self) -> &'static str {
        self.kind
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self
            .pos
            .checked_add(N)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or(DecodeError::BodyLength {
                kind: self.kind,
                expected: self.pos.saturating_add(N),
                actual: self.buf.len(),
            })?;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        self.pos += N;
        Ok(out)
    }

    pub(super) fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        for _ in 0..n {
            self.u8()?;
        }
        Ok(())
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub(super) fn u16le(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_le_bytes)
    }

    pub(super) fn i16le(&mut self) -> Result<i16, DecodeError> {
        self.array().map(i16::from_le_bytes)
    }

    pub(super) fn i16be(&mut self) -> Result<i16, DecodeError> {
        self.array().map(i16::from_be_bytes)
    }

    pub(super) fn u32le(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }

    /// moonlight-common-c's "netfloat": an IEEE-754 single in little-endian byte order.
    pub(super) fn f32le(&mut self) -> Result<f32, DecodeError> {
        self.array().map(f32::from_le_bytes)
    }
}
