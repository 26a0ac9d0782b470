//! What `lumen-input` does with each client event, free of I/O: validate it again (it trusts
//! no peer), rate-limit it, map it to what the compositor takes ([`Action`]s for the EIS side,
//! pad states for uinput), and remember what is held so that it can all be released at stream
//! end, on channel loss and at shutdown.

use std::collections::BTreeSet;
use std::time::Instant;

use lumen_ipc::input::{InputEvent, InputStats, MouseButton, ScrollAxis, TouchKind, MAX_GAMEPADS};

use crate::pads::{PadDrop, PadState, Pads};
use crate::vk;

/// Sustained client events per second accepted (a 1000 Hz mouse plus a 1000 Hz pad plus typing
/// fit well below).
pub const RATE_PER_SECOND: f64 = 4000.0;
/// Events a burst may carry above the sustained rate.
pub const RATE_BURST: f64 = 1000.0;
/// Touch contacts held at once.
pub const MAX_TOUCHES: usize = 10;

pub const BTN_LEFT: u32 = 0x110;
pub const BTN_RIGHT: u32 = 0x111;
pub const BTN_MIDDLE: u32 = 0x112;
pub const BTN_SIDE: u32 = 0x113;
pub const BTN_EXTRA: u32 = 0x114;

/// One thing to inject through EIS.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    Key {
        code: u32,
        down: bool,
    },
    Button {
        code: u32,
        down: bool,
    },
    /// Relative motion in logical pixels.
    Motion {
        dx: f32,
        dy: f32,
    },
    /// Absolute position as a fraction (0..=1) of the output: the EIS side scales it to the
    /// region its device covers.
    Absolute {
        x: f32,
        y: f32,
    },
    /// Scroll in 1/120 of a notch, libei's discrete unit; positive `dy` scrolls down.
    Scroll {
        dx: i32,
        dy: i32,
    },
    TouchDown {
        id: u32,
        x: f32,
        y: f32,
    },
    TouchMotion {
        id: u32,
        x: f32,
        y: f32,
    },
    TouchUp {
        id: u32,
    },
    /// One character through the EIS text interface.
    Text(char),
}

/// The EIS side as the engine sees it.
pub trait Injector {
    /// Injects `action`; `false` when no device takes it (none bound yet, or none with that
    /// capability).
    fn inject(&mut self, action: Action) -> bool;
    /// Whether a device offers the text interface (otherwise text is typed as key strokes).
    fn has_text(&self) -> bool;
}

/// A token bucket over client events.
struct RateLimit {
    tokens: f64,
    last: Option<Instant>,
}

impl RateLimit {
    fn admit(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * RATE_PER_SECOND;
            self.tokens = (self.tokens + refill).min(RATE_BURST);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The input state of one client.
pub struct Engine {
    pub stats: InputStats,
    keys: BTreeSet<u32>,
    buttons: BTreeSet<u32>,
    touches: BTreeSet<u32>,
    rate: RateLimit,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

/// How one event ended.
enum Outcome {
    Injected,
    NoDevice,
    Invalid,
}

fn button_code(button: MouseButton) -> u32 {
    match button {
        MouseButton::Left => BTN_LEFT,
        MouseButton::Middle => BTN_MIDDLE,
        MouseButton::Right => BTN_RIGHT,
        MouseButton::X1 => BTN_SIDE,
        MouseButton::X2 => BTN_EXTRA,
    }
}

impl Engine {
    pub fn new() -> Engine {
        Engine {
            stats: InputStats::default(),
            keys: BTreeSet::new(),
            buttons: BTreeSet::new(),
            touches: BTreeSet::new(),
            rate: RateLimit {
                tokens: RATE_BURST,
                last: None,
            },
        }
    }

    /// Keys held now (evdev codes).
    #[cfg(test)]
    pub fn held_keys(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.iter().copied()
    }

    /// Handles one client event: counted as injected or as dropped, never both.
    pub fn handle(
        &mut self,
        event: &InputEvent,
        now: Instant,
        out: &mut dyn Injector,
        pads: &mut Pads,
    ) {
        if event.validate().is_err() {
            self.stats.dropped_invalid += 1;
            return;
        }
        if !self.rate.admit(now) {
            self.stats.dropped_rate += 1;
            return;
        }
        match self.apply(event, out, pads) {
            Outcome::Injected => self.stats.injected += 1,
            Outcome::NoDevice => self.stats.dropped_no_device += 1,
            Outcome::Invalid => self.stats.dropped_invalid += 1,
        }
        self.stats.pads = pads.count();
    }

    fn apply(&mut self, event: &InputEvent, out: &mut dyn Injector, pads: &mut Pads) -> Outcome {
        let done = |ok: bool| {
            if ok {
                Outcome::Injected
            } else {
                Outcome::NoDevice
            }
        };
        match *event {
            InputEvent::Key { down, vk, .. } => {
                // The client sends modifier keys as key events of their own; the modifier bits
                // only restate them, so they are checked (validate) but not replayed.
                let Some(code) = vk::evdev_key(vk) else {
                    return Outcome::Invalid;
                };
                // A repeat of a held key or the release of a key not held is passed on as is:
                // the compositor handles repeats, and a spare release is harmless.
                let ok = out.inject(Action::Key { code, down });
                if ok {
                    self.track(Tracked::Key, code, down);
                }
                done(ok)
            }
            InputEvent::MouseMove { dx, dy } => done(out.inject(Action::Motion {
                dx: f32::from(dx),
                dy: f32::from(dy),
            })),
            InputEvent::MousePosition {
                x,
                y,
                ref_width,
                ref_height,
            } => done(out.inject(Action::Absolute {
                x: f32::from(x) / f32::from(ref_width),
                y: f32::from(y) / f32::from(ref_height),
            })),
            InputEvent::MouseButton { button, down } => {
                let code = button_code(button);
                let ok = out.inject(Action::Button { code, down });
                if ok {
                    self.track(Tracked::Button, code, down);
                }
                done(ok)
            }
            InputEvent::Scroll { axis, amount } => {
                // Windows wheel units: positive is up (away from the user) and right; libei's
                // discrete scroll uses the same 120 per notch with positive down and right.
                let amount = i32::from(amount);
                let action = match axis {
                    ScrollAxis::Vertical => Action::Scroll { dx: 0, dy: -amount },
                    ScrollAxis::Horizontal => Action::Scroll { dx: amount, dy: 0 },
                };
                done(out.inject(action))
            }
            InputEvent::Text(c) => self.text(c, out),
            InputEvent::Touch {
                kind,
                pointer_id,
                x,
                y,
                ..
            } => self.touch(kind, pointer_id, x, y, out),
            InputEvent::Pen { kind, x, y, .. } => self.pen(kind, x, y, out),
            InputEvent::GamepadArrival { pad, .. } => pad_outcome(pads.arrive(pad)),
            InputEvent::GamepadState {
                pad,
                active_mask,
                buttons,
                left_trigger,
                right_trigger,
                left_stick,
                right_stick,
            } => {
                if active_mask & (1 << pad) == 0 {
                    // The client says this pad is gone.
                    self.stats.released += pads.remove(pad);
                    return Outcome::Injected;
                }
                let state = PadState::from_client(
                    buttons,
                    left_trigger,
                    right_trigger,
                    left_stick,
                    right_stick,
                );
                pad_outcome(pads.update(pad, state))
            }
            // Touchpads, motion sensors and batteries have no place on an Xbox-style pad.
            InputEvent::GamepadTouchpad { pad, .. }
            | InputEvent::GamepadMotion { pad, .. }
            | InputEvent::GamepadBattery { pad, .. } => {
                debug_assert!(pad < MAX_GAMEPADS);
                Outcome::NoDevice
            }
            // Rumble works without being asked for; nothing to do.
            InputEvent::EnableHaptics => Outcome::Injected,
        }
    }

    fn track(&mut self, what: Tracked, code: u32, down: bool) {
        let set = match what {
            Tracked::Key => &mut self.keys,
            Tracked::Button => &mut self.buttons,
        };
        if down {
            set.insert(code);
        } else {
            set.remove(&code);
        }
    }

    /// Text through the EIS text interface, or else as US-layout key strokes (ASCII only).
    fn text(&mut self, c: char, out: &mut dyn Injector) -> Outcome {
        if out.has_text() {
            return if out.inject(Action::Text(c)) {
                Outcome::Injected
            } else {
                Outcome::NoDevice
            };
        }
        let Some(stroke) = vk::us_stroke(c) else {
            return Outcome::NoDevice;
        };
        // Shift is pressed for the stroke unless the client already holds it.
        let shift_needed = stroke.shift
            && !self.keys.contains(&vk::key::LEFTSHIFT)
            && !self.keys.contains(&vk::key::RIGHTSHIFT);
        let shift = vk::key::LEFTSHIFT;
        let mut ok = true;
        if shift_needed {
            ok &= out.inject(Action::Key {
                code: shift,
                down: true,
            });
        }
        ok &= out.inject(Action::Key {
            code: stroke.key,
            down: true,
        });
        ok &= out.inject(Action::Key {
            code: stroke.key,
            down: false,
        });
        if shift_needed {
            ok &= out.inject(Action::Key {
                code: shift,
                down: false,
            });
        }
        if ok {
            Outcome::Injected
        } else {
            Outcome::NoDevice
        }
    }

    fn touch(
        &mut self,
        kind: TouchKind,
        id: u32,
        x: f32,
        y: f32,
        out: &mut dyn Injector,
    ) -> Outcome {
        let action = match kind {
            TouchKind::Down => {
                if !self.touches.contains(&id) && self.touches.len() >= MAX_TOUCHES {
                    return Outcome::Invalid;
                }
                Action::TouchDown { id, x, y }
            }
            TouchKind::Move if self.touches.contains(&id) => Action::TouchMotion { id, x, y },
            TouchKind::Up | TouchKind::Cancel if self.touches.contains(&id) => {
                Action::TouchUp { id }
            }
            TouchKind::CancelAll => {
                self.stats.released += self.release_touches(out);
                return Outcome::Injected;
            }
            // Motion or lift of a contact that never went down, hover, button-only: nothing
            // on a touchscreen takes them.
            _ => return Outcome::NoDevice,
        };
        if !out.inject(action) {
            return Outcome::NoDevice;
        }
        match action {
            Action::TouchDown { .. } => {
                self.touches.insert(id);
            }
            Action::TouchUp { .. } => {
                self.touches.remove(&id);
            }
            _ => {}
        }
        Outcome::Injected
    }

    /// A pen is an absolute pointer whose tip is the left button (libei has no tablet).
    fn pen(&mut self, kind: TouchKind, x: f32, y: f32, out: &mut dyn Injector) -> Outcome {
        let tip_down = self.buttons.contains(&BTN_LEFT);
        let mut ok = true;
        match kind {
            TouchKind::Hover | TouchKind::Move | TouchKind::Down => {
                ok &= out.inject(Action::Absolute { x, y });
                if kind == TouchKind::Down && !tip_down {
                    ok &= out.inject(Action::Button {
                        code: BTN_LEFT,
                        down: true,
                    });
                    if ok {
                        self.buttons.insert(BTN_LEFT);
                    }
                }
            }
            TouchKind::Up | TouchKind::Cancel | TouchKind::HoverLeave | TouchKind::CancelAll => {
                if tip_down {
                    ok &= out.inject(Action::Button {
                        code: BTN_LEFT,
                        down: false,
                    });
                    self.buttons.remove(&BTN_LEFT);
                }
            }
            TouchKind::ButtonOnly => return Outcome::NoDevice,
        }
        if ok {
            Outcome::Injected
        } else {
            Outcome::NoDevice
        }
    }

    fn release_touches(&mut self, out: &mut dyn Injector) -> u64 {
        let ids = std::mem::take(&mut self.touches);
        for &id in &ids {
            out.inject(Action::TouchUp { id });
        }
        ids.len() as u64
    }

    /// Releases every key, button, touch and pad the client holds (stream end, channel loss,
    /// shutdown, new devices). Counted in `stats.released`.
    pub fn release_all(&mut self, out: &mut dyn Injector, pads: &mut Pads) {
        let mut released = 0;
        for code in std::mem::take(&mut self.keys) {
            out.inject(Action::Key { code, down: false });
            released += 1;
        }
        for code in std::mem::take(&mut self.buttons) {
            out.inject(Action::Button { code, down: false });
            released += 1;
        }
        released += self.release_touches(out);
        released += pads.remove_all();
        self.stats.released += released;
        self.stats.pads = pads.count();
    }

    /// Forgets what is held without injecting releases: for a new EIS connection, whose
    /// devices start with nothing pressed.
    pub fn forget_held(&mut self) {
        self.keys.clear();
        self.buttons.clear();
        self.touches.clear();
    }
}

enum Tracked {
    Key,
    Button,
}

fn pad_outcome(result: Result<(), PadDrop>) -> Outcome {
    match result {
        Ok(()) => Outcome::Injected,
        Err(PadDrop::NoDevice) | Err(PadDrop::UnknownPad) => Outcome::NoDevice,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pads::tests::{device, read_events, FakeUinput};
    use crate::uinput::{codes::*, Event};
    use lumen_ipc::input::{buttons, PenTool};
    use std::time::Duration;

    /// Records every action; can pretend to have no device or a text interface.
    #[derive(Default)]
    struct Recorder {
        actions: Vec<Action>,
        no_device: bool,
        text: bool,
    }

    impl Injector for Recorder {
        fn inject(&mut self, action: Action) -> bool {
            if self.no_device {
                return false;
            }
            self.actions.push(action);
            true
        }
        fn has_text(&self) -> bool {
            self.text
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

    struct Rig {
        engine: Engine,
        out: Recorder,
        pads: Pads,
        now: Instant,
    }

    impl Rig {
        fn new() -> Rig {
            Rig {
                engine: Engine::new(),
                out: Recorder::default(),
                pads: Pads::new(Box::new(FakeUinput::default())),
                now: Instant::now(),
            }
        }
        fn send(&mut self, event: InputEvent) {
            // Spaced out so the rate limit never bites unless a test wants it to.
            self.now += Duration::from_millis(1);
            self.engine
                .handle(&event, self.now, &mut self.out, &mut self.pads);
        }
    }

    #[test]
    fn keys_map_and_are_tracked_until_released() {
        let mut rig = Rig::new();
        rig.send(key(0xA0, true)); // left shift
        rig.send(key(b'A', true));
        rig.send(key(b'A', false));
        assert_eq!(
            rig.out.actions,
            vec![
                Action::Key {
                    code: 42,
                    down: true
                },
                Action::Key {
                    code: 30,
                    down: true
                },
                Action::Key {
                    code: 30,
                    down: false
                },
            ]
        );
        assert_eq!(rig.engine.held_keys().collect::<Vec<_>>(), vec![42]);
        assert_eq!(rig.engine.stats.injected, 3);
    }

    #[test]
    fn release_all_lets_go_of_keys_buttons_touches_and_pads() {
        let mut rig = Rig::new();
        let (fd, peer) = device();
        rig.pads.set_pool(vec![fd]);
        rig.send(key(0x11, true));
        rig.send(InputEvent::MouseButton {
            button: MouseButton::Right,
            down: true,
        });
        rig.send(InputEvent::Touch {
            kind: TouchKind::Down,
            pointer_id: 7,
            x: 0.5,
            y: 0.5,
            pressure_or_distance: 1.0,
            contact_major: 0.0,
            contact_minor: 0.0,
            rotation: None,
        });
        rig.send(InputEvent::GamepadState {
            pad: 0,
            active_mask: 1,
            buttons: buttons::A,
            left_trigger: 0,
            right_trigger: 0,
            left_stick: (0, 0),
            right_stick: (0, 0),
        });
        assert_eq!(rig.engine.stats.pads, 1);
        read_events(&peer);
        rig.out.actions.clear();
        rig.engine.release_all(&mut rig.out, &mut rig.pads);
        assert_eq!(
            rig.out.actions,
            vec![
                Action::Key {
                    code: 29,
                    down: false
                },
                Action::Button {
                    code: BTN_RIGHT,
                    down: false
                },
                Action::TouchUp { id: 7 },
            ]
        );
        assert!(read_events(&peer).contains(&Event::new(EV_KEY, 0x130, 0)));
        assert_eq!(rig.engine.stats.released, 4);
        assert_eq!(rig.engine.stats.pads, 0);
        // A second release has nothing left to do.
        rig.out.actions.clear();
        rig.engine.release_all(&mut rig.out, &mut rig.pads);
        assert!(rig.out.actions.is_empty());
    }

    #[test]
    fn out_of_range_events_are_dropped_and_counted() {
        let mut rig = Rig::new();
        rig.send(InputEvent::MousePosition {
            x: 1920,
            y: 0,
            ref_width: 1920,
            ref_height: 1080,
        });
        rig.send(InputEvent::Key {
            down: true,
            vk: 0x41,
            modifiers: 0x80,
            no_normalize: false,
        });
        rig.send(InputEvent::Text('\u{1b}'));
        rig.send(InputEvent::GamepadState {
            pad: 16,
            active_mask: 0xFFFF,
            buttons: 0,
            left_trigger: 0,
            right_trigger: 0,
            left_stick: (0, 0),
            right_stick: (0, 0),
        });
        // A virtual-key code with no key on Linux.
        rig.send(key(0x3A, true));
        assert!(rig.out.actions.is_empty());
        assert_eq!(rig.engine.stats.dropped_invalid, 5);
        assert_eq!(rig.engine.stats.injected, 0);
    }

    #[test]
    fn absolute_positions_become_fractions_of_the_plane() {
        let mut rig = Rig::new();
        rig.send(InputEvent::MousePosition {
            x: 960,
            y: 270,
            ref_width: 1920,
            ref_height: 1080,
        });
        assert_eq!(rig.out.actions, vec![Action::Absolute { x: 0.5, y: 0.25 }]);
    }

    #[test]
    fn scroll_turns_windows_wheel_units_into_libei_discrete_units() {
        let mut rig = Rig::new();
        rig.send(InputEvent::Scroll {
            axis: ScrollAxis::Vertical,
            amount: 120,
        });
        rig.send(InputEvent::Scroll {
            axis: ScrollAxis::Vertical,
            amount: -30,
        });
        rig.send(InputEvent::Scroll {
            axis: ScrollAxis::Horizontal,
            amount: 240,
        });
        assert_eq!(
            rig.out.actions,
            vec![
                Action::Scroll { dx: 0, dy: -120 },
                Action::Scroll { dx: 0, dy: 30 },
                Action::Scroll { dx: 240, dy: 0 },
            ]
        );
    }

    #[test]
    fn mouse_buttons_map_to_evdev_buttons() {
        let mut rig = Rig::new();
        for (button, code) in [
            (MouseButton::Left, 0x110),
            (MouseButton::Right, 0x111),
            (MouseButton::Middle, 0x112),
            (MouseButton::X1, 0x113),
            (MouseButton::X2, 0x114),
        ] {
            rig.send(InputEvent::MouseButton { button, down: true });
            assert_eq!(
                rig.out.actions.last(),
                Some(&Action::Button { code, down: true })
            );
        }
    }

    #[test]
    fn text_is_typed_as_strokes_without_a_text_interface() {
        let mut rig = Rig::new();
        rig.send(InputEvent::Text('!'));
        assert_eq!(
            rig.out.actions,
            vec![
                Action::Key {
                    code: 42,
                    down: true
                },
                Action::Key {
                    code: 2,
                    down: true
                },
                Action::Key {
                    code: 2,
                    down: false
                },
                Action::Key {
                    code: 42,
                    down: false
                },
            ]
        );
        // Nothing stays held, and a character off the US layout cannot be typed.
        assert_eq!(rig.engine.held_keys().count(), 0);
        rig.send(InputEvent::Text('ß'));
        assert_eq!(rig.engine.stats.dropped_no_device, 1);
        // With the text interface, any character goes through it.
        rig.out.text = true;
        rig.out.actions.clear();
        rig.send(InputEvent::Text('ß'));
        assert_eq!(rig.out.actions, vec![Action::Text('ß')]);
    }

    #[test]
    fn events_without_a_device_are_counted_as_such() {
        let mut rig = Rig::new();
        rig.out.no_device = true;
        rig.send(key(b'A', true));
        rig.send(InputEvent::GamepadArrival {
            pad: 0,
            kind: lumen_ipc::input::PadKind::Xbox,
            capabilities: 0,
            supported_buttons: buttons::A,
        });
        assert_eq!(rig.engine.stats.dropped_no_device, 2);
        // A key that never reached the compositor is not held.
        assert_eq!(rig.engine.held_keys().count(), 0);
    }

    #[test]
    fn a_flood_is_cut_by_the_rate_limit() {
        let mut rig = Rig::new();
        let now = Instant::now();
        for _ in 0..(RATE_BURST as usize + 500) {
            rig.engine.handle(
                &InputEvent::MouseMove { dx: 1, dy: 1 },
                now,
                &mut rig.out,
                &mut rig.pads,
            );
        }
        assert_eq!(rig.engine.stats.injected, RATE_BURST as u64);
        assert_eq!(rig.engine.stats.dropped_rate, 500);
        // A second later the bucket has refilled.
        rig.engine.handle(
            &InputEvent::MouseMove { dx: 1, dy: 1 },
            now + Duration::from_secs(1),
            &mut rig.out,
            &mut rig.pads,
        );
        assert_eq!(rig.engine.stats.injected, RATE_BURST as u64 + 1);
    }

    #[test]
    fn touches_follow_their_contacts() {
        let mut rig = Rig::new();
        let touch = |kind, id| InputEvent::Touch {
            kind,
            pointer_id: id,
            x: 0.25,
            y: 0.75,
            pressure_or_distance: 0.5,
            contact_major: 0.1,
            contact_minor: 0.1,
            rotation: Some(90),
        };
        rig.send(touch(TouchKind::Move, 1)); // never went down
        rig.send(touch(TouchKind::Down, 1));
        rig.send(touch(TouchKind::Move, 1));
        rig.send(touch(TouchKind::Up, 1));
        assert_eq!(
            rig.out.actions,
            vec![
                Action::TouchDown {
                    id: 1,
                    x: 0.25,
                    y: 0.75
                },
                Action::TouchMotion {
                    id: 1,
                    x: 0.25,
                    y: 0.75
                },
                Action::TouchUp { id: 1 },
            ]
        );
        assert_eq!(rig.engine.stats.dropped_no_device, 1);
        for id in 0..=MAX_TOUCHES as u32 {
            rig.send(touch(TouchKind::Down, id));
        }
        assert_eq!(rig.engine.stats.dropped_invalid, 1);
    }

    #[test]
    fn a_pen_is_an_absolute_pointer_with_the_tip_as_left_button() {
        let mut rig = Rig::new();
        let pen = |kind| InputEvent::Pen {
            kind,
            tool: PenTool::Pen,
            buttons: 0,
            x: 0.5,
            y: 0.5,
            pressure_or_distance: 0.5,
            contact_major: 0.0,
            contact_minor: 0.0,
            rotation: None,
            tilt: Some(10),
        };
        rig.send(pen(TouchKind::Down));
        rig.send(pen(TouchKind::Up));
        assert_eq!(
            rig.out.actions,
            vec![
                Action::Absolute { x: 0.5, y: 0.5 },
                Action::Button {
                    code: BTN_LEFT,
                    down: true
                },
                Action::Button {
                    code: BTN_LEFT,
                    down: false
                },
            ]
        );
    }

    #[test]
    fn a_pad_leaving_the_active_mask_is_removed() {
        let mut rig = Rig::new();
        let (fd, _peer) = device();
        rig.pads.set_pool(vec![fd]);
        let state = |mask| InputEvent::GamepadState {
            pad: 2,
            active_mask: mask,
            buttons: buttons::X,
            left_trigger: 0,
            right_trigger: 0,
            left_stick: (0, 0),
            right_stick: (0, 0),
        };
        rig.send(state(0b100));
        assert_eq!(rig.engine.stats.pads, 1);
        rig.send(state(0b000));
        assert_eq!(rig.engine.stats.pads, 0);
        assert_eq!(rig.engine.stats.released, 1);
    }
}
