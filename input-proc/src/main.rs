//! `lumen-input`: injects validated client input through libei and uinput. Until the input work lands it runs sandboxed and answers the broker; it injects nothing yet.

mod seccomp;

fn main() -> std::process::ExitCode {
    lumen_ipc::worker::run(&seccomp::policy(), |msg, _fds| {
        Err(format!("unexpected message {msg:?}"))
    })
}
