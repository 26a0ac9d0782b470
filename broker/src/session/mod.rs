//! Media sessions: the broker starts capture and encode for a stream, wires them to the stream's
//! consumer, and rewires everything when capture or encode restarts.
//!
//! One session at a time (one screen, one encoder). Starting a session builds fresh plumbing
//! ([`plumbing`]) under a new generation and sends each worker its ends, encode first: capture
//! starts once encode reports its encoder open, so no frame waits on an encoder still opening (it
//! would be dropped as stale, a gap at the start of every stream). When capture or encode
//! comes back after a crash, the session is rebuilt under the next generation and the consumer is
//! handed the new rings, so no worker ever reads memory a dead one may have left half-written.
//! What the workers report (`SessionStarted`, `SessionFailed`, `SessionStats`) for the current
//! generation is kept for `lumen-broker status`.

pub mod pipewire_remote;
pub mod plumbing;
pub mod recorder;

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use lumen_ipc::media::{CaptureSource, Generation, MediaStats, SessionParams};
use lumen_ipc::msg::{BrokerMsg, WorkerKind, WorkerMsg};
use serde::Serialize;

use crate::config::{CaptureConfig, SourceKind};
use crate::supervisor::{Supervisor, WorkerEvent};
use plumbing::ConsumerEnds;

/// Where a session's rings go.
pub enum ConsumerTarget {
    /// The broker's recorder thread (`lumen-broker record`); rebuilt rings are sent here.
    Recorder(std::sync::mpsc::Sender<ConsumerEnds>),
}

/// One worker's part of the session, as `status` shows it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct WorkerPart {
    /// "waiting" (not confirmed yet), "running", or "failed".
    pub state: String,
    /// Why it failed, in the worker's words.
    pub error: Option<String>,
    pub stats: Option<MediaStats>,
}

impl WorkerPart {
    fn waiting() -> WorkerPart {
        WorkerPart {
            state: "waiting".into(),
            ..WorkerPart::default()
        }
    }
}

/// The media session, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionStatus {
    pub params: SessionParams,
    pub source: String,
    pub generation: Generation,
    /// Rebuilds after a capture or encode restart.
    pub rebuilds: u32,
    pub started_unix: u64,
    pub capture: WorkerPart,
    pub encode: WorkerPart,
}

struct Active {
    params: SessionParams,
    source: CaptureSource,
    target: ConsumerTarget,
    status: SessionStatus,
    /// Capture's start, held back until encode has opened its encoder for this generation, so
    /// no frame is captured (and dropped as stale) while the encoder is still opening.
    capture_start: Option<(BrokerMsg, Vec<OwnedFd>)>,
}

struct State {
    next_generation: Generation,
    active: Option<Active>,
    /// The last session's status after it ended, so a failure stays visible.
    last: Option<SessionStatus>,
}

/// The broker's media sessions; cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    supervisor: Supervisor,
    config: CaptureConfig,
    state: Arc<Mutex<State>>,
}

impl Sessions {
    /// The broker's sessions; worker events reach it through [`Sessions::on_event`] (see
    /// `crate::dispatch`).
    pub fn new(supervisor: Supervisor, config: CaptureConfig) -> Sessions {
        Sessions {
            supervisor,
            config,
            state: Arc::new(Mutex::new(State {
                next_generation: 1,
                active: None,
                last: None,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn capture_source(&self) -> CaptureSource {
        match self.config.source {
            SourceKind::TestPattern => CaptureSource::TestPattern,
            SourceKind::Pipewire => CaptureSource::PipeWire {
                video_node: self.config.video_node.clone(),
                audio_node: self.config.audio_node.clone(),
            },
        }
    }

    fn pipewire_remote(&self, source: &CaptureSource) -> anyhow::Result<Option<OwnedFd>> {
        match source {
            CaptureSource::TestPattern => Ok(None),
            CaptureSource::PipeWire { .. } => {
                pipewire_remote::connect(self.config.pipewire_socket.as_deref()).map(Some)
            }
        }
    }

    /// Starts a session for `params`, replacing any session in progress; returns the consumer's
    /// ends of the first generation (rebuilt ones go to `target`).
    pub fn start_session(
        &self,
        params: SessionParams,
        target: ConsumerTarget,
    ) -> anyhow::Result<ConsumerEnds> {
        params
            .validate()
            .map_err(|e| anyhow::anyhow!("session parameters: {e}"))?;
        let source = self.capture_source();
        let mut state = self.state();
        let generation = state.next_generation;
        state.next_generation += 1;
        let remote = self.pipewire_remote(&source)?;
        let plumbing = plumbing::build(
            params,
            source.clone(),
            remote,
            self.config.max_source(),
            generation,
        )?;
        self.send(WorkerKind::Encode, plumbing.encode);
        let status = SessionStatus {
            params,
            source: describe(&source),
            generation,
            rebuilds: 0,
            started_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            capture: WorkerPart::waiting(),
            encode: WorkerPart::waiting(),
        };
        tracing::info!(generation, ?params, "media session started");
        state.active = Some(Active {
            params,
            source,
            target,
            status,
            capture_start: Some(plumbing.capture),
        });
        Ok(plumbing.consumer)
    }

    /// Ends the session in progress, if any.
    pub fn stop_session(&self) {
        let mut state = self.state();
        if let Some(active) = state.active.take() {
            self.send(WorkerKind::Capture, (BrokerMsg::StopSession, Vec::new()));
            self.send(WorkerKind::Encode, (BrokerMsg::StopSession, Vec::new()));
            tracing::info!(generation = active.status.generation, "media session ended");
            state.last = Some(active.status);
        }
    }

    /// The session in progress, or else the last one.
    pub fn status(&self) -> Option<SessionStatus> {
        let state = self.state();
        state
            .active
            .as_ref()
            .map(|a| a.status.clone())
            .or_else(|| state.last.clone())
    }

    fn send(&self, kind: WorkerKind, (msg, fds): (BrokerMsg, Vec<OwnedFd>)) {
        if let Err(e) = self.supervisor.send(kind, msg, fds) {
            tracing::warn!("{e:#}");
        }
    }

    /// Handles a worker start, exit or session report.
    pub fn on_event(&self, event: WorkerEvent) {
        match event {
            WorkerEvent::Ready { kind, .. } => {
                if matches!(kind, WorkerKind::Capture | WorkerKind::Encode) {
                    self.rebuild(kind);
                }
            }
            WorkerEvent::Exited { kind } => {
                let mut state = self.state();
                if let Some(active) = &mut state.active {
                    if let Some(part) = part_of(&mut active.status, kind) {
                        *part = WorkerPart::waiting();
                    }
                }
            }
            WorkerEvent::Session { kind, msg } => self.on_report(kind, msg),
            WorkerEvent::NetRequest { .. } => {}
        }
    }

    /// A fresh capture or encode worker: rebuild the running session under a new generation.
    fn rebuild(&self, restarted: WorkerKind) {
        let mut state = self.state();
        let generation = state.next_generation;
        let Some(active) = &mut state.active else {
            return;
        };
        let remote = match self.pipewire_remote(&active.source) {
            Ok(remote) => remote,
            Err(e) => {
                fail_both(
                    &mut active.status,
                    format!("reconnecting to PipeWire: {e:#}"),
                );
                return;
            }
        };
        let plumbing = match plumbing::build(
            active.params,
            active.source.clone(),
            remote,
            self.config.max_source(),
            generation,
        ) {
            Ok(plumbing) => plumbing,
            Err(e) => {
                fail_both(&mut active.status, format!("rebuilding the session: {e:#}"));
                return;
            }
        };
        tracing::info!(
            generation,
            worker = restarted.name(),
            "rebuilding the media session after a worker start"
        );
        let delivered = match &active.target {
            ConsumerTarget::Recorder(tx) => tx.send(plumbing.consumer).is_ok(),
        };
        if !delivered {
            tracing::debug!("the session's consumer is gone; not rebuilding");
            return;
        }
        active.status.generation = generation;
        active.status.rebuilds += 1;
        active.status.capture = WorkerPart::waiting();
        active.status.encode = WorkerPart::waiting();
        active.capture_start = Some(plumbing.capture);
        // Capture of the old generation stops feeding the dead plumbing now; it starts anew once
        // the encoder of the new one is open.
        self.send(WorkerKind::Capture, (BrokerMsg::StopSession, Vec::new()));
        self.send(WorkerKind::Encode, plumbing.encode);
        state.next_generation += 1;
    }

    fn on_report(&self, kind: WorkerKind, msg: WorkerMsg) {
        let mut state = self.state();
        let Some(active) = &mut state.active else {
            return;
        };
        let current = active.status.generation;
        if kind == WorkerKind::Encode
            && matches!(msg, WorkerMsg::SessionStarted { generation } if generation == current)
        {
            if let Some(start) = active.capture_start.take() {
                self.send(WorkerKind::Capture, start);
            }
        }
        let Some(part) = part_of(&mut active.status, kind) else {
            return;
        };
        match msg {
            WorkerMsg::SessionStarted { generation } if generation == current => {
                part.state = "running".into();
            }
            WorkerMsg::SessionFailed {
                generation,
                message,
            } if generation == current => {
                let shown: String = message.chars().take(1024).collect();
                tracing::warn!(worker = kind.name(), "session failed: {shown}");
                part.state = "failed".into();
                part.error = Some(shown);
            }
            WorkerMsg::SessionStats { generation, stats } if generation == current => {
                part.stats = Some(MediaStats {
                    component: stats.component.chars().take(200).collect(),
                    ..stats
                });
            }
            // Reports of an older generation describe plumbing that is gone.
            _ => {}
        }
    }
}

fn part_of(status: &mut SessionStatus, kind: WorkerKind) -> Option<&mut WorkerPart> {
    match kind {
        WorkerKind::Capture => Some(&mut status.capture),
        WorkerKind::Encode => Some(&mut status.encode),
        WorkerKind::Net | WorkerKind::Input => None,
    }
}

fn fail_both(status: &mut SessionStatus, message: String) {
    tracing::warn!("{message}");
    for part in [&mut status.capture, &mut status.encode] {
        part.state = "failed".into();
        part.error = Some(message.clone());
    }
}

fn describe(source: &CaptureSource) -> String {
    match source {
        CaptureSource::TestPattern => "test-pattern".into(),
        CaptureSource::PipeWire {
            video_node,
            audio_node,
        } => format!(
            "pipewire video={video_node} audio={}",
            audio_node.as_deref().unwrap_or("default-sink-monitor")
        ),
    }
}
