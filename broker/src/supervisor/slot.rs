//! One worker slot: the task that keeps one kind of worker alive.
//!
//! Each round spawns a worker, waits for its `Ready` (killing it if none comes in time), hands
//! `lumen-net` its sockets, and watches the channel and the process until it ends; then the slot
//! backs off and starts the next round. Everything the slot learns goes into [`SlotShared`], which
//! `status()` reads.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lumen_ipc::channel::{Channel, ChannelError};
use lumen_ipc::msg::{BrokerMsg, SandboxReport, WorkerKind, WorkerMsg};
use lumen_ipc::net_msg::NetRequest;
use tokio::io::unix::{AsyncFd, AsyncFdReadyMutGuard};
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot, watch};

use super::backoff::{Backoff, RestartPolicy};
use super::flood::WorkerCosts;
#[cfg(test)]
use super::flood::{FloodGuard, LogBudget};
use super::output::{self, Stream};
use super::reaper::{self, ExitStatus, ExitWatch};
use crate::sockets::LanSockets;
use crate::spawn::{self, Spawned, WorkerCommand};

/// The answer to a recycle request: `Ok` once a fresh worker is ready.
pub(super) type RecycleReply = oneshot::Sender<Result<(), String>>;

/// A message (with fds) the broker's session code sends to the worker of a slot.
pub(crate) struct Outgoing {
    pub msg: BrokerMsg,
    pub fds: Vec<OwnedFd>,
}

/// What a slot tells the broker's session code.
#[derive(Debug, Clone)]
pub(crate) enum WorkerEvent {
    /// A fresh worker of `kind` is ready (after a start or a restart).
    Ready { kind: WorkerKind },
    /// A session report from the worker (`SessionStarted`, `SessionFailed`, `SessionStats`), or
    /// `lumen-input`'s `InputStats`.
    Session { kind: WorkerKind, msg: WorkerMsg },
    /// The worker of `kind` is gone (it will be restarted).
    Exited { kind: WorkerKind },
    /// `lumen-net` asks for something only the broker can do; answer with `BrokerMsg::NetReply`.
    NetRequest { id: u64, request: NetRequest },
}

/// How long a worker that closed its control channel has to exit on its own before it is killed.
const CLOSED_CHANNEL_GRACE: Duration = Duration::from_secs(1);

/// The most control messages read from one worker before other work gets a turn.
const MAX_MESSAGES_PER_WAKEUP: usize = 64;

/// The longest worker-supplied error text that is logged.
const MAX_LOGGED_ERROR: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Starting,
    Running,
    Backoff,
    Failing,
    Stopped,
}

impl State {
    pub(super) fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff => "backoff",
            State::Failing => "failing",
            State::Stopped => "stopped",
        }
    }
}

/// What a slot shares with `status()` and `shutdown()`.
#[derive(Clone, Debug)]
pub(super) struct SlotShared {
    pub state: State,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub sandbox: Option<SandboxReport>,
    /// The current process's pidfd, for a last SIGKILL at the shutdown deadline.
    pub pidfd: Option<Arc<OwnedFd>>,
}

impl SlotShared {
    pub(super) fn new() -> SlotShared {
        SlotShared {
            state: State::Starting,
            pid: None,
            restarts: 0,
            last_exit: None,
            sandbox: None,
            pidfd: None,
        }
    }

    pub(super) fn clone_status(&self) -> SlotShared {
        self.clone()
    }

    pub(super) fn mark_stopped(&mut self) {
        self.state = State::Stopped;
        self.pid = None;
        self.pidfd = None;
        self.sandbox = None;
    }
}

/// How one worker instance ended.
enum Outcome {
    /// It died or was killed as broken; restart with backoff. `up_for`: time since `Ready`.
    Failed { up_for: Duration },
    /// It was replaced on request; start a fresh one at once.
    Recycled,
    /// The supervisor is shutting down; the worker is gone.
    Stopped,
}

/// What reading the control channel asks for.
enum ChannelVerdict {
    /// Keep watching.
    Fine,
    /// The worker closed its end.
    Closed,
    /// The worker broke the protocol: kill it, for this reason.
    Kill(String),
}

/// One worker slot.
pub(super) struct Slot {
    pub kind: WorkerKind,
    pub name: &'static str,
    pub command: WorkerCommand,
    /// Handed over after every `Ready` (`lumen-net` only).
    pub sockets: Option<Arc<LanSockets>>,
    pub policy: RestartPolicy,
    pub shared: Arc<Mutex<SlotShared>>,
    /// Where Ready, session reports and exits go.
    pub events: mpsc::UnboundedSender<WorkerEvent>,
}

/// One running worker instance.
/// The liveness check of a running worker: one ping outstanding at a time.
#[derive(Debug, Default)]
struct Liveness {
    next_seq: u64,
    /// The ping in flight and when it was sent.
    outstanding: Option<(u64, Instant)>,
}

struct Instance {
    pid: u32,
    pidfd: AsyncFd<Arc<OwnedFd>>,
    exit: ExitWatch,
    /// `None` once closed, broken, or the worker was killed.
    channel: Option<AsyncFd<Channel>>,
    ready_at: Option<Instant>,
    /// Why the broker killed it, if it did.
    killed: Option<String>,
    /// Its logged errors and costly messages (a flood gets it killed).
    costs: WorkerCosts,
}

impl Instance {
    fn kill(&mut self, reason: String) {
        if self.killed.is_none() {
            // ESRCH means it is dead already; the pidfd cannot reach another process.
            let _ = rustix::process::pidfd_send_signal(
                self.pidfd.get_ref(),
                rustix::process::Signal::KILL,
            );
            self.killed = Some(reason);
        }
        self.channel = None;
    }

    /// Waits for the exit status until `until`; `None` if the process is still there then.
    async fn wait_exit_until(&mut self, until: Instant) -> Option<Option<ExitStatus>> {
        // Reap now: a worker that exited on Shutdown is answered without waiting for a wake-up.
        reaper::reap_all();
        if let Some(status) = self.exit.try_get() {
            return Some(Some(status));
        }
        let sleep = tokio::time::sleep_until(until.into());
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                status = self.exit.wait() => return Some(status),
                guard = self.pidfd.readable() => {
                    reaper::reap_all();
                    if let Ok(mut guard) = guard {
                        guard.clear_ready();
                    }
                }
                () = &mut sleep => return None,
            }
        }
    }
}

/// Waits until the channel (if any) is readable; never resolves without one.
async fn channel_readable(
    channel: &mut Option<AsyncFd<Channel>>,
) -> std::io::Result<AsyncFdReadyMutGuard<'_, Channel>> {
    match channel {
        Some(channel) => channel.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// Sleeps on `sleep` if set; never resolves otherwise.
async fn maybe_sleep(sleep: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match sleep {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}

impl Slot {
    fn update(&self, change: impl FnOnce(&mut SlotShared)) {
        change(&mut self.shared.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Keeps a worker of this kind alive until shutdown.
    pub(super) async fn run(
        self,
        mut stop: watch::Receiver<Option<Instant>>,
        mut recycle: mpsc::Receiver<RecycleReply>,
        mut outbox: mpsc::Receiver<Outgoing>,
    ) {
        let mut backoff = Backoff::new(self.policy.clone());
        let mut waiting: Vec<RecycleReply> = Vec::new();
        while stop.borrow().is_none() {
            self.update(|s| s.state = State::Starting);
            let outcome = self
                .run_once(&mut stop, &mut recycle, &mut outbox, &mut waiting)
                .await;
            let _ = self.events.send(WorkerEvent::Exited { kind: self.kind });
            match outcome {
                Outcome::Stopped => break,
                Outcome::Recycled => continue,
                Outcome::Failed { up_for } => {
                    let last_exit = self
                        .shared
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .last_exit
                        .clone();
                    for reply in waiting.drain(..) {
                        let _ = reply.send(Err(format!(
                            "the fresh worker failed: {}",
                            last_exit.as_deref().unwrap_or("unknown")
                        )));
                    }
                    let decision = backoff.on_failure(Instant::now(), up_for);
                    if decision.entered_failing {
                        tracing::warn!(
                            worker = self.name,
                            "crash loop: {} failures within {:?}; retrying every {:?} only",
                            self.policy.crash_loop_failures,
                            self.policy.crash_loop_window,
                            self.policy.max_backoff
                        );
                    }
                    self.update(|s| {
                        s.restarts = s.restarts.saturating_add(1);
                        s.state = if decision.failing {
                            State::Failing
                        } else {
                            State::Backoff
                        };
                    });
                    tracing::debug!(worker = self.name, "restarting in {:?}", decision.delay);
                    let sleep = tokio::time::sleep(decision.delay);
                    tokio::pin!(sleep);
                    tokio::select! {
                        () = &mut sleep => {}
                        _ = stop.changed() => break,
                        // A recycle request wants a fresh worker now; this one is dead anyway.
                        Some(reply) = recycle.recv() => waiting.push(reply),
                    }
                }
            }
        }
        for reply in waiting.drain(..) {
            let _ = reply.send(Err("the supervisor is shutting down".into()));
        }
        self.update(SlotShared::mark_stopped);
    }

    /// Runs one worker instance from spawn to exit.
    async fn run_once(
        &self,
        stop: &mut watch::Receiver<Option<Instant>>,
        recycle: &mut mpsc::Receiver<RecycleReply>,
        outbox: &mut mpsc::Receiver<Outgoing>,
        waiting: &mut Vec<RecycleReply>,
    ) -> Outcome {
        let mut instance = match self.start().await {
            Ok(instance) => instance,
            Err(reason) => {
                tracing::warn!(worker = self.name, "{reason}");
                self.update(|s| {
                    s.last_exit = Some(reason);
                    s.pid = None;
                    s.pidfd = None;
                });
                return Outcome::Failed {
                    up_for: Duration::ZERO,
                };
            }
        };
        let mut recycled = false;
        let ready_timer = tokio::time::sleep(self.policy.ready_timeout);
        tokio::pin!(ready_timer);
        let mut closed_grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let mut ping_timer = tokio::time::interval(self.policy.ping_interval);
        ping_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut liveness = Liveness::default();

        let status = loop {
            tokio::select! {
                biased;
                status = instance.exit.wait() => break status,
                guard = instance.pidfd.readable() => {
                    reaper::reap_all();
                    if let Ok(mut guard) = guard {
                        guard.clear_ready();
                    }
                }
                changed = stop.changed() => {
                    let deadline = match changed {
                        Ok(()) => *stop.borrow(),
                        // The supervisor is gone: stop at once.
                        Err(_) => Some(Instant::now()),
                    };
                    if let Some(deadline) = deadline {
                        self.stop_instance(&mut instance, deadline).await;
                        return Outcome::Stopped;
                    }
                }
                Some(reply) = recycle.recv() => {
                    waiting.push(reply);
                    // A worker that is not ready yet is fresh: it answers the request on Ready.
                    if instance.ready_at.is_some() {
                        recycled = true;
                        instance.kill("recycled".into());
                    }
                }
                () = &mut ready_timer, if instance.ready_at.is_none() && instance.killed.is_none() => {
                    tracing::warn!(worker = self.name, pid = instance.pid, "no Ready within {:?}; killing it", self.policy.ready_timeout);
                    instance.kill(format!("no Ready within {:?}", self.policy.ready_timeout));
                }
                () = maybe_sleep(&mut closed_grace), if instance.killed.is_none() => {
                    closed_grace = None;
                    tracing::warn!(worker = self.name, pid = instance.pid, "closed its control channel but did not exit; killing it");
                    instance.kill("closed its control channel".into());
                }
                _ = ping_timer.tick(), if instance.ready_at.is_some() && instance.killed.is_none() => {
                    self.check_liveness(&mut instance, &mut liveness);
                    self.log_suppressed(&mut instance, false);
                }
                Some(outgoing) = outbox.recv() => {
                    // Only a ready worker gets session messages; the session code sends the
                    // current session again on the next Ready, so nothing stale reaches a new one.
                    match (&instance.channel, instance.ready_at) {
                        (Some(channel), Some(_)) => {
                            let fds: Vec<_> = outgoing.fds.iter().map(|fd| fd.as_fd()).collect();
                            if let Err(e) = channel.get_ref().send(&outgoing.msg, &fds) {
                                tracing::warn!(worker = self.name, pid = instance.pid, "sending {:?}: {e}; killing it", outgoing.msg);
                                instance.kill(format!("could not take a session message ({e})"));
                            }
                        }
                        _ => tracing::debug!(worker = self.name, "not ready; dropped {:?}", outgoing.msg),
                    }
                }
                guard = channel_readable(&mut instance.channel) => {
                    let verdict = match guard {
                        Ok(guard) => self.read_messages(guard, &mut instance.ready_at, instance.pid, waiting, &mut liveness, &mut instance.costs),
                        Err(e) => ChannelVerdict::Kill(format!("control channel failed: {e}")),
                    };
                    match verdict {
                        ChannelVerdict::Fine => {}
                        ChannelVerdict::Closed => {
                            instance.channel = None;
                            closed_grace = Some(Box::pin(tokio::time::sleep(CLOSED_CHANNEL_GRACE)));
                        }
                        ChannelVerdict::Kill(reason) => instance.kill(reason),
                    }
                }
            }
        };

        self.log_suppressed(&mut instance, true);
        let status = match status {
            Some(status) => status.to_string(),
            None => "exit status lost".to_owned(),
        };
        let described = match &instance.killed {
            Some(reason) => format!("{status}; {reason}"),
            None => status,
        };
        self.update(|s| {
            s.last_exit = Some(described.clone());
            s.pid = None;
            s.pidfd = None;
            s.sandbox = None;
        });
        if recycled {
            tracing::info!(
                worker = self.name,
                pid = instance.pid,
                "replaced by a fresh worker ({described})"
            );
            return Outcome::Recycled;
        }
        tracing::warn!(
            worker = self.name,
            pid = instance.pid,
            "worker ended: {described}"
        );
        Outcome::Failed {
            up_for: instance.ready_at.map(|t| t.elapsed()).unwrap_or_default(),
        }
    }

    /// Spawns the worker and sets up the watches on it.
    async fn start(&self) -> Result<Instance, String> {
        let Spawned {
            pid,
            pidfd,
            channel,
            stdout,
            stderr,
            exit,
        } = spawn::spawn(self.command.clone())
            .await
            .map_err(|e| format!("could not start: {e}"))?;
        let pid = pid.as_raw_nonzero().get().unsigned_abs();
        tokio::spawn(output::log_lines(stdout, self.name, Stream::Stdout));
        tokio::spawn(output::log_lines(stderr, self.name, Stream::Stderr));
        let pidfd = Arc::new(pidfd);
        self.update(|s| {
            s.pid = Some(pid);
            s.pidfd = Some(pidfd.clone());
            s.sandbox = None;
        });
        tracing::info!(worker = self.name, pid, "started");

        let watched = channel
            .set_nonblocking(true)
            .map_err(|e| format!("control channel: {e}"))
            .and_then(|()| {
                watch_channel(channel).map_err(|e| format!("watching the control channel: {e}"))
            });
        let pidfd_watch = watch_pidfd(pidfd.clone());
        match (watched, pidfd_watch) {
            (Ok(channel), Ok(pidfd)) => Ok(Instance {
                pid,
                pidfd,
                exit,
                channel: Some(channel),
                ready_at: None,
                killed: None,
                costs: WorkerCosts::default(),
            }),
            (channel, pidfd_watch) => {
                let _ = rustix::process::pidfd_send_signal(&*pidfd, rustix::process::Signal::KILL);
                let reason = match (channel, pidfd_watch) {
                    (Err(e), _) => e,
                    (_, Err(e)) => format!("watching the pidfd: {e}"),
                    (Ok(_), Ok(_)) => String::new(),
                };
                // Its exit is still delivered to the reaper, which reaps it on SIGCHLD.
                Err(format!(
                    "could not supervise pid {pid}: {reason}; killed it"
                ))
            }
        }
    }

    /// Pings a running worker, or kills it when the last ping went unanswered too long: a worker
    /// that hangs without dying is as broken as a dead one.
    fn check_liveness(&self, instance: &mut Instance, liveness: &mut Liveness) {
        match liveness.outstanding {
            Some((seq, sent)) if sent.elapsed() >= self.policy.ping_timeout => {
                tracing::warn!(
                    worker = self.name,
                    pid = instance.pid,
                    "no answer to ping {seq} within {:?}; killing it",
                    self.policy.ping_timeout
                );
                instance.kill(format!(
                    "hung: no answer to a ping within {:?}",
                    self.policy.ping_timeout
                ));
            }
            Some(_) => {}
            None => {
                let Some(channel) = &instance.channel else {
                    return;
                };
                let seq = liveness.next_seq;
                liveness.next_seq += 1;
                // A full socket buffer (the worker is not reading) counts as unanswered too.
                if let Err(e) = channel.get_ref().send(&BrokerMsg::Ping { seq }, &[]) {
                    tracing::debug!(worker = self.name, pid = instance.pid, "ping {seq}: {e}");
                }
                liveness.outstanding = Some((seq, Instant::now()));
            }
        }
    }

    /// Reads every waiting message and acts on it.
    fn read_messages(
        &self,
        mut guard: AsyncFdReadyMutGuard<'_, Channel>,
        ready_at: &mut Option<Instant>,
        pid: u32,
        waiting: &mut Vec<RecycleReply>,
        liveness: &mut Liveness,
        costs: &mut WorkerCosts,
    ) -> ChannelVerdict {
        // A bounded batch: a worker that sends without pause must not hold this task (and the
        // runtime thread) forever; the rest is read on the next turn of the event loop.
        for _ in 0..MAX_MESSAGES_PER_WAKEUP {
            let received = match guard.get_inner_mut().try_recv::<WorkerMsg>() {
                Ok(Some(received)) => received,
                Ok(None) => {
                    guard.clear_ready();
                    return ChannelVerdict::Fine;
                }
                Err(ChannelError::Closed) => return ChannelVerdict::Closed,
                Err(ChannelError::Syscall { call, errno }) => {
                    return ChannelVerdict::Kill(format!("control channel failed: {call}: {errno}"))
                }
                Err(e) => {
                    tracing::warn!(
                        worker = self.name,
                        pid,
                        "malformed message: {e}; killing it"
                    );
                    return ChannelVerdict::Kill(format!("sent a malformed message ({e})"));
                }
            };
            if !received.fds.is_empty() {
                tracing::warn!(
                    worker = self.name,
                    pid,
                    "sent {} fds with {:?}; killing it",
                    received.fds.len(),
                    received.msg
                );
                return ChannelVerdict::Kill("sent fds the broker did not ask for".into());
            }
            // Every message but a Pong costs the broker something (a log line, work for the
            // session code or the dispatcher); stray Pongs are only read and dropped.
            if !matches!(received.msg, WorkerMsg::Pong { .. }) {
                if let Some(reason) = costs.flood.message(Instant::now()) {
                    tracing::warn!(worker = self.name, pid, "{reason}; killing it");
                    return ChannelVerdict::Kill(reason);
                }
            }
            match received.msg {
                WorkerMsg::Ready { kind, sandbox } => {
                    if ready_at.is_some() {
                        tracing::warn!(worker = self.name, pid, "sent a second Ready; killing it");
                        return ChannelVerdict::Kill("sent a second Ready".into());
                    }
                    if kind != self.kind {
                        tracing::warn!(
                            worker = self.name,
                            pid,
                            "claims to be {kind:?}; killing it"
                        );
                        return ChannelVerdict::Kill(format!("claimed to be {kind:?}"));
                    }
                    if let Some(sockets) = &self.sockets {
                        if let Err(e) = send_sockets(guard.get_inner(), sockets) {
                            tracing::warn!(
                                worker = self.name,
                                pid,
                                "handing over the LAN sockets: {e:#}; killing it"
                            );
                            return ChannelVerdict::Kill(format!(
                                "could not receive its sockets ({e:#})"
                            ));
                        }
                    }
                    log_sandbox(self.name, pid, &sandbox);
                    *ready_at = Some(Instant::now());
                    self.update(|s| {
                        s.state = State::Running;
                        s.sandbox = Some(sandbox);
                    });
                    let _ = self.events.send(WorkerEvent::Ready { kind: self.kind });
                    for reply in waiting.drain(..) {
                        let _ = reply.send(Ok(()));
                    }
                }
                WorkerMsg::Pong { seq } => {
                    // Only the answer to the ping in flight counts; a stray Pong proves nothing.
                    if liveness.outstanding.is_some_and(|(s, _)| s == seq) {
                        liveness.outstanding = None;
                    }
                    tracing::trace!(worker = self.name, pid, seq, "pong");
                }
                WorkerMsg::Error { message } => {
                    let verdict = costs.error_log.line(Instant::now());
                    if let Some(suppressed) = verdict.suppressed_before {
                        log_suppressed_errors(self.name, pid, suppressed);
                    }
                    if verdict.log {
                        let shown: String = message.chars().take(MAX_LOGGED_ERROR).collect();
                        tracing::warn!(
                            worker = self.name,
                            pid,
                            "worker reports an error: {}",
                            output::sanitize(shown.as_bytes())
                        );
                    }
                }
                WorkerMsg::NetRequest { id, request } => {
                    if self.kind != WorkerKind::Net || ready_at.is_none() {
                        return ChannelVerdict::Kill(
                            "sent a net request (only a ready lumen-net may)".into(),
                        );
                    }
                    let _ = self.events.send(WorkerEvent::NetRequest { id, request });
                }
                WorkerMsg::InputStats(stats) => {
                    if self.kind != WorkerKind::Input || ready_at.is_none() {
                        return ChannelVerdict::Kill(
                            "sent input statistics (only a ready lumen-input may)".into(),
                        );
                    }
                    let _ = self.events.send(WorkerEvent::Session {
                        kind: self.kind,
                        msg: WorkerMsg::InputStats(stats),
                    });
                }
                WorkerMsg::EncoderCapabilities(capabilities) => {
                    if self.kind != WorkerKind::Encode || ready_at.is_none() {
                        return ChannelVerdict::Kill(
                            "sent encoder capabilities (only a ready lumen-encode may)".into(),
                        );
                    }
                    // The broker's dispatcher takes these (DESCRIBE, StartStream checks).
                    let _ = self.events.send(WorkerEvent::Session {
                        kind: self.kind,
                        msg: WorkerMsg::EncoderCapabilities(capabilities),
                    });
                }
                WorkerMsg::NetStats(stats) => {
                    if self.kind != WorkerKind::Net || ready_at.is_none() {
                        return ChannelVerdict::Kill(
                            "sent stream statistics (only a ready lumen-net may)".into(),
                        );
                    }
                    let _ = self.events.send(WorkerEvent::Session {
                        kind: self.kind,
                        msg: WorkerMsg::NetStats(stats),
                    });
                }
                msg @ (WorkerMsg::SessionStarted { .. }
                | WorkerMsg::SessionFailed { .. }
                | WorkerMsg::SessionStats { .. }) => {
                    if ready_at.is_none() {
                        return ChannelVerdict::Kill("sent a session report before Ready".into());
                    }
                    let _ = self.events.send(WorkerEvent::Session {
                        kind: self.kind,
                        msg,
                    });
                }
            }
        }
        ChannelVerdict::Fine
    }

    /// Logs how many of the instance's error reports were not logged, once their second is over
    /// (or, with `gone`, whatever is left when it ended).
    fn log_suppressed(&self, instance: &mut Instance, gone: bool) {
        if let Some(suppressed) = instance.costs.error_log.take_summary(Instant::now(), gone) {
            log_suppressed_errors(self.name, instance.pid, suppressed);
        }
    }

    /// Asks the worker to stop, then kills it at half the time left; returns once it is reaped
    /// or `deadline` has passed.
    async fn stop_instance(&self, instance: &mut Instance, deadline: Instant) {
        if let Some(channel) = &instance.channel {
            // A worker that does not read it is killed below anyway.
            let _ = channel.get_ref().send(&BrokerMsg::Shutdown, &[]);
        }
        let now = Instant::now();
        let kill_at = now + deadline.saturating_duration_since(now) / 2;
        let mut status = instance.wait_exit_until(kill_at).await;
        if status.is_none() {
            tracing::warn!(
                worker = self.name,
                pid = instance.pid,
                "did not stop on request; killing it"
            );
            instance.kill("killed at shutdown".into());
            status = instance.wait_exit_until(deadline).await;
        }
        let described = match status {
            Some(Some(status)) => match &instance.killed {
                Some(reason) => format!("{status}; {reason}"),
                None => status.to_string(),
            },
            Some(None) => "exit status lost".to_owned(),
            // Still there at the deadline: `shutdown` kills what remains and reaps.
            None => return,
        };
        tracing::info!(
            worker = self.name,
            pid = instance.pid,
            "stopped: {described}"
        );
        self.update(|s| {
            s.last_exit = Some(described);
            s.mark_stopped();
        });
    }
}

fn log_suppressed_errors(worker: &'static str, pid: u32, suppressed: u64) {
    tracing::warn!(
        worker,
        pid,
        "{suppressed} error messages suppressed (at most {} logged a second)",
        super::flood::LOG_LINES_PER_SECOND
    );
}

/// Registers the control channel with tokio's reactor (read readiness).
fn watch_channel(channel: Channel) -> std::io::Result<AsyncFd<Channel>> {
    // SAFETY: a `Channel` owns its socket fd for its whole life and always reports that same fd;
    // the `AsyncFd` owns the channel, so the fd stays open until the registration is dropped.
    Ok(unsafe { AsyncFd::register_with_interest(channel, Interest::READABLE) }?)
}

/// Registers a pidfd with tokio's reactor: it turns readable when the process exits.
fn watch_pidfd(pidfd: Arc<OwnedFd>) -> std::io::Result<AsyncFd<Arc<OwnedFd>>> {
    // SAFETY: the `AsyncFd` holds a strong reference to the `OwnedFd`, so the fd stays open and
    // refers to the same pidfd until the registration is dropped.
    Ok(unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }?)
}

/// Sends `lumen-net` fresh dups of every LAN socket.
fn send_sockets(channel: &Channel, sockets: &LanSockets) -> anyhow::Result<()> {
    let dups = sockets.dup_all()?;
    let roles = dups.iter().map(|(role, _)| *role).collect();
    let fds: Vec<_> = dups
        .iter()
        .map(|(_, fd)| std::os::fd::AsFd::as_fd(fd))
        .collect();
    channel.send(&BrokerMsg::NetSockets { roles }, &fds)?;
    if let Some(advert) = sockets.mdns_advert() {
        channel.send(&BrokerMsg::NetMdns(advert), &[])?;
    }
    Ok(())
}

/// Logs the layers a worker reports, and loudly what it lacks.
fn log_sandbox(worker: &'static str, pid: u32, sandbox: &SandboxReport) {
    tracing::info!(
        worker,
        pid,
        seccomp = ?sandbox.seccomp,
        landlock_fs = ?sandbox.landlock_fs,
        net_ns = ?sandbox.net_ns,
        user_ns = ?sandbox.user_ns,
        "ready"
    );
    for note in sandbox.notes.iter().take(32) {
        let shown: String = note.chars().take(MAX_LOGGED_ERROR).collect();
        tracing::warn!(
            worker,
            pid,
            "sandbox: {}",
            output::sanitize(shown.as_bytes())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(kind: WorkerKind) -> Slot {
        Slot {
            kind,
            name: kind.name(),
            command: WorkerCommand {
                program: "/nonexistent".into(),
                args: Vec::new(),
                env: Vec::new(),
                credentials: None,
            },
            sockets: None,
            policy: RestartPolicy::default(),
            shared: Arc::new(Mutex::new(SlotShared::new())),
            events: mpsc::unbounded_channel().0,
        }
    }

    fn report() -> SandboxReport {
        use lumen_ipc::msg::Layer::On;
        SandboxReport {
            no_new_privs: On,
            capabilities_dropped: On,
            rlimits: On,
            not_dumpable: On,
            user_ns: On,
            mount_ns: On,
            pid_ns: On,
            ipc_ns: On,
            net_ns: On,
            landlock_fs: On,
            landlock_net: On,
            landlock_scope: On,
            landlock_abi: 7,
            seccomp: On,
            seccomp_allowed_syscalls: 1,
            notes: Vec::new(),
        }
    }

    /// Feeds `sends` from a fake worker end and returns what one read of the broker end decides.
    async fn verdict_after(
        slot: &Slot,
        ready_at: &mut Option<Instant>,
        sends: impl FnOnce(&Channel),
    ) -> (ChannelVerdict, AsyncFd<Channel>, Channel) {
        let (broker, worker) = Channel::pair().expect("pair");
        broker.set_nonblocking(true).expect("nonblocking");
        sends(&worker);
        let mut broker = watch_channel(broker).expect("register");
        let verdict = {
            let guard = broker.readable_mut().await.expect("readable");
            slot.read_messages(
                guard,
                ready_at,
                1,
                &mut Vec::new(),
                &mut Liveness::default(),
                &mut WorkerCosts::default(),
            )
        };
        (verdict, broker, worker)
    }

    fn kill_reason(verdict: ChannelVerdict) -> String {
        match verdict {
            ChannelVerdict::Kill(reason) => reason,
            ChannelVerdict::Fine => "fine".into(),
            ChannelVerdict::Closed => "closed".into(),
        }
    }

    #[tokio::test]
    async fn a_flood_of_messages_is_read_in_bounded_batches() {
        let slot = slot(WorkerKind::Capture);
        let (verdict, mut broker, _worker) = verdict_after(&slot, &mut None, |worker| {
            for seq in 0..100 {
                worker.send(&WorkerMsg::Pong { seq }, &[]).expect("send");
            }
        })
        .await;
        assert!(matches!(verdict, ChannelVerdict::Fine));
        let mut left = 0;
        while let Ok(Some(_)) = broker.get_mut().try_recv::<WorkerMsg>() {
            left += 1;
        }
        assert_eq!(left, 100 - MAX_MESSAGES_PER_WAKEUP);
    }

    #[tokio::test]
    async fn ready_marks_the_worker_running_once() {
        let slot = slot(WorkerKind::Encode);
        let mut ready_at = None;
        let (verdict, _broker, _worker) = verdict_after(&slot, &mut ready_at, |worker| {
            let ready = WorkerMsg::Ready {
                kind: WorkerKind::Encode,
                sandbox: report(),
            };
            worker.send(&ready, &[]).expect("send");
        })
        .await;
        assert!(matches!(verdict, ChannelVerdict::Fine));
        assert!(ready_at.is_some());
        let shared = slot.shared.lock().expect("lock").clone_status();
        assert_eq!(shared.state, State::Running);
        assert_eq!(shared.sandbox, Some(report()));

        // A second Ready is a protocol violation.
        let (verdict, _broker, _worker) = verdict_after(&slot, &mut ready_at, |worker| {
            let ready = WorkerMsg::Ready {
                kind: WorkerKind::Encode,
                sandbox: report(),
            };
            worker.send(&ready, &[]).expect("send");
        })
        .await;
        assert_eq!(kill_reason(verdict), "sent a second Ready");
    }

    #[tokio::test]
    async fn protocol_violations_get_the_worker_killed() {
        let slot = slot(WorkerKind::Input);
        let wrong_kind = WorkerMsg::Ready {
            kind: WorkerKind::Net,
            sandbox: report(),
        };
        let (verdict, _b, _w) = verdict_after(&slot, &mut None, |worker| {
            worker.send(&wrong_kind, &[]).expect("send");
        })
        .await;
        assert_eq!(kill_reason(verdict), "claimed to be Net");

        let (verdict, _b, _w) = verdict_after(&slot, &mut None, |worker| {
            let stdin = std::io::stdin();
            let fd = std::os::fd::AsFd::as_fd(&stdin);
            worker
                .send(&WorkerMsg::Pong { seq: 1 }, &[fd])
                .expect("send");
        })
        .await;
        assert_eq!(kill_reason(verdict), "sent fds the broker did not ask for");

        let (verdict, _b, _w) = verdict_after(&slot, &mut None, |worker| {
            rustix::io::write(worker, b"\x00\x01garbage").expect("write");
        })
        .await;
        assert!(
            kill_reason(verdict).starts_with("sent a malformed message"),
            "garbage"
        );

        let (verdict, _b, _w) = verdict_after(&slot, &mut None, |worker| {
            rustix::net::shutdown(worker, rustix::net::Shutdown::Write).expect("shutdown");
        })
        .await;
        assert_eq!(kill_reason(verdict), "closed");
    }

    #[tokio::test]
    async fn a_worker_over_the_flood_bound_is_killed_and_stray_pongs_do_not_count() {
        let slot = slot(WorkerKind::Capture);
        let (broker, worker) = Channel::pair().expect("pair");
        broker.set_nonblocking(true).expect("nonblocking");
        for seq in 0..40 {
            worker.send(&WorkerMsg::Pong { seq }, &[]).expect("send");
        }
        for _ in 0..11 {
            let error = WorkerMsg::Error {
                message: "e".repeat(1024),
            };
            worker.send(&error, &[]).expect("send");
        }
        let mut broker = watch_channel(broker).expect("register");
        // A bound of 10 costly messages in one window: 40 Pongs pass, the 11th Error does not.
        let mut costs = WorkerCosts {
            error_log: LogBudget::new(3),
            flood: FloodGuard::new(10, 1),
        };
        let verdict = {
            let guard = broker.readable_mut().await.expect("readable");
            slot.read_messages(
                guard,
                &mut Some(Instant::now()),
                1,
                &mut Vec::new(),
                &mut Liveness::default(),
                &mut costs,
            )
        };
        let reason = kill_reason(verdict);
        assert!(reason.starts_with("flooded the broker"), "{reason}");
        // 3 of the 10 errors read before the kill were logged, 7 are left for the summary.
        assert_eq!(costs.error_log.take_summary(Instant::now(), true), Some(7));
    }

    #[tokio::test]
    async fn errors_reported_by_a_worker_are_logged_not_fatal() {
        let slot = slot(WorkerKind::Capture);
        let (verdict, _b, _w) = verdict_after(&slot, &mut None, |worker| {
            let error = WorkerMsg::Error {
                message: "x".repeat(10_000),
            };
            worker.send(&error, &[]).expect("send");
        })
        .await;
        assert!(matches!(verdict, ChannelVerdict::Fine));
    }
}
