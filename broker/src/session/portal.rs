//! The ScreenCast portal (`org.freedesktop.portal.ScreenCast`): the broker, the only lumen process
//! on D-Bus, asks the desktop for a screen and hands lumen-capture the portal's PipeWire remote.
//!
//! One portal session serves every capture (re)start: asking again would prompt the user each
//! time a worker restarts. Each session build gets a fresh remote (`OpenPipeWireRemote`), since
//! the fd a dead worker held is gone with it. The restore token the portal returns is written to
//! a file, so a broker restart reopens the same screen without a prompt.
//!
//! The portal calls are async (zbus on tokio) but the session code is not, and it runs inside the
//! broker's runtime where blocking on a future is not allowed; so the portal lives on its own
//! thread with its own runtime, and [`Portal::acquire`] waits for its answer with a deadline.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use ashpd::desktop::screencast::{
    CursorMode as PortalCursor, OpenPipeWireRemoteOptions, Screencast, SelectSourcesOptions,
    SourceType,
};
use ashpd::desktop::{PersistMode, ResponseError, Session};
use tokio::sync::mpsc;

use crate::config::CursorMode;

/// How long a session (re)build waits for the portal. Opening a session may show the user a
/// picker, so this is generous; a remote for an open session takes milliseconds.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(90);

/// The portal session's settings.
#[derive(Clone, Debug)]
pub struct PortalConfig {
    pub cursor: CursorMode,
    /// Where the restore token is kept; `None`: only for this broker's lifetime.
    pub token_file: Option<PathBuf>,
}

/// What a session build needs from the portal.
pub struct PortalStream {
    /// The stream's PipeWire node id, as the portal names it.
    pub node_id: u32,
    /// A fresh connection to the portal's PipeWire remote, limited to the stream's node.
    pub remote: OwnedFd,
}

type Reply = std_mpsc::SyncSender<anyhow::Result<PortalStream>>;

/// The broker's ScreenCast portal session; cheap to share. The portal thread ends once the last
/// handle is dropped.
pub struct Portal {
    requests: mpsc::UnboundedSender<Reply>,
}

impl Portal {
    /// Starts the portal thread; nothing talks to D-Bus until the first [`Portal::acquire`].
    pub fn start(config: PortalConfig) -> anyhow::Result<Portal> {
        Portal::start_on(config, None)
    }

    /// [`Portal::start`] on the bus at `bus` instead of the session bus.
    fn start_on(config: PortalConfig, bus: Option<String>) -> anyhow::Result<Portal> {
        let (requests, rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the portal's runtime")?;
        std::thread::Builder::new()
            .name("lumen-portal".into())
            .spawn(move || runtime.block_on(serve(config, bus, rx)))
            .context("starting the portal thread")?;
        Ok(Portal { requests })
    }

    /// The screen-cast node and a fresh remote for it, opening the portal session (and asking
    /// the user, unless a restore token answers for them) when none is open.
    pub fn acquire(&self) -> anyhow::Result<PortalStream> {
        let (reply, answer) = std_mpsc::sync_channel(1);
        self.requests
            .send(reply)
            .map_err(|_| anyhow!("the portal thread has stopped"))?;
        match answer.recv_timeout(ACQUIRE_TIMEOUT) {
            Ok(result) => result,
            Err(std_mpsc::RecvTimeoutError::Timeout) => Err(anyhow!(
                "the ScreenCast portal did not answer within {} s (is a screen-sharing dialog waiting for the user?)",
                ACQUIRE_TIMEOUT.as_secs()
            )),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                Err(anyhow!("the portal thread stopped while opening the screen cast"))
            }
        }
    }
}

/// An open portal session.
struct Open {
    proxy: Screencast,
    session: Session<Screencast>,
    node_id: u32,
}

struct PortalState {
    config: PortalConfig,
    /// The bus address; `None`: the session bus.
    bus: Option<String>,
    /// The last restore token: read from the token file once, replaced after every start.
    token: Option<String>,
    token_loaded: bool,
    connection: Option<zbus::Connection>,
    open: Option<Open>,
}

async fn serve(
    config: PortalConfig,
    bus: Option<String>,
    mut requests: mpsc::UnboundedReceiver<Reply>,
) {
    let mut state = PortalState {
        config,
        bus,
        token: None,
        token_loaded: false,
        connection: None,
        open: None,
    };
    while let Some(reply) = requests.recv().await {
        let result = state.acquire().await;
        if let Err(e) = &result {
            tracing::warn!("{e:#}");
        }
        // The asker may have given up waiting; the session stays open for the next one.
        let _ = reply.send(result);
    }
    if let Some(open) = state.open.take() {
        let _ = open.session.close().await;
    }
}

impl PortalState {
    async fn acquire(&mut self) -> anyhow::Result<PortalStream> {
        if let Some(open) = &self.open {
            match open
                .proxy
                .open_pipe_wire_remote(&open.session, OpenPipeWireRemoteOptions::default())
                .await
            {
                Ok(remote) => {
                    return Ok(PortalStream {
                        node_id: open.node_id,
                        remote,
                    })
                }
                // The desktop closed the session (the user stopped sharing, the compositor
                // restarted): open a new one, which the restore token may answer silently.
                Err(e) => {
                    tracing::info!(
                        "ScreenCast portal: the session is gone ({e}); opening a new one"
                    );
                    self.open = None;
                }
            }
        }
        match self.open_session().await {
            Ok(open) => {
                let remote = open
                    .proxy
                    .open_pipe_wire_remote(&open.session, OpenPipeWireRemoteOptions::default())
                    .await
                    .map_err(|e| explain("OpenPipeWireRemote", e))?;
                let node_id = open.node_id;
                self.open = Some(open);
                Ok(PortalStream { node_id, remote })
            }
            Err(e) => {
                // A bus that failed once is not trusted for the next try.
                self.connection = None;
                Err(e)
            }
        }
    }

    async fn connection(&mut self) -> anyhow::Result<zbus::Connection> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let address = self
            .bus
            .clone()
            .or_else(|| std::env::var("DBUS_SESSION_BUS_ADDRESS").ok());
        let connected = match &self.bus {
            Some(bus) => match zbus::connection::Builder::address(bus.as_str()) {
                Ok(builder) => builder.build().await,
                Err(e) => Err(e),
            },
            None => zbus::Connection::session().await,
        };
        let connection = connected.map_err(|e| {
            anyhow!(
                "no ScreenCast portal: connecting to the session bus ({}) failed: {e}",
                address.unwrap_or_else(|| "DBUS_SESSION_BUS_ADDRESS is not set".into())
            )
        })?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    async fn open_session(&mut self) -> anyhow::Result<Open> {
        let connection = self.connection().await?;
        check_portal_present(&connection).await?;
        let proxy = Screencast::with_connection(connection)
            .await
            .map_err(|e| explain("connecting", e))?;
        // ashpd's create_session asserts the handle the portal returns is the one it asked
        // for; xdg-desktop-portal derives both from the same token, so this holds.
        let session = proxy
            .create_session(Default::default())
            .await
            .map_err(|e| explain("CreateSession", e))?;
        let token = self.restore_token();
        let persist = if self.config.token_file.is_some() {
            PersistMode::ExplicitlyRevoked
        } else {
            PersistMode::Application
        };
        let options = SelectSourcesOptions::default()
            .set_cursor_mode(portal_cursor(self.config.cursor))
            .set_sources(ashpd::enumflags2::BitFlags::from_flag(SourceType::Monitor))
            .set_multiple(false)
            .set_persist_mode(persist)
            .set_restore_token(token.as_deref());
        let selected = proxy
            .select_sources(&session, options)
            .await
            .and_then(|request| request.response());
        if let Err(e) = selected {
            let _ = session.close().await;
            return Err(explain("SelectSources", e));
        }
        let started = proxy
            .start(&session, None, Default::default())
            .await
            .and_then(|request| request.response());
        let streams = match started {
            Ok(streams) => streams,
            Err(e) => {
                let _ = session.close().await;
                return Err(explain("Start", e));
            }
        };
        let Some(stream) = streams.streams().first() else {
            let _ = session.close().await;
            return Err(anyhow!(
                "the ScreenCast portal started a screen cast with no streams (nothing was shared)"
            ));
        };
        let node_id = stream.pipe_wire_node_id();
        if let Some(new_token) = streams.restore_token() {
            self.save_restore_token(new_token);
        }
        tracing::info!(node_id, "ScreenCast portal session started");
        Ok(Open {
            proxy,
            session,
            node_id,
        })
    }

    fn restore_token(&mut self) -> Option<String> {
        if !self.token_loaded {
            self.token_loaded = true;
            if let Some(path) = &self.config.token_file {
                self.token = read_token(path);
            }
        }
        self.token.clone()
    }

    fn save_restore_token(&mut self, token: &str) {
        self.token = Some(token.to_string());
        if let Some(path) = &self.config.token_file {
            if let Err(e) = write_token(path, token) {
                tracing::warn!(
                    "keeping the portal's restore token in {}: {e:#} (the next broker start will ask again)",
                    path.display()
                );
            }
        }
    }
}

/// The portal's bus name.
const PORTAL_NAME: &str = "org.freedesktop.portal.Desktop";

/// Fails with a plain answer when nothing runs or can be started as the portal (D-Bus's own
/// error for that reaches ashpd as an opaque method error).
async fn check_portal_present(connection: &zbus::Connection) -> anyhow::Result<()> {
    let dbus = zbus::fdo::DBusProxy::new(connection)
        .await
        .map_err(|e| anyhow!("no ScreenCast portal: asking the session bus: {e}"))?;
    let name = zbus::names::BusName::try_from(PORTAL_NAME)?;
    if dbus.name_has_owner(name).await.unwrap_or(false) {
        return Ok(());
    }
    let activatable = dbus
        .list_activatable_names()
        .await
        .map(|names| names.iter().any(|n| n.as_str() == PORTAL_NAME))
        .unwrap_or(false);
    if activatable {
        return Ok(());
    }
    Err(anyhow!(
        "no ScreenCast portal: nothing provides {PORTAL_NAME} on the session bus (is xdg-desktop-portal installed, and does the broker run in the user's desktop session?)"
    ))
}

fn portal_cursor(mode: CursorMode) -> PortalCursor {
    match mode {
        CursorMode::Embedded => PortalCursor::Embedded,
        CursorMode::Hidden => PortalCursor::Hidden,
        CursorMode::Metadata => PortalCursor::Metadata,
    }
}

/// A portal error in words a user can act on.
fn explain(step: &str, e: ashpd::Error) -> anyhow::Error {
    match e {
        ashpd::Error::Response(ResponseError::Cancelled) => anyhow!(
            "the ScreenCast portal: {step} was cancelled (screen sharing was declined)"
        ),
        ashpd::Error::Response(ResponseError::Other) => anyhow!(
            "the ScreenCast portal: {step} failed (the desktop's portal backend refused or offered nothing to share)"
        ),
        ashpd::Error::PortalNotFound(_) => anyhow!(
            "no ScreenCast portal: xdg-desktop-portal runs without a ScreenCast backend for this desktop (install the desktop's portal backend, e.g. xdg-desktop-portal-gnome, -kde or -wlr)"
        ),
        e if e.to_string().contains("ServiceUnknown")
            || e.to_string().contains("not provided by any .service files") =>
        {
            anyhow!(
            "no ScreenCast portal: nothing provides {PORTAL_NAME} on the session bus (is xdg-desktop-portal installed?): {e}"
        )
        }
        e => anyhow!("the ScreenCast portal: {step}: {e}"),
    }
}

/// The saved restore token, if it looks like one (the portal hands out UUIDs; anything else is
/// a damaged file and would only make the portal refuse the request).
fn read_token(path: &Path) -> Option<String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("reading the portal's restore token {}: {e}", path.display());
            return None;
        }
    };
    let token = text.trim();
    let uuid_like = token.len() == 36 && token.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if uuid_like {
        Some(token.to_string())
    } else {
        tracing::warn!(
            "ignoring {}: not a portal restore token (the user will be asked again)",
            path.display()
        );
        None
    }
}

/// Writes the token next to its final place and renames it over, so a crash never leaves half
/// a token; mode 0600, since it lets its holder record the screen without asking.
fn write_token(path: &Path, token: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lumen-portal-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_token_survives_a_restart_and_a_damaged_one_is_ignored() {
        let dir = scratch("token");
        let path = dir.join("portal-restore-token");
        assert_eq!(read_token(&path), None);
        let token = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        write_token(&path, token).unwrap();
        assert_eq!(read_token(&path).as_deref(), Some(token));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "../../etc/passwd\n").unwrap();
        assert_eq!(read_token(&path), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_session_bus_is_a_clear_error_and_the_portal_stays_up() {
        let portal = Portal::start_on(
            PortalConfig {
                cursor: CursorMode::Embedded,
                token_file: None,
            },
            Some("unix:path=/nonexistent/lumen/bus".into()),
        )
        .unwrap();
        for _ in 0..2 {
            let err = portal.acquire().err().expect("no bus, no stream");
            let text = format!("{err:#}");
            assert!(text.contains("no ScreenCast portal"), "{text}");
            assert!(text.contains("/nonexistent/lumen/bus"), "{text}");
        }
    }
}
