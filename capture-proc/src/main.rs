//! `lumen-capture`: captures pictures and sound for a session (the built-in test pattern and tone,
//! or PipeWire) into the broker's frame pool and PCM ring, for `lumen-encode`.

mod nvidia;
mod pipewire;
mod seccomp;
mod session;
mod sink;
mod test_pattern;
mod tone;

fn main() -> std::process::ExitCode {
    let prepare = || {
        // The driver opens /dev/nvidia* and loads its EGL libraries when it initialises: only
        // possible before lock-down.
        let _ = nvidia::prepare_once();
        session::prepare()
    };
    lumen_ipc::worker::run_prepared(&seccomp::policy(), prepare, |prepared, reports| {
        let mut worker = session::Worker::new(prepared, reports);
        move |msg, fds| worker.handle(msg, fds)
    })
}
