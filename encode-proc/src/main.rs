//! `lumen-encode`: encodes frames from `lumen-capture` into the bitstream ring. Until the media pipeline lands it runs sandboxed and answers the broker; it encodes nothing yet.

mod seccomp;

use std::process::ExitCode;

use lumen_ipc::worker;

fn main() -> ExitCode {
    let started = match worker::start(&seccomp::policy()) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("lumen-encode: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = worker::serve(started.channel, "lumen-encode", |msg, _fds| {
        Err(format!("unexpected message {msg:?}"))
    });
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}
