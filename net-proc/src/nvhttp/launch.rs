//! The parameters of `/launch` and `/resume` (protocol notes §2.5). The stream's real settings
//! come later in RTSP ANNOUNCE; here only the keys, the app and the RTSP flavour matter, and what
//! else the client sends is checked for form so a garbled launch is refused early.

use super::query::{hex_array, Query};
use super::server::DESKTOP_ID;
use crate::stream::LaunchRequest;

/// Parses a launch (`resume`: the app and mode are not sent).
pub fn parse(query: &Query, resume: bool) -> Result<LaunchRequest, String> {
    let rikey = query
        .get("rikey")
        .and_then(hex_array::<16>)
        .ok_or("missing or malformed rikey (32 hex digits)")?;
    // A signed decimal int32 (the IV's first 4 bytes read big-endian); its bits are what count.
    let rikeyid = query
        .get("rikeyid")
        .and_then(|v| v.parse::<i32>().ok())
        .ok_or("missing or malformed rikeyid")? as u32;
    if !resume {
        match query.get("appid").map(str::parse::<u32>) {
            Some(Ok(DESKTOP_ID)) => {}
            Some(Ok(other)) => return Err(format!("no app {other}")),
            _ => return Err("missing or malformed appid".into()),
        }
        if let Some(mode) = query.get("mode") {
            parse_mode(mode)?;
        }
    }
    if let Some(info) = query.get("surroundAudioInfo") {
        let info: u32 = info
            .parse()
            .map_err(|_| format!("malformed surroundAudioInfo {info:?}"))?;
        let channels = info & 0xffff;
        if ![2, 6, 8].contains(&channels) {
            return Err(format!("{channels} audio channels"));
        }
    }
    let encrypted_rtsp = query
        .get("corever")
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|v| v >= 1);
    Ok(LaunchRequest {
        rikey,
        rikeyid,
        encrypted_rtsp,
    })
}

/// `WxHxFPS`; FPS 0 is what moonlight-qt sends GFE above 60.
fn parse_mode(mode: &str) -> Result<(u32, u32, u32), String> {
    let bad = || format!("malformed mode {mode:?}");
    let mut parts = mode.split('x').map(str::parse::<u32>);
    let (Some(Ok(w)), Some(Ok(h)), Some(Ok(fps)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !(16..=8192).contains(&w) || !(16..=8192).contains(&h) || fps > 1000 {
        return Err(bad());
    }
    Ok((w, h, fps))
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
            LaunchRequest {
                rikey: std::array::from_fn(|i| i as u8),
                rikeyid: 0xDEAD_BEEF,
                encrypted_rtsp: true,
            }
        );
        let resume = parse(&q(&format!("rikey={KEY}&rikeyid=5")), true).unwrap();
        assert!(!resume.encrypted_rtsp);
        assert_eq!(resume.rikeyid, 5);
    }

    #[test]
    fn refuses_bad_keys_apps_and_modes() {
        for bad in [
            "appid=1&rikeyid=1".to_string(),
            "appid=1&rikey=00&rikeyid=1".to_string(),
            format!("appid=1&rikey={KEY}"),
            format!("appid=1&rikey={KEY}&rikeyid=99999999999"),
            format!("appid=2&rikey={KEY}&rikeyid=1"),
            format!("rikey={KEY}&rikeyid=1"),
            format!("appid=1&rikey={KEY}&rikeyid=1&mode=640x360"),
            format!("appid=1&rikey={KEY}&rikeyid=1&mode=0x360x30"),
            format!("appid=1&rikey={KEY}&rikeyid=1&surroundAudioInfo=3"),
        ] {
            assert!(parse(&q(&bad), false).is_err(), "{bad}");
        }
    }
}
