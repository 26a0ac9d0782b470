//! The request classifier: method, path and query of one nvhttp request → a typed
//! [`NvRequest`], or the [`RequestError`] its 400 reply names. Which endpoints each listener
//! serves is protocol (gamestream-protocol.md §2.2), so it is decided here too; whether an HTTPS
//! client certificate is paired is not (lumen-net checks that first).

use super::launch::{self, LaunchError, LaunchParams};
use super::pairing::{self, PairError, PairRequest};
use super::query::{Query, QueryError};

/// The listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Http,
    Https,
}

/// One well-formed nvhttp request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NvRequest {
    ServerInfo,
    Pair(PairRequest),
    /// `/unpair`: the uniqueid whose pairing attempt ends, if the query names a valid one (a
    /// missing or malformed one is answered 200 all the same, as clients expect).
    Unpair {
        uniqueid: Option<String>,
    },
    AppList,
    AppAsset {
        appid: u32,
    },
    /// `/launch` (`resume: false`) or `/resume`. The parameters stay a `Result`: a host that
    /// cannot stream at all answers 503 before it looks at them.
    Launch {
        resume: bool,
        params: Result<LaunchParams, LaunchError>,
    },
    Cancel,
    /// An unknown path, or an HTTPS-only one over plain HTTP.
    NotFound,
}

/// Why a request was refused (each is a 400 reply).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("only GET requests are served")]
    NotGet,
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Pair(#[from] PairError),
    #[error("missing or malformed appid")]
    BadAppid,
}

/// Splits an origin-form request-target (`/path?query`) into its path and query.
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    }
}

/// Classifies one request. The query is parsed (and refused) before the path is looked at, so a
/// malformed query is a 400 on every path.
pub fn classify(
    method: &str,
    path: &str,
    raw_query: Option<&str>,
    listener: Listener,
) -> Result<NvRequest, RequestError> {
    if method != "GET" {
        return Err(RequestError::NotGet);
    }
    let query = Query::parse(raw_query)?;
    let https = listener == Listener::Https;
    Ok(match (path, https) {
        ("/serverinfo", _) => NvRequest::ServerInfo,
        ("/pair", _) => NvRequest::Pair(pairing::parse(&query)?),
        ("/unpair", _) => NvRequest::Unpair {
            uniqueid: pairing::uniqueid(&query).ok(),
        },
        ("/applist", true) => NvRequest::AppList,
        ("/appasset", true) => NvRequest::AppAsset {
            appid: query
                .get("appid")
                .and_then(|v| v.parse().ok())
                .ok_or(RequestError::BadAppid)?,
        },
        ("/launch", true) => NvRequest::Launch {
            resume: false,
            params: launch::parse(&query, false),
        },
        ("/resume", true) => NvRequest::Launch {
            resume: true,
            params: launch::parse(&query, true),
        },
        ("/cancel", true) => NvRequest::Cancel,
        _ => NvRequest::NotFound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_ipc::net_msg::PairStage;

    fn classify_target(
        method: &str,
        target: &str,
        listener: Listener,
    ) -> Result<NvRequest, RequestError> {
        let (path, query) = split_target(target);
        classify(method, path, query, listener)
    }

    #[test]
    fn classifies_every_endpoint() {
        use Listener::{Http, Https};
        let id = "uniqueid=0123456789ABCDEF&uuid=ab";
        let cases = [
            (format!("/serverinfo?{id}"), Http, NvRequest::ServerInfo),
            ("/serverinfo".to_string(), Https, NvRequest::ServerInfo),
            (
                format!("/pair?{id}&phrase=pairchallenge"),
                Https,
                NvRequest::Pair(PairRequest::Challenge),
            ),
            (
                format!("/pair?{id}&clientchallenge={}", "ab".repeat(16)),
                Http,
                NvRequest::Pair(PairRequest::Stage {
                    uniqueid: "0123456789ABCDEF".into(),
                    stage: PairStage::ClientChallenge {
                        challenge: [0xab; 16],
                    },
                }),
            ),
            (
                format!("/unpair?{id}"),
                Http,
                NvRequest::Unpair {
                    uniqueid: Some("0123456789ABCDEF".into()),
                },
            ),
            (
                "/unpair?uniqueid=a%20b".to_string(),
                Http,
                NvRequest::Unpair { uniqueid: None },
            ),
            (format!("/applist?{id}"), Https, NvRequest::AppList),
            (
                format!("/appasset?{id}&appid=1&AssetType=2&AssetIdx=0"),
                Https,
                NvRequest::AppAsset { appid: 1 },
            ),
            (format!("/cancel?{id}"), Https, NvRequest::Cancel),
            ("/nonsense".to_string(), Https, NvRequest::NotFound),
            ("/nonsense?a=1".to_string(), Http, NvRequest::NotFound),
        ];
        for (target, listener, want) in cases {
            assert_eq!(
                classify_target("GET", &target, listener),
                Ok(want),
                "{target}"
            );
        }
        let launch = classify_target(
            "GET",
            "/launch?appid=1&rikey=000102030405060708090a0b0c0d0e0f&rikeyid=1&&corever=1",
            Https,
        );
        assert!(
            matches!(launch, Ok(NvRequest::Launch { resume: false, params: Ok(ref p) }) if p.encrypted_rtsp && p.appid == Some(1)),
            "{launch:?}"
        );
        // Bad launch parameters are carried, not refused: the host may have to say 503 first.
        let resume = classify_target("GET", "/resume?rikeyid=1", Https);
        assert_eq!(
            resume,
            Ok(NvRequest::Launch {
                resume: true,
                params: Err(LaunchError::BadRikey)
            })
        );
    }

    #[test]
    fn https_only_endpoints_are_not_found_over_http() {
        for path in [
            "/applist",
            "/appasset?appid=x",
            "/launch",
            "/resume",
            "/cancel",
        ] {
            assert_eq!(
                classify_target("GET", path, Listener::Http),
                Ok(NvRequest::NotFound),
                "{path}"
            );
        }
    }

    #[test]
    fn refuses_other_methods_malformed_queries_and_fields() {
        assert_eq!(
            classify_target("POST", "/serverinfo", Listener::Http),
            Err(RequestError::NotGet)
        );
        assert_eq!(
            classify_target("get", "/serverinfo", Listener::Http),
            Err(RequestError::NotGet)
        );
        assert!(matches!(
            classify_target("GET", "/nonsense?a=%zz", Listener::Http),
            Err(RequestError::Query(QueryError::BadEncoding(_)))
        ));
        assert_eq!(
            classify_target("GET", "/pair?clientchallenge=00", Listener::Http),
            Err(RequestError::Pair(PairError::MissingUniqueid))
        );
        for bad in ["/appasset", "/appasset?appid=x", "/appasset?appid=-1"] {
            assert_eq!(
                classify_target("GET", bad, Listener::Https),
                Err(RequestError::BadAppid),
                "{bad}"
            );
        }
    }

    #[test]
    fn splits_targets_at_the_first_question_mark() {
        assert_eq!(split_target("/a?b=1?c"), ("/a", Some("b=1?c")));
        assert_eq!(split_target("/a?"), ("/a", Some("")));
        assert_eq!(split_target("/a"), ("/a", None));
    }
}
