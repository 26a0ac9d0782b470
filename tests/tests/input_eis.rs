//! `lumen-input` against a real EIS peer (`lumen_tests::eis_server`, written with `reis::eis`).
//!
//! The worker binary is started the way the broker starts it (fd 3 = its control channel,
//! `--worker`, cleared environment) and locks itself down as in production; the test plays the
//! broker (handing over the EIS connection and the net ↔ input channel) and `lumen-net` (sending
//! `NetToInput`). It checks that every input kind arrives as the right EIS event, in order, with
//! the right key codes and scaled coordinates; that out-of-range events are dropped and counted;
//! and that nothing stays held after stream end, channel loss, shutdown or SIGKILL. The last test
//! runs the real broker with `[input] eis_socket`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lumen_ipc::channel::Channel;
use lumen_ipc::input::{
    InputEvent, InputStats, MouseButton, NetToInput, PadKind, ScrollAxis, TouchKind,
};
use lumen_ipc::msg::{BrokerMsg, WorkerMsg, WORKER_FLAG};
use lumen_tests::eis_server::{Connection, EisServer, Seen, REGION};

const WAIT: Duration = Duration::from_secs(20);

/// A `lumen-input` worker started as the broker starts it.
struct Worker {
    child: Child,
    broker: Channel,
}

impl Worker {
    fn start() -> Result<Worker> {
        let (mut broker, worker_end) = Channel::pair()?;
        let fd = worker_end.as_raw_fd();
        let mut command = Command::new(lumen_tests::bin("lumen-input")?);
        command
            .arg(WORKER_FLAG)
            .env_clear()
            .stdin(Stdio::null())
            // Piped, not inherited: a worker may not grow files (RLIMIT_FSIZE 0), so when the
            // test's stderr is a file (CI's log), the worker's first line would kill it (SIGXFSZ).
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        lumen_tests::pass_channel_as_fd3(&mut command, fd);
        let mut child = command.spawn().context("starting lumen-input")?;
        if let Some(stderr) = child.stderr.take() {
            lumen_tests::forward_lines(stderr, "lumen-input");
        }
        drop(worker_end);
        let ready = broker
            .recv_timeout::<WorkerMsg>(WAIT)
            .context("waiting for Ready")?;
        if !matches!(ready.msg, WorkerMsg::Ready { .. }) {
            bail!("first message is {:?}, not Ready", ready.msg);
        }
        Ok(Worker { child, broker })
    }

    /// Hands over an EIS connection (and no uinput) and a fresh net channel; returns net's end.
    fn wire(&self, eis: &EisServer) -> Result<Channel> {
        let stream = eis.connect_pair()?;
        let fd = OwnedFd::from(stream);
        self.broker.send(
            &BrokerMsg::InputDevices {
                eis: true,
                uinput: 0,
            },
            &[fd.as_fd()],
        )?;
        let (net, input_end) = Channel::pair()?;
        self.broker
            .send(&BrokerMsg::InputChannel, &[input_end.as_fd()])?;
        net.send(
            &NetToInput::StreamStarted {
                width: 1280,
                height: 720,
            },
            &[],
        )?;
        Ok(net)
    }

    /// The next `InputStats` whose check holds (they come about once a second).
    fn stats_until(&mut self, check: impl Fn(&InputStats) -> bool) -> Result<InputStats> {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        while Instant::now() < deadline {
            let received = match self
                .broker
                .recv_timeout::<WorkerMsg>(Duration::from_secs(2))
            {
                Ok(r) => r,
                Err(lumen_ipc::channel::ChannelError::Timeout(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            if let WorkerMsg::InputStats(stats) = received.msg {
                if check(&stats) {
                    return Ok(stats);
                }
                last = Some(stats);
            }
        }
        bail!("no matching InputStats within {WAIT:?}; last {last:?}")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key(vk: u8, down: bool) -> InputEvent {
    InputEvent::Key {
        down,
        vk,
        modifiers: 0,
        no_normalize: false,
    }
}

fn send(net: &Channel, events: Vec<InputEvent>) -> Result<()> {
    net.send(&NetToInput::Events(events), &[])?;
    Ok(())
}

/// Sends F24 taps until the server has seen one on connection `index` (devices bound and
/// resumed), and returns how many events that connection had seen by then.
fn wait_until_injecting(eis: &EisServer, net: &Channel, index: usize) -> Result<usize> {
    const F24: u32 = 194;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        send(net, vec![key(0x87, true), key(0x87, false)])?;
        std::thread::sleep(Duration::from_millis(50));
        let connections = eis.connections();
        if let Some(c) = connections.get(index) {
            if let Some(at) = c.seen.iter().rposition(|s| {
                *s == Seen::Key {
                    key: F24,
                    down: false,
                }
            }) {
                // Let taps still in flight land before the test's own events.
                std::thread::sleep(Duration::from_millis(100));
                let connections = eis.connections();
                return Ok(connections[index].seen.len().max(at + 1));
            }
        }
    }
    bail!(
        "lumen-input never injected a key; the server saw {:#?}",
        eis.connections()
    )
}

/// The input events connection `c` saw from `from` on, without probe taps still in flight.
fn input_after(c: &Connection, from: usize) -> Vec<Seen> {
    Connection {
        seen: c.seen[from..].to_vec(),
        open: c.open,
    }
    .input()
    .into_iter()
    .filter(|s| !matches!(s, Seen::Key { key: 194, .. }))
    .collect()
}

#[test]
fn every_input_kind_reaches_the_eis_server_as_the_right_event() -> Result<()> {
    let eis = EisServer::start()?;
    let mut worker = Worker::start()?;
    let net = worker.wire(&eis)?;
    let connections = eis.wait_for("bind", WAIT, |c| {
        c.first()
            .is_some_and(|c| c.seen.iter().any(|s| matches!(s, Seen::Bound { .. })))
    })?;
    assert_eq!(
        connections[0].seen[0],
        Seen::Connected {
            name: "lumen-input".into()
        }
    );
    let from = wait_until_injecting(&eis, &net, 0)?;

    let touch = |kind, x: f32, y: f32| InputEvent::Touch {
        kind,
        pointer_id: 3,
        x,
        y,
        pressure_or_distance: 0.5,
        contact_major: 0.1,
        contact_minor: 0.1,
        rotation: None,
    };
    send(
        &net,
        vec![
            key(0xA0, true), // left shift
            key(b'A', true),
            key(b'A', false),
            key(0xA0, false),
            key(0x6B, true), // keypad +
            key(0x6B, false),
            key(0xAF, true), // volume up
            key(0xAF, false),
            InputEvent::MouseMove { dx: -5, dy: 7 },
            // Half-way across a 1920x1080 plane: the middle of the device's region.
            InputEvent::MousePosition {
                x: 960,
                y: 540,
                ref_width: 1920,
                ref_height: 1080,
            },
            InputEvent::MouseButton {
                button: MouseButton::Left,
                down: true,
            },
            InputEvent::MouseButton {
                button: MouseButton::Left,
                down: false,
            },
            InputEvent::MouseButton {
                button: MouseButton::X2,
                down: true,
            },
            InputEvent::MouseButton {
                button: MouseButton::X2,
                down: false,
            },
            InputEvent::Scroll {
                axis: ScrollAxis::Vertical,
                amount: 120,
            },
            InputEvent::Scroll {
                axis: ScrollAxis::Horizontal,
                amount: -60,
            },
            InputEvent::Text('é'),
            touch(TouchKind::Down, 0.25, 0.5),
            touch(TouchKind::Move, 0.75, 1.0),
            touch(TouchKind::Up, 0.75, 1.0),
        ],
    )?;
    // Out of range: dropped and counted, never injected.
    send(
        &net,
        vec![
            InputEvent::MousePosition {
                x: 1920,
                y: 0,
                ref_width: 1920,
                ref_height: 1080,
            },
            InputEvent::Key {
                down: true,
                vk: b'B',
                modifiers: 0x40,
                no_normalize: false,
            },
            InputEvent::Text('\u{8}'),
            touch(TouchKind::Down, 1.5, 0.5),
        ],
    )?;
    // No uinput was handed over: a pad has no device.
    send(
        &net,
        vec![InputEvent::GamepadArrival {
            pad: 0,
            kind: PadKind::Xbox,
            capabilities: 0,
            supported_buttons: 0,
        }],
    )?;
    // A marker, so the test knows everything before it has arrived.
    send(&net, vec![key(0x7C, true), key(0x7C, false)])?;
    let connections = eis.wait_for("the marker key", WAIT, |c| {
        c[0].seen.contains(&Seen::Key {
            key: 183,
            down: false,
        })
    })?;

    let (rx, ry, rw, rh) = REGION;
    let at = |fx: f32, fy: f32| (rx as f32 + fx * rw as f32, ry as f32 + fy * rh as f32);
    let (mx, my) = at(0.5, 0.5);
    let (t0x, t0y) = at(0.25, 0.5);
    let (t1x, t1y) = at(0.75, 1.0);
    let expected = vec![
        Seen::Key {
            key: 42,
            down: true,
        },
        Seen::Key {
            key: 30,
            down: true,
        },
        Seen::Key {
            key: 30,
            down: false,
        },
        Seen::Key {
            key: 42,
            down: false,
        },
        Seen::Key {
            key: 78,
            down: true,
        },
        Seen::Key {
            key: 78,
            down: false,
        },
        Seen::Key {
            key: 115,
            down: true,
        },
        Seen::Key {
            key: 115,
            down: false,
        },
        Seen::Motion { dx: -5.0, dy: 7.0 },
        Seen::Absolute { x: mx, y: my },
        Seen::Button {
            button: 0x110,
            down: true,
        },
        Seen::Button {
            button: 0x110,
            down: false,
        },
        Seen::Button {
            button: 0x114,
            down: true,
        },
        Seen::Button {
            button: 0x114,
            down: false,
        },
        Seen::ScrollDiscrete { dx: 0, dy: -120 },
        Seen::ScrollDiscrete { dx: -60, dy: 0 },
        Seen::Text("é".into()),
        Seen::TouchDown {
            id: 3,
            x: t0x,
            y: t0y,
        },
        Seen::TouchMotion {
            id: 3,
            x: t1x,
            y: t1y,
        },
        Seen::TouchUp { id: 3 },
        Seen::Key {
            key: 183,
            down: true,
        },
        Seen::Key {
            key: 183,
            down: false,
        },
    ];
    assert_eq!(input_after(&connections[0], from), expected);

    let stats = worker.stats_until(|s| s.dropped_invalid >= 4 && s.dropped_no_device >= 1)?;
    assert_eq!(stats.dropped_invalid, 4, "{stats:?}");
    assert_eq!(stats.dropped_no_device, 1, "{stats:?}");
    assert_eq!(stats.dropped_rate, 0, "{stats:?}");
    assert_eq!(stats.pads, 0);
    Ok(())
}

#[test]
fn stream_end_and_channel_loss_release_what_the_client_held() -> Result<()> {
    let eis = EisServer::start()?;
    let mut worker = Worker::start()?;
    let net = worker.wire(&eis)?;
    wait_until_injecting(&eis, &net, 0)?;

    send(
        &net,
        vec![
            key(0xA2, true), // left ctrl
            key(b'C', true),
            InputEvent::MouseButton {
                button: MouseButton::Right,
                down: true,
            },
        ],
    )?;
    eis.wait_for("held keys", WAIT, |c| c[0].held_keys() == vec![29, 46])?;
    net.send(&NetToInput::StreamEnded, &[])?;
    let connections = eis.wait_for("release at stream end", WAIT, |c| {
        c[0].held_keys().is_empty()
    })?;
    assert!(
        connections[0].seen.contains(&Seen::Button {
            button: 0x111,
            down: false
        }),
        "{:?}",
        connections[0].seen
    );

    // Channel loss (net died): held keys are released too.
    send(&net, vec![key(b'Q', true)])?;
    eis.wait_for("Q held", WAIT, |c| c[0].held_keys() == vec![16])?;
    drop(net);
    eis.wait_for("release on channel loss", WAIT, |c| {
        c[0].held_keys().is_empty()
    })?;
    let stats = worker.stats_until(|s| s.released >= 4)?;
    assert_eq!(stats.released, 4, "{stats:?}");
    Ok(())
}

#[test]
fn shutdown_releases_held_keys_before_the_connection_closes() -> Result<()> {
    let eis = EisServer::start()?;
    let mut worker = Worker::start()?;
    let net = worker.wire(&eis)?;
    wait_until_injecting(&eis, &net, 0)?;
    send(&net, vec![key(b'W', true)])?;
    eis.wait_for("W held", WAIT, |c| c[0].held_keys() == vec![17])?;
    worker.broker.send(&BrokerMsg::Shutdown, &[])?;
    let status = worker.child.wait()?;
    assert!(status.success(), "{status}");
    let connections = eis.wait_for("close", WAIT, |c| !c[0].open)?;
    let seen = &connections[0].seen;
    let release = seen
        .iter()
        .position(|s| {
            *s == Seen::Key {
                key: 17,
                down: false,
            }
        })
        .context("W was never released")?;
    assert_eq!(seen.last(), Some(&Seen::Closed));
    assert!(release < seen.len() - 1);
    Ok(())
}

#[test]
fn a_killed_worker_leaves_no_stuck_key_and_its_successor_starts_clean() -> Result<()> {
    let eis = EisServer::start()?;
    let first = Worker::start()?;
    let net = first.wire(&eis)?;
    wait_until_injecting(&eis, &net, 0)?;
    send(&net, vec![key(0xA0, true), key(b'D', true)])?;
    eis.wait_for("keys held", WAIT, |c| c[0].held_keys() == vec![42, 32])?;

    // SIGKILL: no release is sent; the connection (and with it the devices) goes away.
    let pid = first.child.id();
    lumen_tests::signal(pid, libc::SIGKILL)?;
    drop(first);
    let connections = eis.wait_for("the killed worker's connection to close", WAIT, |c| {
        !c[0].open
    })?;
    assert!(connections[0].held_keys().is_empty());

    // The restarted worker gets a fresh connection, which starts with nothing pressed.
    let second = Worker::start()?;
    let net = second.wire(&eis)?;
    let from = wait_until_injecting(&eis, &net, 1)?;
    let connections = eis.connections();
    let before_probe: Vec<_> = connections[1]
        .input()
        .into_iter()
        .filter(|s| !matches!(s, Seen::Key { key: 194, .. }))
        .collect();
    assert!(before_probe.is_empty(), "{before_probe:?}");
    send(&net, vec![key(b'D', true), key(b'D', false)])?;
    let connections = eis.wait_for("D on the new connection", WAIT, |c| {
        c[1].seen.contains(&Seen::Key {
            key: 32,
            down: false,
        })
    })?;
    assert!(connections.iter().all(|c| c.held_keys().is_empty()));
    assert_eq!(
        input_after(&connections[1], from),
        vec![
            Seen::Key {
                key: 32,
                down: true
            },
            Seen::Key {
                key: 32,
                down: false
            }
        ]
    );
    Ok(())
}

#[test]
fn an_oversized_batch_is_dropped_and_counted() -> Result<()> {
    let eis = EisServer::start()?;
    let mut worker = Worker::start()?;
    let net = worker.wire(&eis)?;
    wait_until_injecting(&eis, &net, 0)?;
    let batch = vec![InputEvent::MouseMove { dx: 1, dy: 0 }; 65];
    send(&net, batch)?;
    let stats = worker.stats_until(|s| s.dropped_invalid >= 65)?;
    assert_eq!(stats.dropped_invalid, 65);
    let motions = eis
        .connections()
        .first()
        .map(|c| {
            c.input()
                .iter()
                .filter(|s| matches!(s, Seen::Motion { .. }))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(motions, 0);
    Ok(())
}

#[test]
fn the_broker_hands_lumen_input_the_eis_socket_and_reports_gamepads() -> Result<()> {
    let scratch = lumen_tests::ScratchDir::new("input-eis-socket")?;
    let socket = scratch.path().join("eis-0");
    let eis = EisServer::listen(&socket)?;
    let config = format!("[input]\neis_socket = \"{}\"\n", socket.display());
    let broker = lumen_tests::Broker::start_with_config("input-broker", &config)?;
    eis.wait_for("lumen-input to bind", WAIT, |c| {
        c.first()
            .is_some_and(|c| c.seen.iter().any(|s| matches!(s, Seen::Bound { .. })))
    })?;
    let status = broker.wait_until(WAIT, "input statistics in status", |s| {
        !s["input"]["stats"].is_null()
    })?;
    let input = &status["input"];
    assert_eq!(
        input["eis"],
        format!("connected to {}", socket.display()).as_str()
    );
    if std::path::Path::new("/dev/uinput").exists() {
        assert_eq!(input["uinput_slots"], 15, "{input}");
    } else {
        assert_eq!(input["gamepads_unavailable"], "/dev/uinput missing");
        assert_eq!(input["uinput_slots"], 0);
    }
    let table = String::from_utf8(broker.cli(&["status"])?.stdout)?;
    assert!(table.contains("input: EIS connected to"), "{table}");

    // A killed lumen-input is restarted with a fresh EIS connection.
    let pid = lumen_tests::worker(&status, "Input")
        .and_then(|w| w["pid"].as_u64())
        .context("no lumen-input pid in status")?;
    lumen_tests::signal(pid as u32, libc::SIGKILL)?;
    let connections = eis.wait_for("a second connection after the restart", WAIT, |c| {
        c.len() >= 2 && c[1].seen.iter().any(|s| matches!(s, Seen::Bound { .. }))
    })?;
    assert!(!connections[0].open);
    assert_eq!(
        connections[1].seen[0],
        Seen::Connected {
            name: "lumen-input".into()
        }
    );
    assert!(connections.iter().all(|c| c.held_keys().is_empty()));
    Ok(())
}
