//! The ScreenCast portal path: the real `xdg-desktop-portal` frontend with a test backend that
//! shares a flat-colour screen node of a private PipeWire; the broker configured with
//! `source = "portal"` opens the portal session, hands the sandboxed lumen-capture the portal's
//! PipeWire remote and the node id, and `lumen-broker record` is checked by decoding the result.
//! A killed lumen-capture gets a fresh remote from the same portal session (no second prompt).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use lumen_tests::media::{decode_luma, frame_times, record_session, Recording, Session};
use lumen_tests::pipewire_env::PipeWireEnv;
use lumen_tests::portal_env::{Answer, PortalEnv, ScreenSpec, SharedNode, TestScreen};
use lumen_tests::{signal, worker, Broker, ScratchDir};

/// A flat colour, so the decoded picture can be checked against the node's: 0xAARRGGBB.
const SCREEN_ARGB: u32 = 0xff30_80c0;

/// BT.601 limited-range luma of [`SCREEN_ARGB`] (what x264 gets after swscale).
fn expected_luma() -> f64 {
    let (r, g, b) = (
        f64::from((SCREEN_ARGB >> 16) & 0xff),
        f64::from((SCREEN_ARGB >> 8) & 0xff),
        f64::from(SCREEN_ARGB & 0xff),
    );
    16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
}

/// A private PipeWire with the screen node, and the portal sharing it.
fn environment() -> Result<Option<(PipeWireEnv, TestScreen, PortalEnv)>> {
    let Some(mut pipewire) = PipeWireEnv::start()? else {
        return Ok(None);
    };
    let screen = TestScreen::start(
        &mut pipewire,
        &ScreenSpec {
            name: "lumen-portal-screen".into(),
            width: 1280,
            height: 720,
            fps: 30,
            argb: SCREEN_ARGB,
        },
    )?;
    let Some(portal) = PortalEnv::start(
        &pipewire,
        SharedNode {
            node_id: screen.node_id,
            width: 1280,
            height: 720,
        },
    )?
    else {
        return Ok(None);
    };
    Ok(Some((pipewire, screen, portal)))
}

fn start_broker(
    tag: &str,
    pipewire: &PipeWireEnv,
    portal: &PortalEnv,
    extra: &str,
) -> Result<Broker> {
    let config = format!("[capture]\nsource = \"portal\"\n{extra}");
    let bus = portal.bus_address();
    let runtime = pipewire.runtime_dir().display().to_string();
    Broker::start_with(
        tag,
        &config,
        &[
            ("DBUS_SESSION_BUS_ADDRESS", bus.as_str()),
            ("XDG_RUNTIME_DIR", runtime.as_str()),
        ],
    )
}

fn record_for(broker: &Broker, dir: &ScratchDir, seconds: u32) -> Result<Recording> {
    record_session(
        broker,
        dir.path(),
        &Session {
            seconds,
            ..Session::default()
        },
    )
}

/// The recording decodes and shows the node's colour.
fn check_picture(rec: &Recording, min_frames: usize) -> Result<()> {
    let frames = decode_luma(&rec.video_file(), "h264", 640, 360)?;
    let times = frame_times(&rec.dir)?;
    ensure!(frames.len() == times.len(), "every access unit decodes");
    ensure!(times[0].keyframe, "the stream starts with an IDR");
    let fresh = times.iter().filter(|t| !t.repeat).count();
    ensure!(
        fresh >= min_frames,
        "{fresh} captured frames (wanted {min_frames})"
    );
    let want = expected_luma();
    for (i, frame) in frames.iter().enumerate().step_by(10) {
        let mean = frame.iter().map(|&v| f64::from(v)).sum::<f64>() / frame.len() as f64;
        ensure!(
            (mean - want).abs() < 8.0,
            "frame {i}: mean luma {mean:.1}, the node's colour gives {want:.1}"
        );
    }
    Ok(())
}

#[test]
fn the_portal_screen_is_recorded_and_a_capture_restart_reuses_the_session() -> Result<()> {
    let Some((pipewire, _screen, portal)) = environment()? else {
        return Ok(());
    };
    let broker = start_broker("media-portal", &pipewire, &portal, "")?;
    let status = broker.status()?;
    let capture_pid = worker(&status, "Capture")
        .and_then(|w| w["pid"].as_u64())
        .and_then(|pid| u32::try_from(pid).ok())
        .context("capture pid")?;
    // Kill lumen-capture mid-recording: the supervisor restarts it, the broker rebuilds the
    // session with a fresh remote from the same portal session.
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2500));
        signal(capture_pid, libc::SIGKILL)
    });
    let out = ScratchDir::new("rec-portal")?;
    let rec = record_for(&broker, &out, 6).with_context(|| portal.logs())?;
    killer.join().expect("killer thread")?;

    let session = &rec.reply["session"];
    ensure!(
        session["capture"]["state"] == "running" && session["encode"]["state"] == "running",
        "both workers ran the portal session after the restart: {session}"
    );
    ensure!(
        session["rebuilds"].as_u64().unwrap_or(0) >= 1,
        "the session was rebuilt after capture died: {session}"
    );
    let source = session["source"].as_str().unwrap_or_default();
    ensure!(
        source.contains("portal"),
        "status names the portal: {source}"
    );
    let counts = portal.counts();
    ensure!(
        counts.create_session == 1 && counts.start == 1 && counts.prompts == 1,
        "one portal session served the whole recording: {counts:?}"
    );
    // Embedded is the default cursor mode.
    ensure!(
        portal.cursor_modes() == vec![2],
        "{:?}",
        portal.cursor_modes()
    );
    check_picture(&rec, 90)?;
    // The recording went on after the kill: fresh frames in its last second.
    let times = frame_times(&rec.dir)?;
    let last = times.last().context("no frames")?.captured_ns;
    let late = times
        .iter()
        .filter(|t| !t.repeat && t.captured_ns + 1_000_000_000 > last)
        .count();
    ensure!(late >= 15, "{late} fresh frames in the last second");

    // A second recording on the same broker needs no new portal session either.
    let again = ScratchDir::new("rec-portal-again")?;
    let rec = record_for(&broker, &again, 2)?;
    check_picture(&rec, 30)?;
    ensure!(portal.counts().create_session == 1, "{:?}", portal.counts());
    Ok(())
}

#[test]
fn a_restore_token_spares_the_prompt_after_a_broker_restart() -> Result<()> {
    let Some((pipewire, _screen, portal)) = environment()? else {
        return Ok(());
    };
    let tokens = ScratchDir::new("portal-token")?;
    let token_file = tokens.path().join("portal-restore-token");
    let extra = format!(
        "portal_cursor = \"metadata\"\nportal_restore_token_file = \"{}\"\n",
        token_file.display()
    );
    {
        let broker = start_broker("portal-first", &pipewire, &portal, &extra)?;
        let out = ScratchDir::new("rec-portal-first")?;
        check_picture(&record_for(&broker, &out, 2)?, 30)?;
    }
    let token = std::fs::read_to_string(&token_file).context("the restore token was saved")?;
    ensure!(token.trim().len() == 36, "a UUID token: {token:?}");
    let broker = start_broker("portal-second", &pipewire, &portal, &extra)?;
    let out = ScratchDir::new("rec-portal-second")?;
    check_picture(&record_for(&broker, &out, 2)?, 30)?;
    let counts = portal.counts();
    ensure!(
        counts.create_session == 2 && counts.prompts == 1 && counts.restored == 1,
        "the second broker was let in by its token: {counts:?}"
    );
    ensure!(
        portal.cursor_modes() == vec![4, 4],
        "{:?}",
        portal.cursor_modes()
    );
    Ok(())
}

#[test]
fn a_refused_or_empty_portal_is_a_clear_error_and_the_broker_stays_up() -> Result<()> {
    let Some((pipewire, _screen, portal)) = environment()? else {
        return Ok(());
    };
    let broker = start_broker("portal-refused", &pipewire, &portal, "")?;
    let out = ScratchDir::new("rec-portal-refused")?;
    for (answer, words) in [
        (Answer::Cancel, "declined"),
        (Answer::NoStreams, "ScreenCast portal"),
    ] {
        portal.set_answer(answer);
        let started = Instant::now();
        let err = match record_for(&broker, &out, 2) {
            Ok(rec) => anyhow::bail!("{answer:?}: recorded anyway: {}", rec.reply),
            Err(e) => format!("{e:#}"),
        };
        ensure!(err.contains(words), "{answer:?}: {err}");
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "{answer:?}: the error came at once"
        );
        let status = broker.status()?;
        let capture = &status["media_session"]["capture"];
        ensure!(
            capture["state"] == "failed"
                && capture["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("ScreenCast portal")),
            "{answer:?}: status shows why: {}",
            status["media_session"]
        );
    }
    // Sharing again works on the same broker: nothing is stuck.
    portal.set_answer(Answer::Share);
    check_picture(&record_for(&broker, &out, 2)?, 30)?;
    ensure!(
        lumen_tests::all_workers_running(&broker.status()?),
        "no worker crash-looped"
    );
    Ok(())
}

#[test]
fn a_session_the_desktop_closed_is_reopened_without_a_prompt() -> Result<()> {
    let Some((pipewire, _screen, portal)) = environment()? else {
        return Ok(());
    };
    // No token file: the portal's in-memory (transient) restore token does the job for the
    // broker's lifetime.
    let broker = start_broker("portal-closed", &pipewire, &portal, "")?;
    let capture_pid = worker(&broker.status()?, "Capture")
        .and_then(|w| w["pid"].as_u64())
        .and_then(|pid| u32::try_from(pid).ok())
        .context("capture pid")?;
    let out = ScratchDir::new("rec-portal-closed")?;
    let rec = std::thread::scope(|scope| {
        let recording = scope.spawn(|| record_for(&broker, &out, 5));
        // The desktop ends the session mid-recording (the running capture keeps its stream);
        // the next capture start must open a new one.
        std::thread::sleep(Duration::from_millis(1500));
        let closed = portal.close_sessions()?;
        ensure!(closed == 1, "{closed} sessions were open");
        std::thread::sleep(Duration::from_millis(300));
        signal(capture_pid, libc::SIGKILL)?;
        recording.join().expect("recording thread")
    })
    .with_context(|| portal.logs())?;
    let session = &rec.reply["session"];
    ensure!(
        session["capture"]["state"] == "running" && session["rebuilds"].as_u64() >= Some(1),
        "capture runs again on a new portal session: {session}"
    );
    let counts = portal.counts();
    ensure!(
        counts.create_session == 2 && counts.prompts == 1 && counts.restored == 1,
        "the second session was let in by the restore token: {counts:?}"
    );
    check_picture(&rec, 90)?;
    Ok(())
}

/// A private session bus that starts no services (no `servicedir`), so nothing answers for the
/// portal, and nothing is left running (or unreaped) behind the test.
struct BareBus {
    dir: ScratchDir,
    daemon: std::process::Child,
}

impl BareBus {
    fn start() -> Result<Option<BareBus>> {
        if lumen_tests::pipewire_env::missing_binaries().contains(&"dbus-daemon") {
            let why = "dbus-daemon not found (dist/install-deps.sh installs it)";
            ensure!(std::env::var_os("CI").is_none(), "{why}; CI is set");
            eprintln!("SKIPPED: {why}");
            return Ok(None);
        }
        let dir = ScratchDir::new("bare-bus")?;
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
                 \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
                 <busconfig><type>session</type><listen>unix:path={}</listen>\
                 <policy context=\"default\"><allow send_destination=\"*\" eavesdrop=\"true\"/>\
                 <allow eavesdrop=\"true\"/><allow own=\"*\"/></policy></busconfig>\n",
                socket.display()
            ),
        )?;
        let daemon = std::process::Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("starting dbus-daemon")?;
        let bus = BareBus { dir, daemon };
        let start = Instant::now();
        while !socket.exists() {
            ensure!(
                start.elapsed() < Duration::from_secs(10),
                "dbus-daemon did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(bus))
    }

    fn address(&self) -> String {
        format!("unix:path={}", self.dir.path().join("bus").display())
    }
}

impl Drop for BareBus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

#[test]
fn no_screencast_portal_is_a_clear_error() -> Result<()> {
    let Some(bus) = BareBus::start()? else {
        return Ok(());
    };
    let address = bus.address();
    let broker = Broker::start_with(
        "portal-none",
        "[capture]\nsource = \"portal\"\n",
        &[("DBUS_SESSION_BUS_ADDRESS", address.as_str())],
    )?;
    let out = ScratchDir::new("rec-portal-none")?;
    let err = match record_for(&broker, &out, 2) {
        Ok(rec) => anyhow::bail!("recorded without a portal: {}", rec.reply),
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains("no ScreenCast portal"), "{err}");
    let status = broker.status()?;
    ensure!(
        status["media_session"]["capture"]["state"] == "failed",
        "status shows the failure: {}",
        status["media_session"]
    );
    ensure!(
        lumen_tests::all_workers_running(&status),
        "no worker crash-looped"
    );
    Ok(())
}
