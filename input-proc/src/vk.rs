//! Moonlight's Windows virtual-key codes to Linux evdev key codes (`linux/input-event-codes.h`),
//! and ASCII text to US-layout key strokes (for EIS servers without the text interface).
//!
//! Moonlight sends the Windows virtual-key code of each key (the low byte), the same on every
//! client platform. Windows has one code for Enter (keypad or not) and generic Shift/Ctrl/Alt
//! codes beside the left/right ones; the generic ones map to the left key.

/// Evdev key codes used here, by name (values from `linux/input-event-codes.h`).
pub mod key {
    pub const ESC: u32 = 1;
    pub const N1: u32 = 2;
    pub const N0: u32 = 11;
    pub const MINUS: u32 = 12;
    pub const EQUAL: u32 = 13;
    pub const BACKSPACE: u32 = 14;
    pub const TAB: u32 = 15;
    pub const Q: u32 = 16;
    pub const W: u32 = 17;
    pub const E: u32 = 18;
    pub const R: u32 = 19;
    pub const T: u32 = 20;
    pub const Y: u32 = 21;
    pub const U: u32 = 22;
    pub const I: u32 = 23;
    pub const O: u32 = 24;
    pub const P: u32 = 25;
    pub const LEFTBRACE: u32 = 26;
    pub const RIGHTBRACE: u32 = 27;
    pub const ENTER: u32 = 28;
    pub const LEFTCTRL: u32 = 29;
    pub const A: u32 = 30;
    pub const S: u32 = 31;
    pub const D: u32 = 32;
    pub const F: u32 = 33;
    pub const G: u32 = 34;
    pub const H: u32 = 35;
    pub const J: u32 = 36;
    pub const K: u32 = 37;
    pub const L: u32 = 38;
    pub const SEMICOLON: u32 = 39;
    pub const APOSTROPHE: u32 = 40;
    pub const GRAVE: u32 = 41;
    pub const LEFTSHIFT: u32 = 42;
    pub const BACKSLASH: u32 = 43;
    pub const Z: u32 = 44;
    pub const X: u32 = 45;
    pub const C: u32 = 46;
    pub const V: u32 = 47;
    pub const B: u32 = 48;
    pub const N: u32 = 49;
    pub const M: u32 = 50;
    pub const COMMA: u32 = 51;
    pub const DOT: u32 = 52;
    pub const SLASH: u32 = 53;
    pub const RIGHTSHIFT: u32 = 54;
    pub const KPASTERISK: u32 = 55;
    pub const LEFTALT: u32 = 56;
    pub const SPACE: u32 = 57;
    pub const CAPSLOCK: u32 = 58;
    pub const F1: u32 = 59;
    pub const NUMLOCK: u32 = 69;
    pub const SCROLLLOCK: u32 = 70;
    pub const KP7: u32 = 71;
    pub const KP8: u32 = 72;
    pub const KP9: u32 = 73;
    pub const KPMINUS: u32 = 74;
    pub const KP4: u32 = 75;
    pub const KP5: u32 = 76;
    pub const KP6: u32 = 77;
    pub const KPPLUS: u32 = 78;
    pub const KP1: u32 = 79;
    pub const KP2: u32 = 80;
    pub const KP3: u32 = 81;
    pub const KP0: u32 = 82;
    pub const KPDOT: u32 = 83;
    pub const ZENKAKUHANKAKU: u32 = 85;
    pub const KEY_102ND: u32 = 86;
    pub const F11: u32 = 87;
    pub const F12: u32 = 88;
    pub const RO: u32 = 89;
    pub const HENKAN: u32 = 92;
    pub const KATAKANAHIRAGANA: u32 = 93;
    pub const MUHENKAN: u32 = 94;
    pub const RIGHTCTRL: u32 = 97;
    pub const KPSLASH: u32 = 98;
    pub const SYSRQ: u32 = 99;
    pub const RIGHTALT: u32 = 100;
    pub const HOME: u32 = 102;
    pub const UP: u32 = 103;
    pub const PAGEUP: u32 = 104;
    pub const LEFT: u32 = 105;
    pub const RIGHT: u32 = 106;
    pub const END: u32 = 107;
    pub const DOWN: u32 = 108;
    pub const PAGEDOWN: u32 = 109;
    pub const INSERT: u32 = 110;
    pub const DELETE: u32 = 111;
    pub const MUTE: u32 = 113;
    pub const VOLUMEDOWN: u32 = 114;
    pub const VOLUMEUP: u32 = 115;
    pub const PAUSE: u32 = 119;
    pub const KPCOMMA: u32 = 121;
    pub const HANGEUL: u32 = 122;
    pub const HANJA: u32 = 123;
    pub const LEFTMETA: u32 = 125;
    pub const RIGHTMETA: u32 = 126;
    pub const COMPOSE: u32 = 127;
    pub const STOP: u32 = 128;
    pub const HELP: u32 = 138;
    pub const CALC: u32 = 140;
    pub const SLEEP: u32 = 142;
    pub const MAIL: u32 = 155;
    pub const BOOKMARKS: u32 = 156;
    pub const COMPUTER: u32 = 157;
    pub const BACK: u32 = 158;
    pub const FORWARD: u32 = 159;
    pub const NEXTSONG: u32 = 163;
    pub const PLAYPAUSE: u32 = 164;
    pub const PREVIOUSSONG: u32 = 165;
    pub const STOPCD: u32 = 166;
    pub const HOMEPAGE: u32 = 172;
    pub const REFRESH: u32 = 173;
    pub const F13: u32 = 183;
    pub const PLAY: u32 = 207;
    pub const PRINT: u32 = 210;
    pub const SEARCH: u32 = 217;
    pub const MEDIA: u32 = 226;
    pub const SELECT: u32 = 0x161;
    pub const CLEAR: u32 = 0x163;
    pub const ZOOM: u32 = 0x174;
}

/// The evdev key for a Windows virtual-key code; `None` for codes with no key on Linux (mouse
/// buttons, IME process keys, OEM-specific codes).
pub fn evdev_key(vk: u8) -> Option<u32> {
    use key::*;
    let code = match vk {
        0x08 => BACKSPACE,
        0x09 => TAB,
        0x0C => CLEAR,
        0x0D => ENTER,
        0x10 => LEFTSHIFT,
        0x11 => LEFTCTRL,
        0x12 => LEFTALT,
        0x13 => PAUSE,
        0x14 => CAPSLOCK,
        // VK_KANA / VK_HANGUL and VK_HANJA / VK_KANJI share codes; the Korean keys have their
        // own evdev codes, the Japanese ones arrive as VK_CONVERT, VK_NONCONVERT, VK_OEM_*.
        0x15 => HANGEUL,
        0x19 => HANJA,
        0x1B => ESC,
        0x1C => HENKAN,
        0x1D => MUHENKAN,
        0x20 => SPACE,
        0x21 => PAGEUP,
        0x22 => PAGEDOWN,
        0x23 => END,
        0x24 => HOME,
        0x25 => LEFT,
        0x26 => UP,
        0x27 => RIGHT,
        0x28 => DOWN,
        0x29 => SELECT,
        0x2A => PRINT,
        0x2C => SYSRQ,
        0x2D => INSERT,
        0x2E => DELETE,
        0x2F => HELP,
        0x30 => N0,
        // '1'..'9' are consecutive in both tables.
        0x31..=0x39 => N1 + u32::from(vk - 0x31),
        0x41..=0x5A => LETTERS[usize::from(vk - 0x41)],
        0x5B => LEFTMETA,
        0x5C => RIGHTMETA,
        0x5D => COMPOSE,
        0x5F => SLEEP,
        0x60 => KP0,
        0x61 => KP1,
        0x62 => KP2,
        0x63 => KP3,
        0x64 => KP4,
        0x65 => KP5,
        0x66 => KP6,
        0x67 => KP7,
        0x68 => KP8,
        0x69 => KP9,
        0x6A => KPASTERISK,
        0x6B => KPPLUS,
        0x6C => KPCOMMA,
        0x6D => KPMINUS,
        0x6E => KPDOT,
        0x6F => KPSLASH,
        // F1..F10 are consecutive; F11, F12 and F13..F24 are separate runs.
        0x70..=0x79 => F1 + u32::from(vk - 0x70),
        0x7A => F11,
        0x7B => F12,
        0x7C..=0x87 => F13 + u32::from(vk - 0x7C),
        0x90 => NUMLOCK,
        0x91 => SCROLLLOCK,
        0xA0 => LEFTSHIFT,
        0xA1 => RIGHTSHIFT,
        0xA2 => LEFTCTRL,
        0xA3 => RIGHTCTRL,
        0xA4 => LEFTALT,
        0xA5 => RIGHTALT,
        0xA6 => BACK,
        0xA7 => FORWARD,
        0xA8 => REFRESH,
        0xA9 => STOP,
        0xAA => SEARCH,
        0xAB => BOOKMARKS,
        0xAC => HOMEPAGE,
        0xAD => MUTE,
        0xAE => VOLUMEDOWN,
        0xAF => VOLUMEUP,
        0xB0 => NEXTSONG,
        0xB1 => PREVIOUSSONG,
        0xB2 => STOPCD,
        0xB3 => PLAYPAUSE,
        0xB4 => MAIL,
        0xB5 => MEDIA,
        0xB6 => COMPUTER,
        0xB7 => CALC,
        0xBA => SEMICOLON,
        0xBB => EQUAL,
        0xBC => COMMA,
        0xBD => MINUS,
        0xBE => DOT,
        0xBF => SLASH,
        0xC0 => GRAVE,
        // VK_ABNT_C1: the Brazilian /? key, evdev's RO.
        0xC1 => RO,
        0xDB => LEFTBRACE,
        0xDC => BACKSLASH,
        0xDD => RIGHTBRACE,
        0xDE => APOSTROPHE,
        0xE2 => KEY_102ND,
        // VK_OEM_COPY / VK_OEM_AUTO / VK_OEM_ENLW: the Japanese 半角/全角 key; VK_OEM_ATTN (英数)
        // is its Kana lock neighbour.
        0xF0 => KATAKANAHIRAGANA,
        0xF2..=0xF4 => ZENKAKUHANKAKU,
        0xFA => PLAY,
        0xFB => ZOOM,
        _ => return None,
    };
    Some(code)
}

/// `A`..`Z` in evdev order (the QWERTY rows, not the alphabet).
const LETTERS: [u32; 26] = {
    use key::*;
    [
        A, B, C, D, E, F, G, H, I, J, K, L, M, N, O, P, Q, R, S, T, U, V, W, X, Y, Z,
    ]
};

/// A key stroke that types one character on a US layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stroke {
    pub key: u32,
    pub shift: bool,
}

/// The US-layout stroke for a printable ASCII character (and `\n`, `\t`), used to type text
/// when the EIS server offers no text interface; `None` for anything else.
pub fn us_stroke(c: char) -> Option<Stroke> {
    use key::*;
    let plain = |key| Some(Stroke { key, shift: false });
    let shifted = |key| Some(Stroke { key, shift: true });
    match c {
        'a'..='z' => plain(LETTERS[c as usize - 'a' as usize]),
        'A'..='Z' => shifted(LETTERS[c as usize - 'A' as usize]),
        '1'..='9' => plain(N1 + (c as u32 - '1' as u32)),
        '0' => plain(N0),
        ' ' => plain(SPACE),
        '\n' => plain(ENTER),
        '\t' => plain(TAB),
        '-' => plain(MINUS),
        '=' => plain(EQUAL),
        '[' => plain(LEFTBRACE),
        ']' => plain(RIGHTBRACE),
        ';' => plain(SEMICOLON),
        '\'' => plain(APOSTROPHE),
        '`' => plain(GRAVE),
        '\\' => plain(BACKSLASH),
        ',' => plain(COMMA),
        '.' => plain(DOT),
        '/' => plain(SLASH),
        '!' => shifted(N1),
        '@' => shifted(N1 + 1),
        '#' => shifted(N1 + 2),
        '$' => shifted(N1 + 3),
        '%' => shifted(N1 + 4),
        '^' => shifted(N1 + 5),
        '&' => shifted(N1 + 6),
        '*' => shifted(N1 + 7),
        '(' => shifted(N1 + 8),
        ')' => shifted(N0),
        '_' => shifted(MINUS),
        '+' => shifted(EQUAL),
        '{' => shifted(LEFTBRACE),
        '}' => shifted(RIGHTBRACE),
        ':' => shifted(SEMICOLON),
        '"' => shifted(APOSTROPHE),
        '~' => shifted(GRAVE),
        '|' => shifted(BACKSLASH),
        '<' => shifted(COMMA),
        '>' => shifted(DOT),
        '?' => shifted(SLASH),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_digits_and_function_keys_map_to_their_evdev_codes() {
        // Spot values straight from input-event-codes.h, not from the table's own constants.
        assert_eq!(evdev_key(b'A'), Some(30));
        assert_eq!(evdev_key(b'Q'), Some(16));
        assert_eq!(evdev_key(b'Z'), Some(44));
        assert_eq!(evdev_key(b'M'), Some(50));
        assert_eq!(evdev_key(b'1'), Some(2));
        assert_eq!(evdev_key(b'9'), Some(10));
        assert_eq!(evdev_key(b'0'), Some(11));
        assert_eq!(evdev_key(0x70), Some(59)); // F1
        assert_eq!(evdev_key(0x79), Some(68)); // F10
        assert_eq!(evdev_key(0x7A), Some(87)); // F11
        assert_eq!(evdev_key(0x7B), Some(88)); // F12
        assert_eq!(evdev_key(0x7C), Some(183)); // F13
        assert_eq!(evdev_key(0x87), Some(194)); // F24
    }

    #[test]
    fn every_letter_maps_to_a_distinct_key() {
        let mut seen: Vec<u32> = (b'A'..=b'Z').filter_map(evdev_key).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 26);
    }

    #[test]
    fn modifiers_map_left_and_right() {
        assert_eq!(evdev_key(0x10), Some(42)); // VK_SHIFT → left shift
        assert_eq!(evdev_key(0xA0), Some(42));
        assert_eq!(evdev_key(0xA1), Some(54));
        assert_eq!(evdev_key(0x11), Some(29));
        assert_eq!(evdev_key(0xA2), Some(29));
        assert_eq!(evdev_key(0xA3), Some(97));
        assert_eq!(evdev_key(0x12), Some(56));
        assert_eq!(evdev_key(0xA4), Some(56));
        assert_eq!(evdev_key(0xA5), Some(100));
        assert_eq!(evdev_key(0x5B), Some(125));
        assert_eq!(evdev_key(0x5C), Some(126));
        assert_eq!(evdev_key(0x5D), Some(127)); // the menu key
    }

    #[test]
    fn keypad_maps_to_keypad_keys() {
        let digits: Vec<_> = (0x60..=0x69).map(evdev_key).collect();
        assert_eq!(
            digits,
            [82, 79, 80, 81, 75, 76, 77, 71, 72, 73].map(Some).to_vec()
        );
        assert_eq!(evdev_key(0x6A), Some(55));
        assert_eq!(evdev_key(0x6B), Some(78));
        assert_eq!(evdev_key(0x6D), Some(74));
        assert_eq!(evdev_key(0x6E), Some(83));
        assert_eq!(evdev_key(0x6F), Some(98));
        assert_eq!(evdev_key(0x90), Some(69));
    }

    #[test]
    fn navigation_and_editing_keys_map() {
        for (vk, code) in [
            (0x08, 14),
            (0x09, 15),
            (0x0D, 28),
            (0x1B, 1),
            (0x20, 57),
            (0x21, 104),
            (0x22, 109),
            (0x23, 107),
            (0x24, 102),
            (0x25, 105),
            (0x26, 103),
            (0x27, 106),
            (0x28, 108),
            (0x2C, 99),
            (0x2D, 110),
            (0x2E, 111),
            (0x13, 119),
            (0x14, 58),
            (0x91, 70),
        ] {
            assert_eq!(evdev_key(vk), Some(code), "vk {vk:#04x}");
        }
    }

    #[test]
    fn punctuation_maps_to_us_positions() {
        for (vk, code) in [
            (0xBA, 39),
            (0xBB, 13),
            (0xBC, 51),
            (0xBD, 12),
            (0xBE, 52),
            (0xBF, 53),
            (0xC0, 41),
            (0xDB, 26),
            (0xDC, 43),
            (0xDD, 27),
            (0xDE, 40),
            (0xE2, 86),
        ] {
            assert_eq!(evdev_key(vk), Some(code), "vk {vk:#04x}");
        }
    }

    #[test]
    fn media_and_browser_keys_map() {
        for (vk, code) in [
            (0xAD, 113),
            (0xAE, 114),
            (0xAF, 115),
            (0xB0, 163),
            (0xB1, 165),
            (0xB2, 166),
            (0xB3, 164),
            (0xA6, 158),
            (0xA7, 159),
            (0xA8, 173),
            (0xAA, 217),
            (0xAC, 172),
            (0xB4, 155),
        ] {
            assert_eq!(evdev_key(vk), Some(code), "vk {vk:#04x}");
        }
    }

    #[test]
    fn codes_without_a_key_are_none() {
        // Mouse buttons, reserved and IME codes.
        for vk in [
            0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x0A, 0x3A, 0x40, 0x5E, 0xE5, 0xFF,
        ] {
            assert_eq!(evdev_key(vk), None, "vk {vk:#04x}");
        }
    }

    #[test]
    fn no_two_codes_of_a_kind_collide() {
        // The table is a function of vk; the only codes sharing a key are the generic and
        // left modifiers.
        let mut by_key = std::collections::HashMap::new();
        for vk in 0..=255u8 {
            if let Some(code) = evdev_key(vk) {
                by_key.entry(code).or_insert_with(Vec::new).push(vk);
            }
        }
        for (code, vks) in by_key {
            if vks.len() > 1 {
                let generic = [
                    vec![0x10, 0xA0],
                    vec![0x11, 0xA2],
                    vec![0x12, 0xA4],
                    vec![0xF2, 0xF3, 0xF4],
                ];
                assert!(generic.contains(&vks), "key {code} from {vks:x?}");
            }
        }
    }

    #[test]
    fn us_strokes_type_ascii() {
        assert_eq!(
            us_stroke('a'),
            Some(Stroke {
                key: 30,
                shift: false
            })
        );
        assert_eq!(
            us_stroke('A'),
            Some(Stroke {
                key: 30,
                shift: true
            })
        );
        assert_eq!(
            us_stroke('!'),
            Some(Stroke {
                key: 2,
                shift: true
            })
        );
        assert_eq!(
            us_stroke(')'),
            Some(Stroke {
                key: 11,
                shift: true
            })
        );
        assert_eq!(
            us_stroke('?'),
            Some(Stroke {
                key: 53,
                shift: true
            })
        );
        assert_eq!(
            us_stroke(' '),
            Some(Stroke {
                key: 57,
                shift: false
            })
        );
        assert_eq!(us_stroke('é'), None);
        // Every printable ASCII character has a stroke.
        for c in ' '..='~' {
            assert!(us_stroke(c).is_some(), "{c:?}");
        }
    }
}
