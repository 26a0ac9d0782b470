//! The test pattern and its frame code: round trips at the sizes sessions use, noise tolerance,
//! refusal of corrupted codes, and motion between frames.

use lumen_core::pattern::{block_size, code_area, read_code, render_nv12, FrameCode, PatternError};

struct Picture {
    width: u32,
    height: u32,
    y: Vec<u8>,
    y_stride: usize,
    uv: Vec<u8>,
    uv_stride: usize,
}

impl Picture {
    /// A picture with padded strides (as frame slots have), filled with junk to catch unpainted bytes.
    fn new(width: u32, height: u32) -> Picture {
        let y_stride = (width as usize).next_multiple_of(64) + 64;
        let uv_stride = (width as usize).div_ceil(2) * 2 + 32;
        Picture {
            width,
            height,
            y: vec![0xA5; y_stride * height as usize],
            y_stride,
            uv: vec![0x5A; uv_stride * (height as usize).div_ceil(2)],
            uv_stride,
        }
    }

    fn render(&mut self, frame: u32, captured_us: u32) {
        render_nv12(
            frame,
            captured_us,
            self.width,
            self.height,
            &mut self.y,
            self.y_stride,
            &mut self.uv,
            self.uv_stride,
        )
        .unwrap();
    }

    fn read(&self) -> Option<FrameCode> {
        read_code(&self.y, self.y_stride, self.width, self.height)
    }
}

const SIZES: [(u32, u32); 5] = [(640, 360), (960, 540), (1280, 720), (1920, 1080), (176, 80)];

/// xorshift64: deterministic noise without a dependency.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in -40..=40.
    fn grey(&mut self) -> i32 {
        (self.next() % 81) as i32 - 40
    }
}

#[test]
fn code_round_trips_at_session_sizes() {
    for (w, h) in SIZES {
        let mut picture = Picture::new(w, h);
        for (frame, us) in [
            (0, 0),
            (1, 16_667),
            (0xFFFF_FFFF, 0xFFFF_FFFF),
            (123_456, 0x8000_0001),
        ] {
            picture.render(frame, us);
            assert_eq!(
                picture.read(),
                Some(FrameCode {
                    frame,
                    captured_us: us
                }),
                "{w}x{h} frame {frame}"
            );
        }
    }
}

#[test]
fn code_reads_through_noise() {
    let mut noise = Noise(0x1234_5678_9abc_def1);
    for (w, h) in SIZES {
        let mut picture = Picture::new(w, h);
        for frame in [7u32, 1000, 0xABCD_EF01] {
            picture.render(frame, frame.wrapping_mul(16_667));
            for p in picture.y.iter_mut() {
                *p = (i32::from(*p) + noise.grey()).clamp(0, 255) as u8;
            }
            assert_eq!(
                picture.read().map(|c| c.frame),
                Some(frame),
                "{w}x{h} frame {frame}"
            );
        }
    }
}

/// Paints block `index` (0..84, row-major over the two code rows) with `luma`.
fn paint_block(picture: &mut Picture, index: u32, luma: u8) {
    let b = block_size(picture.width, picture.height).unwrap() as usize;
    let (row, col) = ((index / 42) as usize, (index % 42) as usize);
    let (x0, y0) = ((col + 1) * b, (row + 1) * b);
    for r in y0..y0 + b {
        picture.y[r * picture.y_stride + x0..r * picture.y_stride + x0 + b].fill(luma);
    }
}

#[test]
fn any_flipped_block_is_refused() {
    let (w, h) = (640, 360);
    let mut picture = Picture::new(w, h);
    picture.render(0x0F0F_1234, 987_654_321);
    let clean = picture.y.clone();
    let b = block_size(w, h).unwrap() as usize;
    for index in 0..84 {
        picture.y.copy_from_slice(&clean);
        let (row, col) = ((index / 42) as usize, (index % 42) as usize);
        let centre = ((row + 1) * b + b / 2) * picture.y_stride + (col + 1) * b + b / 2;
        let flipped = if picture.y[centre] > 128 { 16 } else { 235 };
        paint_block(&mut picture, index, flipped);
        assert_eq!(picture.read(), None, "block {index} flipped");
    }
}

#[test]
fn grey_block_is_refused() {
    let mut picture = Picture::new(1280, 720);
    picture.render(5, 5);
    paint_block(&mut picture, 20, 128);
    assert_eq!(picture.read(), None);
}

#[test]
fn pictures_without_a_code_read_as_none() {
    let (w, h) = (640, 360);
    let stride = w as usize;
    for fill in [0u8, 16, 128, 235, 255] {
        assert_eq!(
            read_code(&vec![fill; stride * h as usize], stride, w, h),
            None
        );
    }
    let mut noise = Noise(99);
    let random: Vec<u8> = (0..stride * h as usize)
        .map(|_| noise.next() as u8)
        .collect();
    assert_eq!(read_code(&random, stride, w, h), None);
    // Too short a plane, too short a stride, too small a picture: None, no panic.
    assert_eq!(read_code(&random[..1000], stride, w, h), None);
    assert_eq!(read_code(&random, 100, w, h), None);
    assert_eq!(read_code(&random, stride, 100, 60), None);
}

#[test]
fn the_picture_moves() {
    let (w, h) = (640, 360);
    let (_, code_h) = code_area(w, h).unwrap();
    let mut a = Picture::new(w, h);
    let mut b = Picture::new(w, h);
    a.render(10, 0);
    b.render(11, 0);
    let below_code = code_h as usize * a.y_stride;
    let luma_changed = a.y[below_code..]
        .iter()
        .zip(&b.y[below_code..])
        .filter(|(x, y)| x != y)
        .count();
    assert!(
        luma_changed > (w * h / 20) as usize,
        "{luma_changed} luma bytes changed"
    );
    assert_ne!(a.uv, b.uv);
    // The top and bottom halves move too, not only the box.
    let row = |p: &Picture, r: usize| p.y[r * p.y_stride..r * p.y_stride + w as usize].to_vec();
    assert_ne!(row(&a, h as usize / 2 - 2), row(&b, h as usize / 2 - 2));
    assert_ne!(row(&a, h as usize - 1), row(&b, h as usize - 1));
}

#[test]
fn every_byte_of_both_planes_is_painted() {
    for (w, h) in [(640, 360), (642, 362), (1920, 1080), (64, 64), (2, 2)] {
        let mut picture = Picture::new(w, h);
        // Junk 0xA5/0x5A is not a value the pattern paints at these frames.
        picture.render(3, 0);
        for r in 0..h as usize {
            let row = &picture.y[r * picture.y_stride..r * picture.y_stride + w as usize];
            assert!(!row.contains(&0xA5), "{w}x{h} luma row {r}");
        }
        for r in 0..(h as usize).div_ceil(2) {
            let start = r * picture.uv_stride;
            let row = &picture.uv[start..start + (w as usize).div_ceil(2) * 2];
            assert!(!row.contains(&0x5A), "{w}x{h} chroma row {r}");
        }
    }
}

#[test]
fn short_buffers_are_errors_not_panics() {
    let (w, h) = (640u32, 360u32);
    let mut y = vec![0u8; (w * h) as usize];
    let mut uv = vec![0u8; (w * h / 2) as usize];
    assert!(matches!(
        render_nv12(0, 0, w, h, &mut y[..1000], w as usize, &mut uv, w as usize),
        Err(PatternError::ShortPlane { .. })
    ));
    assert!(matches!(
        render_nv12(0, 0, w, h, &mut y, w as usize, &mut uv[..100], w as usize),
        Err(PatternError::ShortPlane { .. })
    ));
    assert!(matches!(
        render_nv12(0, 0, w, h, &mut y, 10, &mut uv, w as usize),
        Err(PatternError::ShortStride { .. })
    ));
    assert!(matches!(
        render_nv12(0, 0, 0, h, &mut y, w as usize, &mut uv, w as usize),
        Err(PatternError::BadSize { .. })
    ));
    assert!(render_nv12(0, 0, w, h, &mut y, w as usize, &mut uv, w as usize).is_ok());
}

/// Rendering must keep up with 240 fps at 1080p with room to spare; generous bound for debug
/// builds on a loaded machine, the release figure is in the report of the change.
#[test]
fn renders_1080p_quickly() {
    let mut picture = Picture::new(1920, 1080);
    let start = std::time::Instant::now();
    for frame in 0..10 {
        picture.render(frame, 0);
    }
    let per_frame = start.elapsed() / 10;
    eprintln!("{per_frame:?} per 1080p NV12 frame");
    let bound = if cfg!(debug_assertions) { 100 } else { 10 };
    assert!(
        per_frame < std::time::Duration::from_millis(bound),
        "{per_frame:?} per 1080p frame"
    );
}
