//! Entry points shared by the cargo-fuzz targets (fuzz/) and the corpus replay test
//! (core/tests/fuzz_corpus.rs). Each takes arbitrary bytes; parsing must never panic. A panic here
//! is an invariant violation (a bug), never an input error.

use std::fmt::Write;

use super::launch::LaunchParams;
use super::pairing::{self, PairRequest, PairStage};
use super::query::Query;
use super::request::{classify, split_target, Listener, NvRequest};

/// Headers lumen-net lets hyper read per request (`MAX_HEADERS` in net-proc's nvhttp).
pub const MAX_HEADERS: usize = 32;

/// `http_request`: the bytes as an HTTP/1.1 request head, parsed by `httparse` (what hyper uses);
/// a complete head's method and request-target go through the classifier on both listeners, and
/// whatever it accepts must satisfy the limits the broker checks.
pub fn http_request(data: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = request.parse(data) else {
        return;
    };
    assert!(head_len <= data.len());
    let (Some(method), Some(target)) = (request.method, request.path) else {
        panic!("httparse completed a head without a method or target");
    };
    let (path, query) = split_target(target);
    for listener in [Listener::Http, Listener::Https] {
        let Ok(classified) = classify(method, path, query, listener) else {
            continue;
        };
        check_request(&classified, listener);
    }
}

/// `pairing_fields`: the bytes as a `/pair` query; a decoded stage must satisfy the broker's
/// limits and survive being sent again as a query.
pub fn pairing_fields(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(query) = Query::parse(Some(text)) else {
        return;
    };
    let Ok(request) = pairing::parse(&query) else {
        return;
    };
    check_pair(&request);
    let again = Query::parse(Some(&pair_query(&request))).map(|q| pairing::parse(&q));
    assert_eq!(again, Ok(Ok(request)));
}

fn check_request(request: &NvRequest, listener: Listener) {
    match request {
        NvRequest::Pair(pair) => check_pair(pair),
        NvRequest::Unpair { uniqueid: Some(id) } => assert!(pairing::valid_uniqueid(id)),
        NvRequest::Launch { resume, params } => {
            assert_eq!(listener, Listener::Https);
            if let Ok(params) = params {
                check_launch(params, *resume);
            }
        }
        NvRequest::AppList | NvRequest::AppAsset { .. } | NvRequest::Cancel => {
            assert_eq!(listener, Listener::Https);
        }
        NvRequest::ServerInfo | NvRequest::Unpair { uniqueid: None } | NvRequest::NotFound => {}
    }
}

fn check_pair(request: &PairRequest) {
    let PairRequest::Stage { uniqueid, stage } = request else {
        return;
    };
    assert!(pairing::valid_uniqueid(uniqueid), "{uniqueid:?}");
    match stage {
        PairStage::GetServerCert {
            client_cert_pem,
            device_name,
            ..
        } => {
            assert!(client_cert_pem.len() <= pairing::MAX_CLIENT_CERT_PEM);
            assert!(device_name.len() <= pairing::MAX_DEVICE_NAME);
            assert!(!device_name.chars().any(char::is_control));
        }
        PairStage::ClientPairingSecret { signature, .. } => {
            assert!((1..=pairing::MAX_CLIENT_SIGNATURE).contains(&signature.len()));
        }
        PairStage::ClientChallenge { .. }
        | PairStage::ServerChallengeResp { .. }
        | PairStage::Abort => {}
    }
}

fn check_launch(params: &LaunchParams, resume: bool) {
    assert_eq!(params.appid.is_none(), resume);
    if let Some(mode) = params.mode {
        assert!((16..=8192).contains(&mode.width) && (16..=8192).contains(&mode.height));
        assert!(mode.fps <= 1000);
    }
    if let Some(info) = params.surround_audio_info {
        assert!([2, 6, 8].contains(&(info & 0xffff)));
    }
}

/// The query a client would send for `request` (every byte of free text percent-encoded).
pub fn pair_query(request: &PairRequest) -> String {
    let PairRequest::Stage { uniqueid, stage } = request else {
        return "phrase=pairchallenge".into();
    };
    let mut query = format!("uniqueid={}&", percent_encode(uniqueid));
    match stage {
        PairStage::GetServerCert {
            salt,
            client_cert_pem,
            device_name,
        } => {
            let _ = write!(
                query,
                "devicename={}&phrase=getservercert&salt={}&clientcert={}",
                percent_encode(device_name),
                hex::encode(salt),
                hex::encode(client_cert_pem)
            );
        }
        PairStage::ClientChallenge { challenge } => {
            let _ = write!(query, "clientchallenge={}", hex::encode(challenge));
        }
        PairStage::ServerChallengeResp { response } => {
            let _ = write!(query, "serverchallengeresp={}", hex::encode(response));
        }
        PairStage::ClientPairingSecret { secret, signature } => {
            let _ = write!(
                query,
                "clientpairingsecret={}{}",
                hex::encode(secret),
                hex::encode(signature)
            );
        }
        // `/unpair`, never a `/pair` query: the parser does not produce it.
        PairStage::Abort => {}
    }
    query
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_queries_parse_back_to_the_same_stage() {
        let stage = PairRequest::Stage {
            uniqueid: "0123456789ABCDEF".into(),
            stage: PairStage::GetServerCert {
                salt: [9; 16],
                client_cert_pem: "-----BEGIN CERTIFICATE-----\n".into(),
                device_name: "ro th&é=%".into(),
            },
        };
        let query = Query::parse(Some(&pair_query(&stage))).unwrap();
        assert_eq!(pairing::parse(&query), Ok(stage));
    }

    #[test]
    fn http_request_classifies_a_real_head() {
        // Reaches check_request; a classifier that let a malformed uniqueid through would panic.
        http_request(b"GET /unpair?uniqueid=0123456789ABCDEF&uuid=1 HTTP/1.1\r\nHost: h\r\n\r\n");
        http_request(b"GET /pair?uniqueid=a&clientchallenge=zz HTTP/1.1\r\n\r\n");
        http_request(b"GET /x HTTP/1.1\r\n");
    }
}
