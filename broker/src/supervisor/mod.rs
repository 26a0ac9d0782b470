//! Worker supervision: start every worker, watch it, reap it, restart it, stop it.
//!
//! One tokio task per worker slot ([`slot`]) spawns the worker ([`crate::spawn`]), waits for its
//! `Ready`, hands `lumen-net` its LAN sockets, then watches the control channel and the pidfd.
//! Every exit is reaped by the one reaping routine ([`reaper`]), run on `SIGCHLD` and on pidfd
//! readiness. A dead worker is restarted with exponential backoff ([`backoff`]); a crash loop is
//! reported and retried only at the maximum delay. Worker output is logged under the worker's name
//! ([`output`]).
//!
//! The broker trusts no worker: a malformed message, a second `Ready`, a `Ready` of the wrong
//! kind, unexpected fds or a closed channel get the worker killed and restarted, and what
//! `status()` reports about confinement is read from `/proc` by the broker itself
//! ([`crate::procstatus`]).

pub(crate) mod backoff;
mod flood;
pub(crate) mod output;
pub(crate) mod reaper;
mod slot;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use std::os::fd::OwnedFd;

use lumen_ipc::msg::{BrokerMsg, SandboxReport, WorkerKind};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::sockets::LanSockets;
use crate::spawn::WorkerCommand;
use backoff::RestartPolicy;
pub(crate) use slot::WorkerEvent;
use slot::{Outgoing, Slot, SlotShared};

/// How the broker runs its workers.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// The directory holding `lumen-net` etc. (next to `lumen-broker`).
    pub worker_dir: PathBuf,
    /// Passed to workers as `msg::ALLOW_MISSING_SECCOMP_FLAG`.
    pub allow_missing_seccomp: bool,
    /// Passed to workers as `msg::ALLOW_MISSING_LANDLOCK_FLAG`.
    pub allow_missing_landlock: bool,
    /// The uid/gid workers switch to before exec; `Some` when the broker is root.
    pub worker_uid: Option<(u32, u32)>,
}

/// A worker never runs as uid 0 on the host: a root broker must name an unprivileged uid and gid.
fn check_worker_credentials(
    worker_uid: Option<(u32, u32)>,
    broker_is_root: bool,
) -> anyhow::Result<()> {
    match worker_uid {
        Some((0, _)) | Some((_, 0)) => {
            bail!("worker_uid: workers must not run with uid or gid 0")
        }
        None if broker_is_root => bail!(
            "the broker runs as root but no unprivileged worker_uid is configured; refusing to run workers as root"
        ),
        _ => Ok(()),
    }
}

/// A worker's state, as `status` shows it.
#[derive(Serialize, Clone, Debug)]
pub struct WorkerStatus {
    pub kind: WorkerKind,
    pub pid: Option<u32>,
    /// "starting" | "running" | "backoff" | "failing" | "stopped".
    pub state: String,
    /// How often the worker died and was (or will be) started again.
    pub restarts: u32,
    /// How the previous instance ended, e.g. "killed by signal 9 (SIGKILL)".
    pub last_exit: Option<String>,
    /// The sandbox layers the worker reported in its `Ready`.
    pub sandbox: Option<SandboxReport>,
    /// What the broker itself read from `/proc/PID` (None when unreadable or no process).
    pub verified: Option<ProcEvidence>,
}

/// A worker's confinement as the kernel shows it in `/proc/PID`.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ProcEvidence {
    /// `Seccomp:` 0 none, 1 strict, 2 filter.
    pub seccomp_mode: u8,
    pub no_new_privs: bool,
    /// `CapEff:` is all zero.
    pub cap_eff_zero: bool,
    /// The effective uid, as seen from the broker's user namespace.
    pub uid: u32,
    /// Whether `/proc/PID/ns/net` differs from the broker's; `None` when unreadable.
    pub own_net_ns: Option<bool>,
}

/// Supervises the broker's workers; cheap to clone.
///
/// Its tasks run on the tokio runtime it was started in; call [`Supervisor::shutdown`] before
/// that runtime ends, or the workers outlive their supervision (until the broker exits, when
/// their parent-death signal kills them).
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    slots: Vec<SlotHandle>,
    /// `Some(deadline)` once shutdown has begun.
    stop: watch::Sender<Option<Instant>>,
    slot_tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Reaps on every SIGCHLD until the end of `shutdown`.
    reaper_task: Mutex<Option<JoinHandle<()>>>,
    /// Keeps the LAN sockets open for the broker's whole life (the slots hold them too).
    sockets: Option<Arc<LanSockets>>,
    /// Ready / session report / exit events of every slot, until the session code takes them.
    events: Mutex<Option<mpsc::UnboundedReceiver<WorkerEvent>>>,
}

struct SlotHandle {
    kind: WorkerKind,
    shared: Arc<Mutex<SlotShared>>,
    recycle: mpsc::Sender<oneshot::Sender<Result<(), String>>>,
    outbox: mpsc::Sender<Outgoing>,
}

impl Supervisor {
    /// Spawns `lumen-net` (handing it `sockets` dups) and warm capture, encode and input
    /// workers, and supervises them (pidfds + SIGCHLD, reaps every child, restarts with
    /// exponential backoff, reports crash loops). Must be called inside the tokio runtime.
    pub async fn start(cfg: SupervisorConfig, sockets: LanSockets) -> anyhow::Result<Supervisor> {
        check_worker_credentials(cfg.worker_uid, rustix::process::geteuid().is_root())?;
        let mut workers = Vec::new();
        for kind in WorkerKind::ALL {
            let command = WorkerCommand::worker(
                &cfg.worker_dir,
                kind,
                cfg.allow_missing_seccomp,
                cfg.allow_missing_landlock,
                cfg.worker_uid,
            );
            if !command.program.is_file() {
                bail!(
                    "worker binary {} is missing (workers are expected next to lumen-broker)",
                    command.program.display()
                );
            }
            workers.push((kind, command));
        }
        Supervisor::start_with(workers, Some(sockets), RestartPolicy::default())
    }

    /// Starts supervising `workers` (one slot each), under `policy`. The slot of kind `Net`
    /// receives `sockets` after each `Ready`.
    pub(crate) fn start_with(
        workers: Vec<(WorkerKind, WorkerCommand)>,
        sockets: Option<LanSockets>,
        policy: RestartPolicy,
    ) -> anyhow::Result<Supervisor> {
        let sockets = sockets.map(Arc::new);
        let (stop, _) = watch::channel(None);
        // The SIGCHLD stream must exist before the first child can exit.
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
            .context("listening for SIGCHLD")?;
        let reaper_task = tokio::spawn(async move {
            reaper::reap_all();
            while sigchld.recv().await.is_some() {
                reaper::reap_all();
            }
        });
        let mut tasks = Vec::new();
        let (events_tx, events_rx) = mpsc::unbounded_channel();

        let mut slots = Vec::new();
        for (kind, command) in workers {
            let shared = Arc::new(Mutex::new(SlotShared::new()));
            let (recycle, recycle_rx) = mpsc::channel(8);
            let (outbox, outbox_rx) = mpsc::channel(16);
            let slot = Slot {
                kind,
                name: kind.name(),
                command,
                sockets: if kind == WorkerKind::Net {
                    sockets.clone()
                } else {
                    None
                },
                policy: policy.clone(),
                shared: shared.clone(),
                events: events_tx.clone(),
            };
            tasks.push(tokio::spawn(slot.run(
                stop.subscribe(),
                recycle_rx,
                outbox_rx,
            )));
            slots.push(SlotHandle {
                kind,
                shared,
                recycle,
                outbox,
            });
        }
        Ok(Supervisor {
            inner: Arc::new(Inner {
                slots,
                stop,
                slot_tasks: Mutex::new(tasks),
                reaper_task: Mutex::new(Some(reaper_task)),
                sockets,
                events: Mutex::new(Some(events_rx)),
            }),
        })
    }

    /// The stream of Ready, session report and exit events; the first caller gets it.
    pub(crate) fn take_events(&self) -> Option<mpsc::UnboundedReceiver<WorkerEvent>> {
        self.inner
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Queues `msg` with `fds` for the worker of `kind`; delivered only if that worker is ready
    /// (a worker that is not gets the session again on its next Ready).
    pub(crate) fn send(
        &self,
        kind: WorkerKind,
        msg: BrokerMsg,
        fds: Vec<OwnedFd>,
    ) -> anyhow::Result<()> {
        let slot = self
            .inner
            .slots
            .iter()
            .find(|slot| slot.kind == kind)
            .with_context(|| format!("no {} worker is supervised", kind.name()))?;
        slot.outbox
            .try_send(Outgoing { msg, fds })
            .map_err(|e| anyhow::anyhow!("queueing a message for {}: {e}", kind.name()))
    }

    /// The LAN sockets `lumen-net` is handed (none in tests that supervise without them).
    pub(crate) fn lan_sockets(&self) -> Option<Arc<LanSockets>> {
        self.inner.sockets.clone()
    }

    /// Whether `kind`'s worker has said Ready and not exited since: the only state in which it
    /// takes the messages [`Supervisor::send`] queues (a worker not ready drops them).
    pub(crate) fn is_running(&self, kind: WorkerKind) -> bool {
        self.inner.slots.iter().any(|slot| {
            slot.kind == kind
                && slot
                    .shared
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .state
                    == slot::State::Running
        })
    }

    /// Snapshot for `lumen-broker status`.
    pub fn status(&self) -> Vec<WorkerStatus> {
        self.inner
            .slots
            .iter()
            .map(|slot| {
                let shared = slot
                    .shared
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone_status();
                let verified = shared
                    .pid
                    .and_then(|pid| match crate::procstatus::read(pid) {
                        Ok(evidence) => Some(evidence),
                        Err(e) => {
                            tracing::debug!(worker = slot.kind.name(), "reading /proc: {e}");
                            None
                        }
                    });
                WorkerStatus {
                    kind: slot.kind,
                    pid: shared.pid,
                    state: shared.state.name().to_owned(),
                    restarts: shared.restarts,
                    last_exit: shared.last_exit,
                    sandbox: shared.sandbox,
                    verified,
                }
            })
            .collect()
    }

    /// Stops every worker (Shutdown message, then SIGKILL via pidfd) and reaps them, all within
    /// `deadline`. A later call finds nothing left to wait for and returns at once.
    pub async fn shutdown(&self, deadline: Duration) {
        let started = Instant::now();
        let end = started + deadline;
        // A first call sets the deadline; a later one keeps it.
        self.inner.stop.send_if_modified(|stop| {
            if stop.is_none() {
                *stop = Some(end);
                true
            } else {
                false
            }
        });
        let slot_tasks = std::mem::take(
            &mut *self
                .inner
                .slot_tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for task in slot_tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(end.into(), task).await.is_err() {
                abort.abort();
            }
        }
        // Whatever a slot did not finish: kill through the pidfd and reap.
        for slot in &self.inner.slots {
            let mut shared = slot.shared.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(pidfd) = shared.pidfd.take() {
                let _ = rustix::process::pidfd_send_signal(&*pidfd, rustix::process::Signal::KILL);
                tracing::warn!(
                    worker = slot.kind.name(),
                    "still present at the shutdown deadline; killed"
                );
            }
            shared.mark_stopped();
        }
        reaper::reap_all();
        let reaper_task = self
            .inner
            .reaper_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = reaper_task {
            task.abort();
        }
        tracing::debug!("workers stopped in {:?}", started.elapsed());
    }

    /// Replaces the worker of `kind` with a fresh one (a session ended: nothing may carry over to
    /// the next client), and returns once the fresh worker is `Ready`.
    #[allow(
        dead_code,
        reason = "sessions (a later issue) call it; tested in broker/tests/supervisor.rs"
    )]
    pub(crate) async fn recycle(&self, kind: WorkerKind) -> anyhow::Result<()> {
        let slot = self
            .inner
            .slots
            .iter()
            .find(|slot| slot.kind == kind)
            .with_context(|| format!("no {} worker is supervised", kind.name()))?;
        let (reply, done) = oneshot::channel();
        slot.recycle
            .send(reply)
            .await
            .map_err(|_| anyhow::anyhow!("the {} worker's supervisor has stopped", kind.name()))?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => bail!("recycling the {} worker: {e}", kind.name()),
            Err(_) => bail!(
                "the {} worker's supervisor stopped while recycling",
                kind.name()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_never_get_root_credentials() {
        assert!(check_worker_credentials(None, true).is_err());
        assert!(check_worker_credentials(Some((0, 65534)), true).is_err());
        assert!(check_worker_credentials(Some((65534, 0)), false).is_err());
        assert!(check_worker_credentials(Some((65534, 65534)), true).is_ok());
        assert!(check_worker_credentials(None, false).is_ok());
    }
}
