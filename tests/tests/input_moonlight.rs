//! Input end to end with the real client: a stock Moonlight client (moonlight-python 0.3.0, its
//! bundled libmoonlight-common-c, driven by tests/python/input_client.py) pairs with the real
//! broker, streams the test pattern at 640x360@30 in H.264, and while frames flow calls the
//! library's own `LiSend*` functions: keys with modifiers, a keypad and a media key, relative and
//! absolute mouse moves, every button, vertical and horizontal high-resolution scroll, ASCII and
//! non-ASCII text, a touch, a pen and a gamepad. The events cross lumen-net (ENet control stream,
//! §8 decoder) and the net ↔ input channel into the sandboxed lumen-input, which injects them
//! into an EIS server written with `reis::eis` (`lumen_tests::eis_server`), the broker having
//! connected it through `[input] eis_socket`. The server must see exactly the events sent, in
//! order, with evdev codes and coordinates scaled to its region; the gamepad (no /dev/uinput
//! here) must be counted as dropped. The client then quits the app while holding Ctrl and the
//! right button: nothing may stay held at the EIS server.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use lumen_tests::eis_server::{Connection, EisServer, Seen, REGION};
use lumen_tests::moonlight::{finish_client, python, start_script};
use lumen_tests::{Broker, ScratchDir};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const WIDTH: u32 = 640;
const HEIGHT: u32 = 360;
const FPS: u32 = 30;

/// evdev codes (linux/input-event-codes.h).
const KEY_F13: u32 = 183;
const KEY_F14: u32 = 184;
const KEY_LEFTSHIFT: u32 = 42;
const KEY_LEFTCTRL: u32 = 29;
const KEY_A: u32 = 30;
const KEY_C: u32 = 46;
const KEY_KP5: u32 = 76;
const KEY_PLAYPAUSE: u32 = 164;
const BTN_LEFT: u32 = 0x110;
const BTN_RIGHT: u32 = 0x111;
const BTN_MIDDLE: u32 = 0x112;
const BTN_SIDE: u32 = 0x113;
const BTN_EXTRA: u32 = 0x114;

fn key(key: u32, down: bool) -> Seen {
    Seen::Key { key, down }
}

fn tap(code: u32) -> [Seen; 2] {
    [key(code, true), key(code, false)]
}

fn click(button: u32) -> [Seen; 2] {
    [
        Seen::Button { button, down: true },
        Seen::Button {
            button,
            down: false,
        },
    ]
}

/// A point of the EIS region, from a fraction of the output (as lumen-input scales it).
fn in_region(fx: f32, fy: f32) -> (f32, f32) {
    let (rx, ry, rw, rh) = REGION;
    (rx as f32 + fx * rw as f32, ry as f32 + fy * rh as f32)
}

/// What input_client.py's SEQUENCE must arrive as, between the start marker (F13, excluded)
/// and the end marker (F14, excluded).
fn expected() -> Vec<Seen> {
    // LiSendMousePositionEvent(x, y, W, H) sends W-1 and H-1 as the reference plane
    // (InputStream.c: a GFE rounding workaround); the host's decoder adds the one back, so the
    // position is x / W of the output.
    let (rw, rh) = (WIDTH as f32, HEIGHT as f32);
    let position = |x: u32, y: u32| {
        let (x, y) = in_region(x as f32 / rw, y as f32 / rh);
        Seen::Absolute { x, y }
    };
    let (t0x, t0y) = in_region(0.25, 0.5);
    let (t1x, t1y) = in_region(0.5, 0.75);
    let (hx, hy) = in_region(0.75, 0.25);
    let (px, py) = in_region(0.5, 0.5);
    let mut seen = vec![
        // Shift+A, Ctrl+C: the modifier keys are events of their own.
        key(KEY_LEFTSHIFT, true),
        key(KEY_A, true),
        key(KEY_A, false),
        key(KEY_LEFTSHIFT, false),
        key(KEY_LEFTCTRL, true),
        key(KEY_C, true),
        key(KEY_C, false),
        key(KEY_LEFTCTRL, false),
    ];
    seen.extend(tap(KEY_KP5));
    seen.extend(tap(KEY_PLAYPAUSE));
    seen.extend([
        Seen::Motion { dx: -5.0, dy: 7.0 },
        Seen::Motion {
            dx: 300.0,
            dy: -2.0,
        },
        position(WIDTH / 4, HEIGHT / 2),
        position(WIDTH / 2, HEIGHT / 4),
        position(WIDTH - 1, HEIGHT - 1),
    ]);
    for button in [BTN_LEFT, BTN_MIDDLE, BTN_RIGHT, BTN_SIDE, BTN_EXTRA] {
        seen.extend(click(button));
    }
    seen.extend([
        // Windows wheel units, positive up/right, become libei discrete units, positive
        // down/right; high-resolution amounts pass unchanged.
        Seen::ScrollDiscrete { dx: 0, dy: -120 },
        Seen::ScrollDiscrete { dx: 0, dy: 30 },
        Seen::ScrollDiscrete { dx: 60, dy: 0 },
        Seen::ScrollDiscrete { dx: -240, dy: 0 },
        // Text: one ei_text event per character, whatever the script.
        Seen::Text("H".into()),
        Seen::Text("i".into()),
        Seen::Text("é".into()),
        Seen::Text("€".into()),
        Seen::TouchDown {
            id: 7,
            x: t0x,
            y: t0y,
        },
        Seen::TouchMotion {
            id: 7,
            x: t1x,
            y: t1y,
        },
        Seen::TouchUp { id: 7 },
        // The pen is an absolute pointer whose tip is the left button.
        Seen::Absolute { x: hx, y: hy },
        Seen::Absolute { x: px, y: py },
        Seen::Button {
            button: BTN_LEFT,
            down: true,
        },
        Seen::Button {
            button: BTN_LEFT,
            down: false,
        },
        // The gamepad's arrival and states have no device here: nothing is injected.
    ]);
    seen
}

/// moonlight-common-c adds a relative move to one still queued (InputStream.c): the protocol
/// guarantees the sum and the order against other events, not the number of packets. Runs of
/// relative motion are compared by their sum.
fn merge_motion(events: Vec<Seen>) -> Vec<Seen> {
    let mut out: Vec<Seen> = Vec::with_capacity(events.len());
    for e in events {
        if let (Some(Seen::Motion { dx, dy }), Seen::Motion { dx: ex, dy: ey }) =
            (out.last_mut(), &e)
        {
            *dx += ex;
            *dy += ey;
            continue;
        }
        out.push(e);
    }
    out
}

/// The input events of `c` after the start marker's release and before the end marker's press,
/// and everything from the end marker on.
fn between_markers(c: &Connection) -> Result<(Vec<Seen>, Vec<Seen>)> {
    let input = c.input();
    let start = input
        .iter()
        .position(|s| *s == key(KEY_F13, false))
        .context("the start marker (F13) never arrived")?;
    let end = input
        .iter()
        .position(|s| *s == key(KEY_F14, true))
        .context("the end marker (F14) never arrived")?;
    ensure!(start < end, "the markers arrived out of order: {input:#?}");
    Ok((input[start + 1..end].to_vec(), input[end..].to_vec()))
}

fn input_stats(status: &Value) -> &Value {
    &status["input"]["stats"]
}

#[test]
fn moonlight_input_reaches_the_eis_server_as_sent() -> Result<()> {
    let python = python()?;
    let scratch = ScratchDir::new("input-moonlight")?;
    let socket = scratch.path().join("eis-0");
    let eis = EisServer::listen(&socket)?;
    let config = format!("[input]\neis_socket = \"{}\"\n", socket.display());
    let broker = Broker::start_with_config("input-moonlight", &config)?;
    eis.wait_for("lumen-input to bind", WAIT, |c| {
        c.first()
            .is_some_and(|c| c.seen.iter().any(|s| matches!(s, Seen::Bound { .. })))
    })?;

    let dir = scratch.path().join("identity").display().to_string();
    lumen_tests::moonlight::pair_on_loopback(&broker, &python, &dir)?;

    let port = broker.port_base.to_string();
    let (w, h, fps) = (WIDTH.to_string(), HEIGHT.to_string(), FPS.to_string());
    let client = start_script(
        &python,
        "input_client.py",
        &["input", "127.0.0.1", &port, &dir, &w, &h, &fps],
    )?;
    let result = finish_client(client, Duration::from_secs(150), "input", || Ok(()))?;
    eprintln!("client says {result}");
    ensure!(result.get("error").is_none(), "the client failed: {result}");
    // Frames kept coming while the input was sent.
    ensure!(
        result["frames_during"].as_u64().unwrap_or(0) >= 10,
        "too few frames decoded while sending input: {result}"
    );
    let calls = result["calls"]
        .as_array()
        .context("no calls in the summary")?;
    // Every call of SEQUENCE ran (taps and clicks are two calls each).
    ensure!(
        calls.len() == 48,
        "expected 48 LiSend* calls, got {}",
        calls.len()
    );
    for call in calls {
        ensure!(
            call[1] == 0,
            "LiSend* call {} returned {}",
            call[0],
            call[1]
        );
    }
    ensure!(
        result["terminated"] == true,
        "quitting the app did not end the stream: {result}"
    );

    // Quitting while Ctrl and the right button are held: the host lets go of both.
    let connections = eis.wait_for("Ctrl and the right button released", WAIT, |c| {
        c.first().is_some_and(|c| {
            c.held_keys().is_empty()
                && c.held_buttons().is_empty()
                && c.seen.contains(&key(KEY_F14, false))
        })
    })?;
    ensure!(
        connections.len() == 1 && connections[0].open,
        "lumen-input was restarted or lost its EIS connection: {connections:#?}"
    );
    let (between, after) = between_markers(&connections[0])?;
    assert_eq!(merge_motion(between), merge_motion(expected()));
    assert_eq!(
        after,
        vec![
            key(KEY_F14, true),
            key(KEY_F14, false),
            key(KEY_LEFTCTRL, true),
            Seen::Button {
                button: BTN_RIGHT,
                down: true
            },
            key(KEY_LEFTCTRL, false),
            Seen::Button {
                button: BTN_RIGHT,
                down: false
            },
        ],
        "after the end marker: the held key and button, then their release at stream end"
    );
    assert!(connections[0].held_touches().is_empty());

    // The gamepad: the arrival packet, the empty state LiSendControllerArrivalEvent adds, and two
    // states, each dropped for want of a device; nothing else was dropped.
    if Path::new("/dev/uinput").exists() {
        // A machine with uinput makes a real pad of it; only the drop path is checked here.
        return Ok(());
    }
    let status = broker.wait_until(WAIT, "the gamepad drops in input statistics", |s| {
        input_stats(s)["dropped_no_device"].as_u64() >= Some(4)
            && input_stats(s)["released"].as_u64() >= Some(2)
    })?;
    let stats = input_stats(&status);
    assert_eq!(stats["dropped_no_device"], 4, "{stats}");
    assert_eq!(stats["dropped_invalid"], 0, "{stats}");
    assert_eq!(stats["dropped_rate"], 0, "{stats}");
    assert_eq!(stats["pads"], 0, "{stats}");
    assert_eq!(stats["released"], 2, "{stats}");
    assert_eq!(
        status["input"]["gamepads_unavailable"], "/dev/uinput missing",
        "{}",
        status["input"]
    );
    Ok(())
}

/// `eis_socket = "portal"`: ConnectToEIS is RemoteDesktop version 2 (xdg-desktop-portal 1.17),
/// which the 1.16 frontend here lacks, so the broker has no portal client; status must say what
/// is missing, and lumen-input still runs (for gamepads).
#[test]
fn the_portal_eis_source_says_what_is_missing() -> Result<()> {
    let broker = Broker::start_with_config("input-portal", "[input]\neis_socket = \"portal\"\n")?;
    let status = broker.wait_until(WAIT, "input statistics in status", |s| {
        !input_stats(s).is_null()
    })?;
    let eis = status["input"]["eis"].as_str().unwrap_or_default();
    ensure!(
        eis.starts_with("unavailable: ")
            && eis.contains("ConnectToEIS")
            && eis.contains("xdg-desktop-portal 1.17"),
        "status input.eis: {eis:?}"
    );
    let table = String::from_utf8(broker.cli(&["status"])?.stdout)?;
    ensure!(table.contains("ConnectToEIS"), "{table}");
    Ok(())
}
