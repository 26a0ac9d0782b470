//! `lumen-capture`: captures the screen (test pattern or PipeWire) into frame slots for `lumen-encode`. Until the media pipeline lands it runs sandboxed and answers the broker; it captures nothing yet.

mod seccomp;
#[allow(dead_code)]
mod sink;

fn main() -> std::process::ExitCode {
    lumen_ipc::worker::run(&seccomp::policy(), |msg, _fds| {
        Err(format!("unexpected message {msg:?}"))
    })
}
