//! The test picture capture sends when no real screen is captured: scrolling colour bars and a
//! bouncing box (so encoders have motion to code), plus a machine-readable FRAME CODE in the
//! top-left corner that survives lossy encoding, so a test at the far end of the pipeline can tell
//! which captured frame it decoded and when it was captured.
//!
//! # The frame code
//!
//! 84 black/white square blocks in two rows of 42, inside a mid-grey quiet zone one block wide on
//! every side (44 × 4 blocks in all, starting at pixel (0, 0)). Bits, most significant first, left
//! to right, first row then second:
//!
//! | bits | content |
//! |------|---------|
//! | 2    | marker `1 0` |
//! | 32   | frame number |
//! | 32   | capture time, CLOCK_MONOTONIC microseconds, wrapping at 2^32 |
//! | 16   | CRC-16/CCITT-FALSE of the 8 bytes frame (BE) ‖ capture time (BE) |
//! | 2    | marker `0 1` |
//!
//! White (luma 235) is 1, black (luma 16) is 0. The block size depends on the picture size alone
//! ([`block_size`]), so a reader needs nothing but the decoded picture. The reader takes the mean
//! luma of the inner half of each block, so ringing at block edges does not count, and refuses a
//! block whose mean lies too close to mid-grey; the markers and the CRC turn any misread into
//! `None`, never a wrong number.
//!
//! Rendering uses row fills and row copies only: a 1920×1080 NV12 frame is a few memcpy's worth.

/// Luma of a 0 bit (video-range black).
pub const BLACK: u8 = 16;
/// Luma of a 1 bit (video-range white).
pub const WHITE: u8 = 235;
/// Luma of the quiet zone around the code.
const QUIET: u8 = 128;
/// The reader's threshold: halfway between [`BLACK`] and [`WHITE`].
const THRESHOLD: u32 = (BLACK as u32 + WHITE as u32) / 2;
/// A block whose inner mean is closer than this to [`THRESHOLD`] is unreadable.
const MARGIN: u32 = 16;

/// Code blocks per row, markers included.
const CODE_COLUMNS: u32 = 42;
/// Rows of code blocks.
const CODE_ROWS: u32 = 2;
/// Blocks of the whole code area across (quiet zone included).
pub const AREA_BLOCKS_X: u32 = CODE_COLUMNS + 2;
/// Blocks of the whole code area down (quiet zone included).
pub const AREA_BLOCKS_Y: u32 = CODE_ROWS + 2;
/// Bits in the code, markers included.
const CODE_BITS: usize = (CODE_COLUMNS * CODE_ROWS) as usize;
/// Smallest block edge in pixels.
pub const MIN_BLOCK: u32 = 4;

/// What a frame code carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCode {
    /// Capture's frame counter (wrapping at 2^32).
    pub frame: u32,
    /// CLOCK_MONOTONIC microseconds at capture, wrapping at 2^32 (about 71 minutes).
    pub captured_us: u32,
}

/// Why a picture could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("{width}x{height} is not a picture size the pattern draws")]
    BadSize { width: u32, height: u32 },
    #[error("{plane} plane: stride {stride} is shorter than a row of {row} bytes")]
    ShortStride {
        plane: &'static str,
        stride: usize,
        row: usize,
    },
    #[error("{plane} plane: {len} bytes do not hold {needed}")]
    ShortPlane {
        plane: &'static str,
        len: usize,
        needed: usize,
    },
}

/// Edge of one code block in pixels for a `width`×`height` picture, or `None` when the code area
/// ([`AREA_BLOCKS_X`] × [`AREA_BLOCKS_Y`] blocks) does not fit. Even, so 4:2:0 chroma samples never
/// straddle two blocks. 14 px at 640×360, 20 at 960×540, 28 at 1280×720, 42 at 1920×1080.
pub fn block_size(width: u32, height: u32) -> Option<u32> {
    let b = (height / 20).min(width / AREA_BLOCKS_X).max(MIN_BLOCK) & !1;
    (b * AREA_BLOCKS_X <= width && b * AREA_BLOCKS_Y <= height).then_some(b)
}

/// Width and height in pixels of the code area (quiet zone included) at the top-left corner.
pub fn code_area(width: u32, height: u32) -> Option<(u32, u32)> {
    block_size(width, height).map(|b| (b * AREA_BLOCKS_X, b * AREA_BLOCKS_Y))
}

/// CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no reflection, no final xor).
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn code_bits(code: FrameCode) -> [bool; CODE_BITS] {
    let crc = crc16(&payload(code));
    let mut bits = [false; CODE_BITS];
    bits[0] = true;
    let mut i = 2;
    for (value, width) in [
        (u64::from(code.frame), 32),
        (u64::from(code.captured_us), 32),
        (u64::from(crc), 16),
    ] {
        for k in (0..width).rev() {
            bits[i] = (value >> k) & 1 == 1;
            i += 1;
        }
    }
    bits[CODE_BITS - 1] = true;
    bits
}

fn decode_bits(bits: &[bool; CODE_BITS]) -> Option<FrameCode> {
    let markers = [bits[0], bits[1], bits[CODE_BITS - 2], bits[CODE_BITS - 1]];
    if markers != [true, false, false, true] {
        return None;
    }
    let field = |start: usize, width: usize| {
        bits[start..start + width]
            .iter()
            .fold(0u64, |acc, &bit| (acc << 1) | u64::from(bit))
    };
    let frame = field(2, 32) as u32;
    let captured_us = field(34, 32) as u32;
    let crc = field(66, 16) as u16;
    let code = FrameCode { frame, captured_us };
    (crc16(&payload(code)) == crc).then_some(code)
}

fn payload(code: FrameCode) -> [u8; 8] {
    let mut payload = [0u8; 8];
    payload[..4].copy_from_slice(&code.frame.to_be_bytes());
    payload[4..].copy_from_slice(&code.captured_us.to_be_bytes());
    payload
}

/// Bytes a plane of `rows` rows of `row` bytes needs at `stride`.
fn plane_len(rows: usize, row: usize, stride: usize) -> usize {
    if rows == 0 {
        0
    } else {
        (rows - 1) * stride + row
    }
}

fn check_plane(
    plane: &'static str,
    len: usize,
    rows: usize,
    row: usize,
    stride: usize,
) -> Result<(), PatternError> {
    if stride < row {
        return Err(PatternError::ShortStride { plane, stride, row });
    }
    let needed = plane_len(rows, row, stride);
    if len < needed {
        return Err(PatternError::ShortPlane { plane, len, needed });
    }
    Ok(())
}

/// 75 % colour bars, video range BT.709: (Y, U, V).
const BARS: [(u8, u8, u8); 8] = [
    (180, 128, 128),
    (168, 44, 136),
    (145, 147, 44),
    (133, 63, 52),
    (63, 193, 204),
    (51, 109, 212),
    (28, 212, 120),
    (16, 128, 128),
];

/// Pixels the bars move per frame (even, so chroma moves by whole samples).
const BAR_SPEED: u32 = 4;

/// Position along `range` of something bouncing between 0 and `range` at `t`, rounded down to even.
fn bounce(t: u64, range: u32) -> u32 {
    if range == 0 {
        return 0;
    }
    let range = u64::from(range);
    let p = t % (2 * range);
    let pos = if p < range { p } else { 2 * range - p };
    (pos as u32) & !1
}

/// Fills one luma row and one interleaved chroma row with the bars scrolled by `offset` pixels
/// (even). `uv_row` holds `width.div_ceil(2)` U/V pairs.
fn bar_rows(width: usize, bar: usize, offset: usize, y_row: &mut [u8], uv_row: &mut [u8]) {
    let mut x = 0;
    let mut index = offset / bar;
    let mut left = bar - offset % bar;
    while x < width {
        let n = left.min(width - x);
        let (y, u, v) = BARS[index % BARS.len()];
        y_row[x..x + n].fill(y);
        // Bar edges are even, so each segment covers whole chroma samples (the last may be odd).
        let cx = x / 2;
        let cn = (x + n).div_ceil(2) - cx;
        for pair in uv_row[2 * cx..2 * (cx + cn)].chunks_exact_mut(2) {
            pair[0] = u;
            pair[1] = v;
        }
        x += n;
        index += 1;
        left = bar;
    }
}

/// Copies row `src` of a plane into rows `rows` (same plane).
fn copy_row(
    plane: &mut [u8],
    stride: usize,
    row_len: usize,
    src: usize,
    rows: std::ops::Range<usize>,
) {
    let from = src * stride;
    for r in rows {
        if r != src {
            plane.copy_within(from..from + row_len, r * stride);
        }
    }
}

/// Fills a rectangle of a plane with `value` (bytes, rows).
fn fill_rect(
    plane: &mut [u8],
    stride: usize,
    x: usize,
    len: usize,
    rows: std::ops::Range<usize>,
    value: u8,
) {
    for r in rows {
        plane[r * stride + x..r * stride + x + len].fill(value);
    }
}

/// Fills a rectangle of an interleaved chroma plane with one (U, V) pair; `x` and `len` in samples.
fn fill_uv_rect(
    plane: &mut [u8],
    stride: usize,
    x: usize,
    len: usize,
    rows: std::ops::Range<usize>,
    (u, v): (u8, u8),
) {
    let Some(first) = rows.clone().next() else {
        return;
    };
    let start = first * stride + 2 * x;
    for pair in plane[start..start + 2 * len].chunks_exact_mut(2) {
        pair[0] = u;
        pair[1] = v;
    }
    for r in rows.skip(1) {
        plane.copy_within(start..start + 2 * len, r * stride + 2 * x);
    }
}

/// Draws the code for `code` (with its quiet zone) into a luma plane; `b` from [`block_size`].
fn draw_code(luma: &mut [u8], stride: usize, b: usize, code: FrameCode) {
    let area_w = b * AREA_BLOCKS_X as usize;
    fill_rect(luma, stride, 0, area_w, 0..b, QUIET);
    fill_rect(luma, stride, 0, area_w, b * 3..b * 4, QUIET);
    let bits = code_bits(code);
    for row in 0..CODE_ROWS as usize {
        let y0 = (row + 1) * b;
        // Build the first pixel row of this block row, then copy it down the block.
        let line = y0 * stride;
        luma[line..line + b].fill(QUIET);
        for col in 0..CODE_COLUMNS as usize {
            let value = if bits[row * CODE_COLUMNS as usize + col] {
                WHITE
            } else {
                BLACK
            };
            let x = (col + 1) * b;
            luma[line + x..line + x + b].fill(value);
        }
        luma[line + area_w - b..line + area_w].fill(QUIET);
        copy_row(luma, stride, area_w, y0, y0..y0 + b);
    }
}

/// Renders frame `frame` of the test pattern, with the frame code for (`frame`, `captured_us`),
/// into an NV12 picture: `y` holds `height` rows of `width` luma bytes `y_stride` apart, `uv`
/// `height.div_ceil(2)` rows of `width.div_ceil(2)` U/V pairs `uv_stride` apart. Pictures too
/// small for the code (see [`block_size`]) get the moving picture only.
#[allow(clippy::too_many_arguments)]
pub fn render_nv12(
    frame: u32,
    captured_us: u32,
    width: u32,
    height: u32,
    y: &mut [u8],
    y_stride: usize,
    uv: &mut [u8],
    uv_stride: usize,
) -> Result<(), PatternError> {
    if width < 2 || height < 2 || width > 16384 || height > 16384 {
        return Err(PatternError::BadSize { width, height });
    }
    let (w, h) = (width as usize, height as usize);
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    check_plane("Y", y.len(), h, w, y_stride)?;
    check_plane("UV", uv.len(), ch, 2 * cw, uv_stride)?;

    // Bars: the top half scrolls left, the bottom half right, each from one template row.
    let bar = ((w / BARS.len()).max(2)) & !1;
    let period = bar * BARS.len();
    let offset = (frame as usize * BAR_SPEED as usize) % period;
    let halves = [
        (0, ch / 2, offset),
        (ch / 2, ch, (period - offset) % period),
    ];
    for (c0, c1, off) in halves {
        if c0 == c1 {
            continue;
        }
        let (y0, y1) = (2 * c0, (2 * c1).min(h));
        let (yr, uvr) = (y0 * y_stride, c0 * uv_stride);
        bar_rows(w, bar, off, &mut y[yr..yr + w], &mut uv[uvr..uvr + 2 * cw]);
        copy_row(y, y_stride, w, y0, y0..y1);
        copy_row(uv, uv_stride, 2 * cw, c0, c0..c1);
    }

    // A box bouncing around, its colour cycling, so there is motion in both directions.
    let side = ((h / 4).max(2) & !1).min(w & !1);
    let bx = bounce(u64::from(frame) * 6, (w - side) as u32) as usize;
    let by = bounce(u64::from(frame) * 4, (h - side) as u32) as usize;
    let luma = 40 + (frame % 180) as u8;
    let chroma = (
        64 + ((frame.wrapping_mul(3)) % 128) as u8,
        192 - ((frame.wrapping_mul(5)) % 128) as u8,
    );
    fill_rect(y, y_stride, bx, side, by..by + side, luma);
    fill_uv_rect(
        uv,
        uv_stride,
        bx / 2,
        side / 2,
        by / 2..(by + side) / 2,
        chroma,
    );

    if let Some(b) = block_size(width, height) {
        let b = b as usize;
        draw_code(y, y_stride, b, FrameCode { frame, captured_us });
        let (aw, ah) = (b * AREA_BLOCKS_X as usize, b * AREA_BLOCKS_Y as usize);
        fill_uv_rect(uv, uv_stride, 0, aw / 2, 0..ah / 2, (128, 128));
    }
    Ok(())
}

/// Mean of the inner half of the block whose top-left pixel is (`x0`, `y0`).
fn block_mean(luma: &[u8], stride: usize, x0: usize, y0: usize, b: usize) -> u32 {
    let (inner_x, inner_y, n) = (x0 + b / 4, y0 + b / 4, b / 2);
    let mut sum: u32 = 0;
    for r in inner_y..inner_y + n {
        let start = r * stride + inner_x;
        sum += luma[start..start + n]
            .iter()
            .map(|&p| u32::from(p))
            .sum::<u32>();
    }
    sum / (n * n) as u32
}

/// Reads the frame code from a decoded luma plane of a `width`×`height` picture (`luma` holds
/// rows `stride` bytes apart; only the code area at the top-left is read). `None` when the picture
/// is too small for a code, the plane is shorter than the code area, any block is too close to
/// mid-grey, a marker is wrong or the CRC does not match: a misread is refused, never returned.
pub fn read_code(luma: &[u8], stride: usize, width: u32, height: u32) -> Option<FrameCode> {
    let b = block_size(width, height)? as usize;
    let (aw, ah) = (b * AREA_BLOCKS_X as usize, b * AREA_BLOCKS_Y as usize);
    if stride < aw || luma.len() < plane_len(ah, aw, stride) {
        return None;
    }
    let mut bits = [false; CODE_BITS];
    for (i, bit) in bits.iter_mut().enumerate() {
        let (row, col) = (i / CODE_COLUMNS as usize, i % CODE_COLUMNS as usize);
        let mean = block_mean(luma, stride, (col + 1) * b, (row + 1) * b, b);
        *bit = if mean >= THRESHOLD + MARGIN {
            true
        } else if mean + MARGIN <= THRESHOLD {
            false
        } else {
            return None;
        };
    }
    decode_bits(&bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_ccitt_false_check_value() {
        assert_eq!(crc16(b"123456789"), 0x29B1);
    }

    #[test]
    fn bits_round_trip() {
        let code = FrameCode {
            frame: 0xDEAD_BEEF,
            captured_us: 0x0123_4567,
        };
        assert_eq!(decode_bits(&code_bits(code)), Some(code));
    }

    #[test]
    fn block_sizes() {
        assert_eq!(block_size(640, 360), Some(14));
        assert_eq!(block_size(960, 540), Some(20));
        assert_eq!(block_size(1280, 720), Some(28));
        assert_eq!(block_size(1920, 1080), Some(42));
        assert_eq!(block_size(175, 400), None);
        assert_eq!(block_size(176, 80), Some(4));
    }
}
