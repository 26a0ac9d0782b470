//! `lumen-encode`: encodes frames from `lumen-capture` into the bitstream ring. Until the media pipeline lands it runs sandboxed and answers the broker; it encodes nothing yet.

mod seccomp;

fn main() -> std::process::ExitCode {
    lumen_ipc::worker::run(&seccomp::policy(), |msg, _fds| {
        Err(format!("unexpected message {msg:?}"))
    })
}
