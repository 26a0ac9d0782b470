//! The parameters of `/launch` and `/resume` (gamestream-protocol.md §2.5). The stream's real
//! settings come later in RTSP ANNOUNCE; here the keys, the app and the RTSP flavour matter, and
//! what else the client sends is checked for form so a garbled launch is refused early.

use super::query::{hex_array, Query};

/// `WxHxFPS` as the client asked (FPS 0 is what moonlight-qt sends GFE above 60).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

/// A well-formed `/launch` or `/resume`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchParams {
    /// The app asked for: always present on `/launch`, optional on `/resume`.
    pub appid: Option<u32>,
    pub mode: Option<Mode>,
    /// The AES key of every per-session cipher.
    pub rikey: [u8; 16],
    /// The first 4 bytes of the client's IV (sent as a signed decimal int32).
    pub rikeyid: u32,
    /// `(channelMask << 16) | channelCount`, with 2, 6 or 8 channels.
    pub surround_audio_info: Option<u32>,
    /// `corever >= 1`: the client speaks encrypted RTSP.
    pub encrypted_rtsp: bool,
}

/// Why a launch was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum LaunchError {
    #[error("missing or malformed rikey (32 hex digits)")]
    BadRikey,
    #[error("missing or malformed rikeyid")]
    BadRikeyid,
    #[error("missing or malformed appid")]
    BadAppid,
    #[error("malformed mode {0:?}")]
    BadMode(String),
    #[error("malformed surroundAudioInfo {0:?}")]
    BadSurroundAudioInfo(String),
    #[error("{0} audio channels")]
    AudioChannels(u32),
}

/// Longest `mode` or `surroundAudioInfo` value quoted back in an error.
const QUOTED: usize = 32;

fn quoted(value: &str) -> String {
    value.chars().take(QUOTED).collect()
}

/// Parses a launch (`resume`: the app and mode are not required).
pub fn parse(query: &Query, resume: bool) -> Result<LaunchParams, LaunchError> {
    let rikey = query
        .get("rikey")
        .and_then(hex_array::<16>)
        .ok_or(LaunchError::BadRikey)?;
    // A signed decimal int32 (the IV's first 4 bytes read big-endian); its bits are what count.
    let rikeyid = query
        .get("rikeyid")
        .and_then(|v| v.parse::<i32>().ok())
        .ok_or(LaunchError::BadRikeyid)? as u32;
    let (appid, mode) = if resume {
        (None, None)
    } else {
        let appid = query
            .get("appid")
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or(LaunchError::BadAppid)?;
        let mode = query.get("mode").map(parse_mode).transpose()?;
        (Some(appid), mode)
    };
    let surround_audio_info = query
        .get("surroundAudioInfo")
        .map(|info| {
            let value: u32 = info
                .parse()
                .map_err(|_| LaunchError::BadSurroundAudioInfo(quoted(info)))?;
            let channels = value & 0xffff;
            if ![2, 6, 8].contains(&channels) {
                return Err(LaunchError::AudioChannels(channels));
            }
            Ok(value)
        })
        .transpose()?;
    let encrypted_rtsp = query
        .get("corever")
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|v| v >= 1);
    Ok(LaunchParams {
        appid,
        mode,
        rikey,
        rikeyid,
        surround_audio_info,
        encrypted_rtsp,
    })
}

/// `WxHxFPS`, each side 16..=8192, FPS at most 1000.
fn parse_mode(mode: &str) -> Result<Mode, LaunchError> {
    let bad = || LaunchError::BadMode(quoted(mode));
    let mut parts = mode.split('x').map(str::parse::<u32>);
    let (Some(Ok(width)), Some(Ok(height)), Some(Ok(fps)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !(16..=8192).contains(&width) || !(16..=8192).contains(&height) || fps > 1000 {
        return Err(bad());
    }
    Ok(Mode { width, height, fps })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f";

    fn q(s: &str) -> Query {
        Query::parse(Some(s)).unwrap()
    }

    #[test]
    fn parses_what_moonlight_python_sends() {
        let launch = parse(
            &q(&format!(
                "appid=1&mode=640x360x30&additionalStates=1&sops=1&rikey={KEY}&rikeyid=-559038737\
                 &localAudioPlayMode=0&surroundAudioInfo=196610&remoteControllersBitmap=0&gcmap=0\
                 &gcpersist=0&&corever=1"
            )),
            false,
        )
        .unwrap();
        assert_eq!(
            launch,
            LaunchParams {
                appid: Some(1),
                mode: Some(Mode {
                    width: 640,
                    height: 360,
                    fps: 30
                }),
                rikey: std::array::from_fn(|i| i as u8),
                rikeyid: 0xDEAD_BEEF,
                surround_audio_info: Some(0x30002),
                encrypted_rtsp: true,
            }
        );
        let resume = parse(&q(&format!("rikey={KEY}&rikeyid=5")), true).unwrap();
        assert!(!resume.encrypted_rtsp);
        assert_eq!((resume.rikeyid, resume.appid), (5, None));
    }

    #[test]
    fn refuses_bad_keys_apps_and_modes() {
        for (bad, why) in [
            ("appid=1&rikeyid=1".to_string(), LaunchError::BadRikey),
            (
                "appid=1&rikey=00&rikeyid=1".to_string(),
                LaunchError::BadRikey,
            ),
            (format!("appid=1&rikey={KEY}"), LaunchError::BadRikeyid),
            (
                format!("appid=1&rikey={KEY}&rikeyid=99999999999"),
                LaunchError::BadRikeyid,
            ),
            (format!("rikey={KEY}&rikeyid=1"), LaunchError::BadAppid),
            (
                format!("appid=-1&rikey={KEY}&rikeyid=1"),
                LaunchError::BadAppid,
            ),
            (
                format!("appid=1&rikey={KEY}&rikeyid=1&mode=640x360"),
                LaunchError::BadMode("640x360".into()),
            ),
            (
                format!("appid=1&rikey={KEY}&rikeyid=1&mode=0x360x30"),
                LaunchError::BadMode("0x360x30".into()),
            ),
            (
                format!("appid=1&rikey={KEY}&rikeyid=1&mode=640x360x30x1"),
                LaunchError::BadMode("640x360x30x1".into()),
            ),
            (
                format!("appid=1&rikey={KEY}&rikeyid=1&surroundAudioInfo=3"),
                LaunchError::AudioChannels(3),
            ),
            (
                format!("appid=1&rikey={KEY}&rikeyid=1&surroundAudioInfo=x"),
                LaunchError::BadSurroundAudioInfo("x".into()),
            ),
        ] {
            assert_eq!(parse(&q(&bad), false), Err(why), "{bad}");
        }
    }

    #[test]
    fn errors_quote_at_most_a_bounded_prefix() {
        let long = "9".repeat(1000);
        let err = parse(
            &q(&format!("appid=1&rikey={KEY}&rikeyid=1&mode={long}")),
            false,
        )
        .unwrap_err();
        assert_eq!(err, LaunchError::BadMode("9".repeat(QUOTED)));
    }
}
