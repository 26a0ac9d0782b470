//! `/launch` and `/resume`: the parameters lumen-core parsed (`lumen_core::nvhttp::launch`) checked
//! against this host's one app and turned into the streaming side's [`LaunchRequest`].

use lumen_core::nvhttp::LaunchParams;

use super::server::DESKTOP_ID;
use crate::stream::LaunchRequest;

/// The launch request for well-formed parameters, or why it names an app this host lacks.
pub fn request(params: &LaunchParams) -> Result<LaunchRequest, String> {
    match params.appid {
        None | Some(DESKTOP_ID) => {}
        Some(other) => return Err(format!("no app {other}")),
    }
    Ok(LaunchRequest {
        rikey: params.rikey,
        rikeyid: params.rikeyid,
        encrypted_rtsp: params.encrypted_rtsp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_core::nvhttp::{launch, Query};

    const KEY: &str = "000102030405060708090a0b0c0d0e0f";

    fn parsed(query: &str, resume: bool) -> LaunchParams {
        launch::parse(&Query::parse(Some(query)).unwrap(), resume).unwrap()
    }

    #[test]
    fn the_desktop_launches_with_the_clients_keys() {
        let launch = request(&parsed(
            &format!("appid=1&mode=640x360x30&rikey={KEY}&rikeyid=-559038737&&corever=1"),
            false,
        ))
        .unwrap();
        assert_eq!(
            launch,
            LaunchRequest {
                rikey: std::array::from_fn(|i| i as u8),
                rikeyid: 0xDEAD_BEEF,
                encrypted_rtsp: true,
            }
        );
        let resume = request(&parsed(&format!("rikey={KEY}&rikeyid=5"), true)).unwrap();
        assert!(!resume.encrypted_rtsp);
    }

    #[test]
    fn other_apps_are_refused() {
        let err = request(&parsed(&format!("appid=2&rikey={KEY}&rikeyid=1"), false));
        assert_eq!(err, Err("no app 2".into()));
    }
}
