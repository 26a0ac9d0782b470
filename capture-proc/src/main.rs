//! `lumen-capture`: captures the screen (test pattern or PipeWire) into frame slots for `lumen-encode`. Until the media pipeline lands it runs sandboxed and answers the broker; it captures nothing yet.

mod seccomp;

use std::process::ExitCode;

use lumen_ipc::worker;

fn main() -> ExitCode {
    let started = match worker::start(&seccomp::policy()) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("lumen-capture: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = worker::serve(started.channel, "lumen-capture", |msg, _fds| {
        Err(format!("unexpected message {msg:?}"))
    });
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}
