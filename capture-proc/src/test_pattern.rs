//! The built-in video source: the moving test pattern of `lumen_core::pattern` at the session's
//! size and rate, NV12, each frame carrying its `seq` and capture time in its frame code.

use std::sync::Arc;
use std::thread::JoinHandle;

use lumen_core::pattern::{render_nv12, PatternError};
use lumen_ipc::media::{PixelFormat, Plane};
use lumen_ipc::ring::monotonic_ns;

use crate::session::{sleep_until, Pacer, Shared};
use crate::sink::VideoSink;

/// Renders one NV12 frame into a slot laid out as `planes` (the sink's layout).
fn render_into(
    slot: &mut [u8],
    planes: &[Plane],
    frame: u32,
    captured_us: u32,
    width: u32,
    height: u32,
) -> Result<(), PatternError> {
    let short = |needed: usize| PatternError::ShortPlane {
        plane: "slot",
        len: slot.len(),
        needed,
    };
    let [y_plane, uv_plane] = planes else {
        return Err(short(0));
    };
    let uv_offset = uv_plane.offset as usize;
    if uv_offset > slot.len() || (y_plane.offset as usize) > uv_offset {
        return Err(short(uv_offset));
    }
    let (head, uv) = slot.split_at_mut(uv_offset);
    let y = &mut head[y_plane.offset as usize..];
    render_nv12(
        frame,
        captured_us,
        width,
        height,
        y,
        y_plane.stride as usize,
        uv,
        uv_plane.stride as usize,
    )
}

/// One frame: rendered at the time it is captured, numbered with the sink's next `seq`.
/// `Ok(false)` when the frame was dropped (no free slot).
pub fn capture_frame(sink: &mut VideoSink, width: u32, height: u32) -> Result<bool, String> {
    let captured_ns = monotonic_ns();
    // The frame code holds 32 bits of each; the full values travel in the frame description.
    let frame = sink.next_seq() as u32;
    let captured_us = (captured_ns / 1000) as u32;
    let mut failure = None;
    let sent = sink
        .submit(
            PixelFormat::Nv12,
            width,
            height,
            captured_ns,
            |slot, planes| match render_into(slot, planes, frame, captured_us, width, height) {
                Ok(()) => true,
                Err(e) => {
                    failure = Some(e);
                    false
                }
            },
        )
        .map_err(|e| e.to_string())?;
    match failure {
        Some(e) => Err(format!("rendering the test pattern: {e}")),
        None => Ok(sent),
    }
}

/// Starts the pattern thread: a frame every 1/`fps` s on absolute CLOCK_MONOTONIC deadlines, until
/// the session stops or the sink fails (reported through `shared`).
pub fn spawn(
    mut sink: VideoSink,
    width: u32,
    height: u32,
    fps: u32,
    shared: Arc<Shared>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("test-pattern".into())
        .spawn(move || {
            let mut pacer = Pacer::new(monotonic_ns(), 1_000_000_000, u64::from(fps));
            loop {
                if !sleep_until(pacer.deadline(), &shared) {
                    return;
                }
                if let Err(e) = capture_frame(&mut sink, width, height) {
                    shared.fail(format!("test pattern: {e}"));
                    return;
                }
                pacer.advance(monotonic_ns());
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_core::pattern::read_code;
    use lumen_ipc::channel::Channel;
    use lumen_ipc::frame_pool::{create_pool, read_only_fd, FramePool};
    use lumen_ipc::media::{CaptureToEncode, FramePoolSpec};
    use std::os::fd::AsFd;

    #[test]
    fn frames_carry_their_seq_and_capture_time_in_the_code() {
        let (w, h) = (640u32, 360u32);
        let spec = FramePoolSpec {
            slots: 3,
            slot_bytes: lumen_ipc::frame_pool::round_slot_bytes(u64::from(w * h) * 2),
        };
        let memfd = create_pool("pattern", &spec).unwrap();
        let reader = FramePool::map(read_only_fd(memfd.as_fd()).unwrap(), spec, false).unwrap();
        let (capture, mut encode) = Channel::pair().unwrap();
        let counters = Arc::new(crate::sink::Counters::default());
        let mut sink = VideoSink::new(
            FramePool::map(memfd, spec, true).unwrap(),
            capture,
            counters,
        );
        for expected_seq in 0..3u64 {
            assert!(capture_frame(&mut sink, w, h).unwrap());
            let CaptureToEncode::Frame(desc) = encode.try_recv().unwrap().unwrap().msg;
            assert_eq!(desc.seq, expected_seq);
            desc.check(&spec).unwrap();
            let stride = desc.planes[0].stride as usize;
            let mut luma = vec![0u8; stride * h as usize];
            assert!(reader.copy_out(desc.slot, desc.planes[0].offset as usize, &mut luma));
            let code = read_code(&luma, stride, w, h).expect("frame code readable");
            assert_eq!(u64::from(code.frame), desc.seq);
            assert_eq!(code.captured_us, (desc.captured_ns / 1000) as u32);
        }
        // All three slots are encode's: the next frame is dropped, and its seq skipped.
        assert!(!capture_frame(&mut sink, w, h).unwrap());
        assert_eq!(sink.next_seq(), 4);
    }
}
