//! `lumen-encode`: encodes frames from `lumen-capture` into the video ring (H.264 / HEVC / AV1
//! through FFmpeg) and PCM into Opus packets in the audio ring.

mod annexb;
mod audio;
mod control;
mod cuda_pool;
mod scale;
mod seccomp;
mod session;
mod video;

#[cfg(test)]
mod tests;

use ffmpeg_next as ffmpeg;

/// Before lock-down: load FFmpeg and the codec libraries and find out which encoders open here, by
/// opening each once (x264/x265/SVT-AV1 read CPU and NUMA details from /proc and /sys while they
/// can, NVENC would load libcuda), and run Opus and swscale once each.
fn prepare() -> Result<video::Probe, String> {
    // SVT-AV1 logs its configuration at info level on every open; errors only (it reads this
    // when an encoder is created; prepare still runs single-threaded).
    if std::env::var_os("SVT_LOG").is_none() {
        std::env::set_var("SVT_LOG", "1");
    }
    ffmpeg::init().map_err(|e| format!("FFmpeg: {e}"))?;
    ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
    // The CUDA context must exist before lock-down (the driver opens /dev/nvidia* at init).
    let _ = cuda_pool::prepare();
    let probe = video::Probe::run();
    for (backend, why) in &probe.unusable {
        eprintln!("lumen-encode: {} unavailable: {why}", backend.name());
    }
    for layout in [
        lumen_ipc::media::AudioLayout::Stereo,
        lumen_ipc::media::AudioLayout::Surround51,
        lumen_ipc::media::AudioLayout::Surround71,
    ] {
        let mut enc = audio::OpusEncoder::new(layout, 5).map_err(|e| format!("Opus: {e}"))?;
        let silence = vec![0f32; enc.samples_per_packet() * usize::from(enc.layout().channels)];
        enc.encode(&silence).map_err(|e| format!("Opus: {e}"))?;
    }
    scale::warm_up().map_err(|e| format!("swscale: {e}"))?;
    Ok(probe)
}

fn main() -> std::process::ExitCode {
    lumen_ipc::worker::run_prepared(&seccomp::policy(), prepare, |probe, reports| {
        let mut handler = session::Handler::new(probe, reports);
        move |msg, fds| handler.handle(msg, fds)
    })
}
