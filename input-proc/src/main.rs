//! `lumen-input`: injects validated client input through libei and uinput. Until the input work lands it runs sandboxed and answers the broker; it injects nothing yet.

mod seccomp;

use std::process::ExitCode;

use lumen_ipc::worker;

fn main() -> ExitCode {
    let started = match worker::start(&seccomp::policy()) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("lumen-input: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = worker::serve(started.channel, "lumen-input", |msg, _fds| {
        Err(format!("unexpected message {msg:?}"))
    });
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}
