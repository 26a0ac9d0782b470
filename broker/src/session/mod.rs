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
pub mod portal;
pub mod recorder;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
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
    /// lumen-net, streaming to a client; rings go out as `BrokerMsg::StreamRings`.
    Net,
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

impl SessionStatus {
    fn new(params: SessionParams, source: String, generation: Generation) -> SessionStatus {
        SessionStatus {
            params,
            source,
            generation,
            rebuilds: 0,
            started_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            active: true,
            capture: WorkerPart::waiting(),
            encode: WorkerPart::waiting(),
        }
    }
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
    /// False once the session ended (`status` keeps showing the last one, e.g. its failure).
    pub active: bool,
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
    /// The ScreenCast portal session, opened on first use (`source = "portal"`).
    portal: Arc<Mutex<Option<portal::Portal>>>,
    /// Where the portal's restore token is kept unless the config names a file.
    state_dir: Option<PathBuf>,
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
            portal: Arc::new(Mutex::new(None)),
            state_dir: None,
        }
    }

    /// Keeps the portal's restore token in `state_dir` (unless the config names a file), so a
    /// broker restart reopens the same screen without asking the user.
    // Until `main.rs` calls it, the token lives as long as the broker unless the config names a
    // file.
    pub fn with_state_dir(mut self, state_dir: PathBuf) -> Sessions {
        self.state_dir = Some(state_dir);
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What capture captures and, for PipeWire, a fresh remote: every (re)build gets its own,
    /// since the one a dead worker held is gone with it.
    fn source_and_remote(&self) -> anyhow::Result<(CaptureSource, Option<OwnedFd>)> {
        match self.config.source {
            SourceKind::TestPattern => Ok((CaptureSource::TestPattern, None)),
            SourceKind::Pipewire => {
                let remote = pipewire_remote::connect(self.config.pipewire_socket.as_deref())?;
                let source = CaptureSource::PipeWire {
                    video_node: self.config.video_node.clone(),
                    audio_node: self.config.audio_node.clone(),
                };
                Ok((source, Some(remote)))
            }
            SourceKind::Portal => {
                let stream = self.portal_stream()?;
                // The portal's remote shows the shared screen's node only, so there is no
                // sound to name on it.
                let source = CaptureSource::PipeWire {
                    video_node: stream.node_id.to_string(),
                    audio_node: None,
                };
                Ok((source, Some(stream.remote)))
            }
        }
    }

    fn describe(&self, source: &CaptureSource) -> String {
        match self.config.source {
            SourceKind::Portal => format!("screencast portal: {}", describe(source)),
            SourceKind::TestPattern | SourceKind::Pipewire => describe(source),
        }
    }

    fn portal_stream(&self) -> anyhow::Result<portal::PortalStream> {
        let mut slot = self.portal.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            let token_file = self.config.portal_restore_token_file.clone().or_else(|| {
                self.state_dir
                    .as_ref()
                    .map(|dir| dir.join("portal-restore-token"))
            });
            *slot = Some(portal::Portal::start(portal::PortalConfig {
                cursor: self.config.portal_cursor,
                token_file,
            })?);
        }
        match slot.as_ref() {
            Some(portal) => portal.acquire(),
            None => anyhow::bail!("the ScreenCast portal did not start"),
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
        // Before taking the state: opening the portal may wait for the user.
        let (source, remote) = match self.source_and_remote() {
            Ok(found) => found,
            Err(e) => {
                let mut status = SessionStatus::new(params, "unavailable".into(), 0);
                status.active = false;
                fail_both(&mut status, format!("{e:#}"));
                self.state().last = Some(status);
                return Err(e);
            }
        };
        let mut state = self.state();
        let generation = state.next_generation;
        state.next_generation += 1;
        let plumbing = plumbing::build(
            params,
            source.clone(),
            remote,
            self.config.max_source(),
            generation,
        )?;
        self.send(WorkerKind::Encode, plumbing.encode);
        let status = SessionStatus::new(params, self.describe(&source), generation);
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
            state.last = Some(SessionStatus {
                active: false,
                ..active.status
            });
        }
    }

    /// Hands lumen-net the consumer's ends of a generation (`BrokerMsg::StreamRings`).
    pub fn send_rings_to_net(&self, ends: ConsumerEnds) {
        let fds = vec![
            ends.video.memfd,
            ends.video.doorbell,
            ends.audio.memfd,
            ends.audio.doorbell,
            OwnedFd::from(ends.control),
        ];
        self.send(
            WorkerKind::Net,
            (
                BrokerMsg::StreamRings {
                    generation: ends.generation,
                },
                fds,
            ),
        );
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
            WorkerEvent::Exited {
                kind: WorkerKind::Net,
            } => {
                // The stream in flight ends with the worker that served it (DESIGN: a net
                // restart ends the session; pairing state is untouched).
                let streaming = matches!(
                    self.state().active.as_ref().map(|a| &a.target),
                    Some(ConsumerTarget::Net)
                );
                if streaming {
                    self.stop_session();
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
        if self.state().active.is_none() {
            return;
        }
        // Outside the state lock: reopening a portal session may wait for the user, and status
        // must still answer meanwhile.
        let found = self.source_and_remote();
        let mut state = self.state();
        let generation = state.next_generation;
        let Some(active) = &mut state.active else {
            return;
        };
        let (source, remote) = match found {
            Ok(found) => found,
            Err(e) => {
                fail_both(
                    &mut active.status,
                    format!("reconnecting to the capture source: {e:#}"),
                );
                return;
            }
        };
        // A reopened portal session may name another node.
        active.status.source = self.describe(&source);
        active.source = source;
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
            ConsumerTarget::Net => {
                self.send_rings_to_net(plumbing.consumer);
                true
            }
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
