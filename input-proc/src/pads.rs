//! Virtual gamepads on uinput: one Xbox-style pad (buttons, d-pad hat, two sticks, two
//! triggers, rumble) per client pad, on a pool of `/dev/uinput` fds the broker opened.
//!
//! A pad is created at its arrival (or its first state with its bit in the active mask), updated
//! with only what changed, and destroyed when the client's active mask drops it, at stream end
//! and at shutdown (after its buttons and axes are returned to rest, so nothing stays pressed).
//! Its fd goes back to the pool: uinput allows a new device on the same open file after
//! `UI_DEV_DESTROY`.

use std::os::fd::{AsFd, OwnedFd};

use lumen_ipc::input::{buttons, InputToNet, MAX_GAMEPADS};

use crate::uinput::{codes::*, AbsAxis, DeviceSetup, Event, UinputOps, EVENT_SIZE};

const BTN_SOUTH: u16 = 0x130;
const BTN_EAST: u16 = 0x131;
const BTN_NORTH: u16 = 0x133;
const BTN_WEST: u16 = 0x134;
const BTN_TL: u16 = 0x136;
const BTN_TR: u16 = 0x137;
const BTN_SELECT: u16 = 0x13a;
const BTN_START: u16 = 0x13b;
const BTN_MODE: u16 = 0x13c;
const BTN_THUMBL: u16 = 0x13d;
const BTN_THUMBR: u16 = 0x13e;
const BTN_TRIGGER_HAPPY1: u16 = 0x2c0;
const KEY_RECORD: u16 = 167;

const ABS_X: u16 = 0x00;
const ABS_Y: u16 = 0x01;
const ABS_Z: u16 = 0x02;
const ABS_RX: u16 = 0x03;
const ABS_RY: u16 = 0x04;
const ABS_RZ: u16 = 0x05;
const ABS_HAT0X: u16 = 0x10;
const ABS_HAT0Y: u16 = 0x11;

/// Client button bit → evdev button, in the layout the xpad driver gives an Xbox pad (so games
/// and SDL treat the virtual pad like a real one). The d-pad is the hat axes, not buttons.
pub const BUTTON_MAP: [(u32, u16); 16] = [
    (buttons::A, BTN_SOUTH),
    (buttons::B, BTN_EAST),
    (buttons::X, BTN_NORTH),
    (buttons::Y, BTN_WEST),
    (buttons::LB, BTN_TL),
    (buttons::RB, BTN_TR),
    (buttons::BACK, BTN_SELECT),
    (buttons::START, BTN_START),
    (buttons::GUIDE, BTN_MODE),
    (buttons::LS_CLICK, BTN_THUMBL),
    (buttons::RS_CLICK, BTN_THUMBR),
    (buttons::PADDLE1, BTN_TRIGGER_HAPPY1),
    (buttons::PADDLE2, BTN_TRIGGER_HAPPY1 + 1),
    (buttons::PADDLE3, BTN_TRIGGER_HAPPY1 + 2),
    (buttons::PADDLE4, BTN_TRIGGER_HAPPY1 + 3),
    // The Xbox Series share button, as xpad reports it.
    (buttons::MISC, KEY_RECORD),
];

const STICK: (i32, i32) = (-32768, 32767);

const AXES: [AbsAxis; 8] = [
    stick_axis(ABS_X),
    stick_axis(ABS_Y),
    stick_axis(ABS_RX),
    stick_axis(ABS_RY),
    trigger_axis(ABS_Z),
    trigger_axis(ABS_RZ),
    hat_axis(ABS_HAT0X),
    hat_axis(ABS_HAT0Y),
];

const fn stick_axis(code: u16) -> AbsAxis {
    AbsAxis {
        code,
        min: STICK.0,
        max: STICK.1,
        fuzz: 16,
        flat: 128,
    }
}

const fn trigger_axis(code: u16) -> AbsAxis {
    AbsAxis {
        code,
        min: 0,
        max: 255,
        fuzz: 0,
        flat: 0,
    }
}

const fn hat_axis(code: u16) -> AbsAxis {
    AbsAxis {
        code,
        min: -1,
        max: 1,
        fuzz: 0,
        flat: 0,
    }
}

/// Rumble effects a pad keeps (its `ff_effects_max`).
const MAX_EFFECTS: usize = 16;

/// What a pad shows: the buttons held and every axis value, as evdev sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PadState {
    pub buttons: u32,
    /// ABS_X, ABS_Y, ABS_RX, ABS_RY, ABS_Z, ABS_RZ, ABS_HAT0X, ABS_HAT0Y (the order of `AXES`).
    pub axes: [i32; 8],
}

impl PadState {
    /// The evdev state for the client's pad state. Moonlight's stick Y grows upwards, evdev's
    /// downwards.
    pub fn from_client(
        buttons_held: u32,
        left_trigger: u8,
        right_trigger: u8,
        left_stick: (i16, i16),
        right_stick: (i16, i16),
    ) -> PadState {
        let flip = |y: i16| (-i32::from(y)).clamp(STICK.0, STICK.1);
        let hat = |neg: u32, pos: u32| {
            i32::from(buttons_held & pos != 0) - i32::from(buttons_held & neg != 0)
        };
        PadState {
            buttons: buttons_held,
            axes: [
                i32::from(left_stick.0),
                flip(left_stick.1),
                i32::from(right_stick.0),
                flip(right_stick.1),
                i32::from(left_trigger),
                i32::from(right_trigger),
                hat(buttons::LEFT, buttons::RIGHT),
                hat(buttons::UP, buttons::DOWN),
            ],
        }
    }

    /// The events that take a device from `self` to `next`, ending with `SYN_REPORT`; empty
    /// when nothing changed.
    pub fn diff(&self, next: &PadState) -> Vec<Event> {
        let mut out = Vec::new();
        for (bit, code) in BUTTON_MAP {
            let (was, is) = (self.buttons & bit != 0, next.buttons & bit != 0);
            if was != is {
                out.push(Event::new(EV_KEY, code, i32::from(is)));
            }
        }
        for (i, axis) in AXES.iter().enumerate() {
            if self.axes[i] != next.axes[i] {
                out.push(Event::new(EV_ABS, axis.code, next.axes[i]));
            }
        }
        if !out.is_empty() {
            out.push(Event::new(EV_SYN, SYN_REPORT, 0));
        }
        out
    }
}

/// Why a pad event was not applied.
#[derive(Debug, PartialEq, Eq)]
pub enum PadDrop {
    /// No uinput fd is free (or none was handed over: gamepads unavailable).
    NoDevice,
    /// The pad was never announced and is not active.
    UnknownPad,
}

struct Pad {
    fd: OwnedFd,
    state: PadState,
    /// Uploaded rumble effects by id: (strong, weak) magnitudes.
    effects: [Option<(u16, u16)>; MAX_EFFECTS],
}

/// The virtual pads of one client.
pub struct Pads {
    ops: Box<dyn UinputOps>,
    free: Vec<OwnedFd>,
    pads: [Option<Pad>; MAX_GAMEPADS as usize],
    /// Pad creations that failed (uinput refused): logged once each.
    pub errors: Vec<String>,
}

impl Pads {
    pub fn new(ops: Box<dyn UinputOps>) -> Pads {
        Pads {
            ops,
            free: Vec::new(),
            pads: Default::default(),
            errors: Vec::new(),
        }
    }

    /// Replaces the pool of uinput fds (after a fresh `InputDevices`); existing pads are removed
    /// first, at rest.
    pub fn set_pool(&mut self, fds: Vec<OwnedFd>) {
        self.remove_all();
        self.free = fds;
    }

    /// How many pads exist now.
    pub fn count(&self) -> u8 {
        self.pads.iter().filter(|p| p.is_some()).count() as u8
    }

    /// Creates pad `index` if it does not exist.
    pub fn arrive(&mut self, index: u8) -> Result<(), PadDrop> {
        let slot = usize::from(index);
        if slot >= self.pads.len() {
            return Err(PadDrop::UnknownPad);
        }
        if self.pads[slot].is_some() {
            return Ok(());
        }
        let fd = self.free.pop().ok_or(PadDrop::NoDevice)?;
        match self.build(&fd, index) {
            Ok(()) => {
                self.pads[slot] = Some(Pad {
                    fd,
                    state: PadState::default(),
                    effects: [None; MAX_EFFECTS],
                });
                Ok(())
            }
            Err(e) => {
                self.errors
                    .push(format!("creating virtual pad {index}: {e}"));
                self.free.push(fd);
                Err(PadDrop::NoDevice)
            }
        }
    }

    fn build(&self, fd: &OwnedFd, index: u8) -> std::io::Result<()> {
        let fd = fd.as_fd();
        let ops = &self.ops;
        ops.set_evbit(fd, EV_KEY)?;
        for (_, code) in BUTTON_MAP {
            ops.set_keybit(fd, code)?;
        }
        ops.set_evbit(fd, EV_ABS)?;
        for axis in AXES {
            ops.set_absbit(fd, axis.code)?;
            ops.abs_setup(fd, axis)?;
        }
        ops.set_evbit(fd, EV_FF)?;
        ops.set_ffbit(fd, FF_RUMBLE)?;
        ops.dev_setup(
            fd,
            &DeviceSetup {
                // The Xbox 360 pad's ids: every game and SDL knows its layout.
                name: format!("lumen virtual pad {index} (Xbox 360 layout)"),
                vendor: 0x045e,
                product: 0x028e,
                version: 0x0110,
                ff_effects_max: MAX_EFFECTS as u32,
            },
        )?;
        ops.dev_create(fd)
    }

    /// Brings pad `index` to `next` (creating it if needed).
    pub fn update(&mut self, index: u8, next: PadState) -> Result<(), PadDrop> {
        self.arrive(index)?;
        let Some(pad) = self
            .pads
            .get_mut(usize::from(index))
            .and_then(Option::as_mut)
        else {
            return Err(PadDrop::UnknownPad);
        };
        let events = pad.state.diff(&next);
        if !events.is_empty() {
            if let Err(e) = crate::uinput::write_events(pad.fd.as_fd(), &events) {
                self.errors.push(format!("writing to pad {index}: {e}"));
                return Err(PadDrop::NoDevice);
            }
        }
        pad.state = next;
        Ok(())
    }

    /// Returns pad `index` to rest and destroys it; its fd goes back to the pool. Returns the
    /// number of buttons that were held.
    pub fn remove(&mut self, index: u8) -> u64 {
        let Some(pad) = self.pads.get_mut(usize::from(index)).and_then(Option::take) else {
            return 0;
        };
        let held = u64::from(pad.state.buttons.count_ones());
        let events = pad.state.diff(&PadState::default());
        if !events.is_empty() {
            if let Err(e) = crate::uinput::write_events(pad.fd.as_fd(), &events) {
                self.errors.push(format!("releasing pad {index}: {e}"));
            }
        }
        if let Err(e) = self.ops.dev_destroy(pad.fd.as_fd()) {
            self.errors.push(format!("destroying pad {index}: {e}"));
        }
        self.free.push(pad.fd);
        held
    }

    /// Removes every pad (stream end, shutdown, new devices); returns the buttons released.
    pub fn remove_all(&mut self) -> u64 {
        (0..MAX_GAMEPADS).map(|i| self.remove(i)).sum()
    }

    /// Pad `index`'s state, if it exists.
    #[cfg(test)]
    fn state_of(&self, index: u8) -> Option<PadState> {
        self.pads
            .get(usize::from(index))
            .and_then(Option::as_ref)
            .map(|p| p.state)
    }

    /// The fds of existing pads, to poll for force-feedback requests.
    pub fn pollable(&self) -> Vec<(u8, std::os::fd::BorrowedFd<'_>)> {
        self.pads
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i as u8, p.fd.as_fd())))
            .collect()
    }

    /// Reads what the kernel queued on pad `index` (force-feedback uploads, erases, plays) and
    /// answers it; returns the rumble to forward to the client.
    pub fn service(&mut self, index: u8) -> Vec<InputToNet> {
        let mut out = Vec::new();
        let Some(pad) = self
            .pads
            .get_mut(usize::from(index))
            .and_then(Option::as_mut)
        else {
            return out;
        };
        let mut buf = [0u8; EVENT_SIZE * 16];
        let n = match rustix::io::read(pad.fd.as_fd(), &mut buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::AGAIN) => return out,
            Err(e) => {
                self.errors.push(format!("reading pad {index}: {e}"));
                return out;
            }
        };
        for chunk in buf[..n].chunks_exact(EVENT_SIZE) {
            let Some(event) = Event::from_bytes(chunk) else {
                continue;
            };
            match (event.kind, event.code) {
                (EV_UINPUT, UI_FF_UPLOAD) => {
                    match self.ops.ff_upload(pad.fd.as_fd(), event.value as u32) {
                        Ok(upload) => {
                            if let Some(slot) = usize::try_from(upload.effect_id)
                                .ok()
                                .and_then(|id| pad.effects.get_mut(id))
                            {
                                *slot = Some(upload.rumble);
                            }
                        }
                        Err(e) => self
                            .errors
                            .push(format!("rumble upload on pad {index}: {e}")),
                    }
                }
                (EV_UINPUT, UI_FF_ERASE) => {
                    match self.ops.ff_erase(pad.fd.as_fd(), event.value as u32) {
                        Ok(id) => {
                            if let Some(slot) = pad.effects.get_mut(id as usize) {
                                *slot = None;
                            }
                        }
                        Err(e) => self
                            .errors
                            .push(format!("rumble erase on pad {index}: {e}")),
                    }
                }
                (EV_FF, id) => {
                    let Some(Some((strong, weak))) = pad.effects.get(usize::from(id)).copied()
                    else {
                        continue;
                    };
                    let (low, high) = if event.value > 0 {
                        (strong, weak)
                    } else {
                        (0, 0)
                    };
                    out.push(InputToNet::Rumble {
                        pad: index,
                        low_frequency: low,
                        high_frequency: high,
                    });
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io;
    use std::os::fd::BorrowedFd;
    use std::sync::{Arc, Mutex};

    use crate::uinput::FfUpload;

    /// A uinput ioctl as the fake saw it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Call {
        EvBit(u16),
        KeyBit(u16),
        AbsBit(u16),
        FfBit(u16),
        AbsSetup(AbsAxis),
        DevSetup(DeviceSetup),
        Create,
        Destroy,
        FfUpload(u32),
        FfErase(u32),
    }

    /// Records every ioctl; answers force-feedback requests with a scripted effect.
    #[derive(Clone, Default)]
    pub struct FakeUinput {
        pub calls: Arc<Mutex<Vec<Call>>>,
        pub upload: Arc<Mutex<Option<FfUpload>>>,
    }

    impl FakeUinput {
        fn record(&self, call: Call) -> io::Result<()> {
            self.calls.lock().unwrap().push(call);
            Ok(())
        }
    }

    impl UinputOps for FakeUinput {
        fn set_evbit(&self, _: BorrowedFd<'_>, ev: u16) -> io::Result<()> {
            self.record(Call::EvBit(ev))
        }
        fn set_keybit(&self, _: BorrowedFd<'_>, key: u16) -> io::Result<()> {
            self.record(Call::KeyBit(key))
        }
        fn set_absbit(&self, _: BorrowedFd<'_>, abs: u16) -> io::Result<()> {
            self.record(Call::AbsBit(abs))
        }
        fn set_ffbit(&self, _: BorrowedFd<'_>, ff: u16) -> io::Result<()> {
            self.record(Call::FfBit(ff))
        }
        fn abs_setup(&self, _: BorrowedFd<'_>, axis: AbsAxis) -> io::Result<()> {
            self.record(Call::AbsSetup(axis))
        }
        fn dev_setup(&self, _: BorrowedFd<'_>, setup: &DeviceSetup) -> io::Result<()> {
            self.record(Call::DevSetup(setup.clone()))
        }
        fn dev_create(&self, _: BorrowedFd<'_>) -> io::Result<()> {
            self.record(Call::Create)
        }
        fn dev_destroy(&self, _: BorrowedFd<'_>) -> io::Result<()> {
            self.record(Call::Destroy)
        }
        fn ff_upload(&self, _: BorrowedFd<'_>, request_id: u32) -> io::Result<FfUpload> {
            self.record(Call::FfUpload(request_id))?;
            self.upload
                .lock()
                .unwrap()
                .ok_or_else(|| io::Error::other("no upload scripted"))
        }
        fn ff_erase(&self, _: BorrowedFd<'_>, request_id: u32) -> io::Result<u32> {
            self.record(Call::FfErase(request_id))?;
            Ok(0)
        }
    }

    /// A stand-in for one `/dev/uinput` open file: the pad's end of a socketpair, and the
    /// test's end to read the written `input_event`s from (and to play the kernel's requests).
    pub fn device() -> (OwnedFd, std::os::unix::net::UnixDatagram) {
        let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_nonblocking(true).unwrap();
        (OwnedFd::from(ours), theirs)
    }

    pub fn read_events(peer: &std::os::unix::net::UnixDatagram) -> Vec<Event> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = peer.recv(&mut buf) {
            out.extend(
                buf[..n]
                    .chunks_exact(EVENT_SIZE)
                    .filter_map(Event::from_bytes),
            );
        }
        out
    }

    fn rest() -> PadState {
        PadState::default()
    }

    #[test]
    fn a_pad_is_built_as_an_xbox_pad_with_rumble() {
        let fake = FakeUinput::default();
        let mut pads = Pads::new(Box::new(fake.clone()));
        let (fd, _peer) = device();
        pads.set_pool(vec![fd]);
        pads.arrive(3).unwrap();
        let calls = fake.calls.lock().unwrap().clone();
        assert!(calls.contains(&Call::KeyBit(BTN_SOUTH)));
        assert!(calls.contains(&Call::KeyBit(BTN_MODE)));
        assert!(calls.contains(&Call::AbsSetup(stick_axis(ABS_RY))));
        assert!(calls.contains(&Call::AbsSetup(trigger_axis(ABS_RZ))));
        assert!(calls.contains(&Call::FfBit(FF_RUMBLE)));
        let Some(Call::DevSetup(setup)) = calls.iter().find(|c| matches!(c, Call::DevSetup(_)))
        else {
            panic!("no UI_DEV_SETUP in {calls:?}");
        };
        assert_eq!((setup.vendor, setup.product), (0x045e, 0x028e));
        assert_eq!(calls.last(), Some(&Call::Create));
        assert_eq!(pads.count(), 1);
    }

    #[test]
    fn state_changes_are_written_as_input_events() {
        let mut pads = Pads::new(Box::new(FakeUinput::default()));
        let (fd, peer) = device();
        pads.set_pool(vec![fd]);
        let state = PadState::from_client(
            buttons::A | buttons::UP | buttons::LB,
            200,
            0,
            (1000, 32767),
            (0, i16::MIN),
        );
        pads.update(0, state).unwrap();
        let events = read_events(&peer);
        assert_eq!(
            events,
            vec![
                Event::new(EV_KEY, BTN_SOUTH, 1),
                Event::new(EV_KEY, BTN_TL, 1),
                Event::new(EV_ABS, ABS_X, 1000),
                Event::new(EV_ABS, ABS_Y, -32767),
                Event::new(EV_ABS, ABS_RY, 32767),
                Event::new(EV_ABS, ABS_Z, 200),
                Event::new(EV_ABS, ABS_HAT0Y, -1),
                Event::new(EV_SYN, SYN_REPORT, 0),
            ]
        );
        // The same state again writes nothing; releasing A writes only A.
        pads.update(0, state).unwrap();
        assert!(read_events(&peer).is_empty());
        let released = PadState {
            buttons: state.buttons & !buttons::A,
            ..state
        };
        pads.update(0, released).unwrap();
        assert_eq!(
            read_events(&peer),
            vec![
                Event::new(EV_KEY, BTN_SOUTH, 0),
                Event::new(EV_SYN, SYN_REPORT, 0)
            ]
        );
    }

    #[test]
    fn removing_a_pad_releases_everything_and_destroys_it() {
        let fake = FakeUinput::default();
        let mut pads = Pads::new(Box::new(fake.clone()));
        let (fd, peer) = device();
        pads.set_pool(vec![fd]);
        pads.update(
            1,
            PadState::from_client(buttons::B | buttons::RIGHT, 0, 255, (0, 0), (5, 0)),
        )
        .unwrap();
        read_events(&peer);
        assert_eq!(pads.remove(1), 2);
        let events = read_events(&peer);
        assert!(events.contains(&Event::new(EV_KEY, BTN_EAST, 0)));
        assert!(events.contains(&Event::new(EV_ABS, ABS_RZ, 0)));
        assert!(events.contains(&Event::new(EV_ABS, ABS_HAT0X, 0)));
        assert!(events.contains(&Event::new(EV_ABS, ABS_RX, 0)));
        assert_eq!(fake.calls.lock().unwrap().last(), Some(&Call::Destroy));
        assert_eq!(pads.count(), 0);
        // The fd is reused for the next pad.
        pads.arrive(7).unwrap();
        assert_eq!(pads.count(), 1);
        assert_eq!(pads.state_of(7), Some(rest()));
    }

    #[test]
    fn without_uinput_fds_pads_are_refused() {
        let mut pads = Pads::new(Box::new(FakeUinput::default()));
        assert_eq!(pads.arrive(0), Err(PadDrop::NoDevice));
        assert_eq!(pads.arrive(MAX_GAMEPADS), Err(PadDrop::UnknownPad));
    }

    #[test]
    fn stick_y_is_flipped_without_overflow() {
        let s = PadState::from_client(0, 0, 0, (i16::MIN, i16::MIN), (i16::MAX, i16::MAX));
        assert_eq!(s.axes[0], -32768);
        assert_eq!(s.axes[1], 32767);
        assert_eq!(s.axes[2], 32767);
        assert_eq!(s.axes[3], -32767);
    }

    #[test]
    fn rumble_requests_become_rumble_for_the_client() {
        let fake = FakeUinput::default();
        *fake.upload.lock().unwrap() = Some(FfUpload {
            effect_id: 2,
            effect_type: FF_RUMBLE,
            rumble: (0x8000, 0x1234),
        });
        let mut pads = Pads::new(Box::new(fake.clone()));
        let (fd, peer) = device();
        pads.set_pool(vec![fd]);
        pads.arrive(4).unwrap();
        // The kernel's side: an upload request, then play effect 2, then stop it.
        let kernel = |e: Event| peer.send(&e.to_bytes()).unwrap();
        kernel(Event::new(EV_UINPUT, UI_FF_UPLOAD, 9));
        assert!(pads.service(4).is_empty());
        assert!(fake.calls.lock().unwrap().contains(&Call::FfUpload(9)));
        kernel(Event::new(EV_FF, 2, 1));
        assert_eq!(
            pads.service(4),
            vec![InputToNet::Rumble {
                pad: 4,
                low_frequency: 0x8000,
                high_frequency: 0x1234
            }]
        );
        kernel(Event::new(EV_FF, 2, 0));
        assert_eq!(
            pads.service(4),
            vec![InputToNet::Rumble {
                pad: 4,
                low_frequency: 0,
                high_frequency: 0
            }]
        );
        // An effect that was never uploaded plays nothing.
        kernel(Event::new(EV_FF, 5, 1));
        assert!(pads.service(4).is_empty());
    }
}
