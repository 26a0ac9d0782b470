//! `lumen-broker`: the privileged-but-small process of lumen. It holds the host identity and the
//! paired clients, binds the LAN sockets, spawns and supervises the sandboxed workers, and answers
//! the CLI over its control socket. It never parses a byte from the network itself.

mod cli;
mod config;
mod control;
mod dispatch;
mod input;
mod logging;
mod mdns_refresh;
mod net_service;
mod net_stats;
mod pairing;
mod paths;
mod procstatus;
mod session;
mod sockets;
mod spawn;
mod state;
mod supervisor;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use cli::{Cli, Command, ServeArgs};
use config::Config;
use control::{BrokerView, ControlServer, PortStatus};
use pairing::PairingSlot;
use paths::Paths;
use state::clients::ClientStore;
use state::identity::Identity;
use supervisor::{Supervisor, SupervisorConfig};

/// Everything the workers get to finish before SIGTERM handling gives up on them.
const SHUTDOWN_DEADLINE: Duration = Duration::from_millis(1500);

/// Overrides how long `pair` waits for a client, in milliseconds. It exists so the test suite can
/// check the honest timeout without waiting the full 60 s; it is not a user setting.
const PAIR_WAIT_ENV: &str = "LUMEN_PAIR_WAIT_MS";

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("lumen-broker: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let paths = Paths::resolve(cli.state_dir.as_deref())?;
    match cli.command {
        None => serve(&paths, ServeArgs::default()),
        Some(Command::Serve(args)) => serve(&paths, args),
        Some(command) => cli::run_client(&paths, &command),
    }
}

fn serve(paths: &Paths, args: ServeArgs) -> anyhow::Result<()> {
    logging::init();
    let config = Config::load(&paths.config_file)?;
    let bind = args.bind.unwrap_or(config.bind);
    let port_base = args.port_base.unwrap_or(config.port_base);
    let mdns = config.mdns && !args.no_mdns;
    paths.ensure_dirs()?;

    let mut problems = Vec::new();
    let loaded = Identity::load_or_create(&paths.state_dir).context("host identity")?;
    for aside in &loaded.set_aside {
        if loaded.interrupted_first_start {
            // Written before `uniqueid`, which never came: no client can have paired with it.
            tracing::warn!("host identity: {aside}; an earlier first start was interrupted");
        } else {
            tracing::error!(
                "host identity: {aside}; a new identity was made and every client must pair again"
            );
            problems.push(format!("host identity: {aside}"));
        }
    }
    if loaded.created {
        tracing::info!(uniqueid = %loaded.identity.uniqueid, "made a new host identity");
    }
    let (clients, aside) = ClientStore::load(&paths.state_dir).context("paired-client store")?;
    if let Some(aside) = aside {
        tracing::error!("paired-client store: {aside}; starting with no paired clients");
        problems.push(format!("paired-client store: {aside}"));
    }

    let worker_dir = std::env::current_exe()
        .context("locating lumen-broker")?
        .parent()
        .context("lumen-broker has no parent directory")?
        .to_path_buf();
    let worker_uid = rustix::process::geteuid()
        .is_root()
        .then_some((config.sandbox.worker_uid, config.sandbox.worker_gid));
    let supervisor_config = SupervisorConfig {
        worker_dir,
        allow_missing_seccomp: args.insecure_allow_missing_seccomp,
        allow_missing_landlock: args.insecure_allow_missing_landlock,
        worker_uid,
    };
    let pair_wait = std::env::var(PAIR_WAIT_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(pairing::DEFAULT_WAIT, Duration::from_millis);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        // The control socket first: a second broker on the same state dir stops here, before it
        // touches ports or workers.
        let control = ControlServer::bind(&paths.control_socket)?;
        let sockets = sockets::LanSockets::bind(bind, port_base, mdns)?;
        if let Some(problem) = sockets.mdns_problem() {
            tracing::warn!("{problem}");
            problems.push(problem.to_owned());
        }
        let ports: Vec<PortStatus> = sockets
            .ports()
            .into_iter()
            .map(|(role, port)| PortStatus { role, port })
            .collect();
        let supervisor = Supervisor::start(supervisor_config, sockets).await?;
        let sessions = session::Sessions::new(supervisor.clone(), config.capture.clone())
            .with_state_dir(paths.state_dir.clone());
        let clients = Arc::new(Mutex::new(clients));
        let pairing = PairingSlot::new(pair_wait);
        let net = Arc::new(net_service::NetService::new(
            loaded.identity.clone(),
            clients.clone(),
            pairing.clone(),
        )?
        .with_video_encryption(config.stream.encrypt_video));
        let net_stats = net_stats::NetStatsBook::default();
        let input = Arc::new(input::InputPlumbing::new(
            supervisor.clone(),
            config.input.clone(),
        ));
        dispatch::start(
            supervisor.clone(),
            sessions.clone(),
            net,
            net_stats.clone(),
            input.clone(),
        )?;
        mdns_refresh::spawn(supervisor.clone());
        tracing::info!(%bind, port_base, socket = %paths.control_socket.display(), "lumen-broker serving");
        let view = Arc::new(BrokerView {
            workers: Box::new({
                let supervisor = supervisor.clone();
                move || supervisor.status()
            }),
            uniqueid: loaded.identity.uniqueid.clone(),
            bind,
            ports,
            clients,
            problems,
            pairing,
            sessions: Some(sessions),
            net_stats,
            input: Some(input),
        });
        let signal = wait_for_stop_signal()?;
        tokio::select! {
            () = control.serve(view) => {}
            name = signal => tracing::info!("{name}: shutting down"),
        }
        supervisor.shutdown(SHUTDOWN_DEADLINE).await;
        drop(control);
        anyhow::Ok(())
    });
    // Connection tasks still open must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}

/// Resolves to the name of the first SIGTERM or SIGINT.
fn wait_for_stop_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}
