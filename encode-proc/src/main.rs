//! `lumen-encode`: encodes frames from `lumen-capture` into the video ring (H.264 / HEVC / AV1
//! through FFmpeg) and PCM into Opus packets in the audio ring.

mod annexb;
mod audio;
mod capabilities;
mod control;
mod cuda_pool;
mod scale;
mod seccomp;
mod session;
mod video;

#[cfg(test)]
mod tests;

use ffmpeg_next as ffmpeg;
use lumen_ipc::msg::WorkerMsg;

/// What `prepare` found out: the video encoders that open here and the audio layouts Opus takes.
struct Prepared {
    video: video::Probe,
    audio_layouts: Vec<lumen_ipc::media::AudioLayout>,
}

/// Before lock-down: load FFmpeg and the codec libraries and find out which encoders open here, by
/// opening each once (x264/x265/SVT-AV1 read CPU and NUMA details from /proc and /sys while they
/// can, NVENC would load libcuda), and run Opus (every layout) and swscale once each.
fn prepare() -> Result<Prepared, String> {
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
    let audio_layouts = capabilities::probe_audio()?;
    scale::warm_up().map_err(|e| format!("swscale: {e}"))?;
    Ok(Prepared {
        video: probe,
        audio_layouts,
    })
}

fn main() -> std::process::ExitCode {
    lumen_ipc::worker::run_prepared(&seccomp::policy(), prepare, |prepared, reports| {
        // Right after Ready, before any session: the broker tells lumen-net what DESCRIBE may
        // offer and refuses streams that ask for anything else.
        let capabilities = capabilities::report(&prepared.video, &prepared.audio_layouts);
        if let Err(e) = reports.send(&WorkerMsg::EncoderCapabilities(capabilities), &[]) {
            eprintln!("lumen-encode: reporting the encoder's capabilities: {e}");
        }
        let mut handler = session::Handler::new(prepared.video, reports);
        move |msg, fds| handler.handle(msg, fds)
    })
}
