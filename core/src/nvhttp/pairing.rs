//! Each `/pair` stage (gamestream-protocol.md §3.2), decoded from the query into the broker's
//! `PairStage` and checked against the limits the broker enforces on them (lumen-ipc's
//! `NetRequest::validate` checks the same constants again).

use super::query::{hex_array, Query};

// The limits are the broker's (lumen-ipc's `NetRequest::validate` checks them again): a stage
// this parser lets through is one the broker takes.
pub use lumen_ipc::net_msg::{
    valid_uniqueid, PairStage, MAX_CLIENT_CERT_PEM, MAX_CLIENT_SIGNATURE, MAX_DEVICE_NAME,
    MAX_UNIQUEID,
};

/// What a `/pair` request asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PairRequest {
    /// Stages 1-4, for the broker.
    Stage { uniqueid: String, stage: PairStage },
    /// Stage 5 (`phrase=pairchallenge`): answered from the TLS client certificate alone.
    Challenge,
}

/// Why a `/pair` or `/unpair` query was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PairError {
    #[error("missing uniqueid")]
    MissingUniqueid,
    #[error("malformed uniqueid")]
    BadUniqueid,
    #[error("salt must be 16 bytes of hex")]
    BadSalt,
    #[error("missing clientcert")]
    MissingClientCert,
    #[error("clientcert is too long")]
    ClientCertTooLong,
    #[error("clientcert is not hex")]
    ClientCertNotHex,
    #[error("clientcert is not a PEM text")]
    ClientCertNotText,
    #[error("clientchallenge must be 16 bytes of hex")]
    BadClientChallenge,
    #[error("serverchallengeresp must be 32 bytes of hex")]
    BadServerChallengeResp,
    #[error("clientpairingsecret is too long")]
    SecretTooLong,
    #[error("clientpairingsecret is not hex")]
    SecretNotHex,
    #[error("clientpairingsecret carries no signature")]
    SecretWithoutSignature,
    #[error("unknown pairing stage")]
    UnknownStage,
}

/// The client's uniqueid, checked.
pub fn uniqueid(query: &Query) -> Result<String, PairError> {
    match query.get("uniqueid") {
        Some(id) if valid_uniqueid(id) => Ok(id.to_string()),
        Some(_) => Err(PairError::BadUniqueid),
        None => Err(PairError::MissingUniqueid),
    }
}

/// Decodes one `/pair` query.
pub fn parse(query: &Query) -> Result<PairRequest, PairError> {
    if query.get("phrase") == Some("pairchallenge") {
        return Ok(PairRequest::Challenge);
    }
    let uniqueid = uniqueid(query)?;
    let stage = if query.get("phrase") == Some("getservercert") {
        get_server_cert(query)?
    } else if let Some(challenge) = query.get("clientchallenge") {
        PairStage::ClientChallenge {
            challenge: hex_array(challenge).ok_or(PairError::BadClientChallenge)?,
        }
    } else if let Some(response) = query.get("serverchallengeresp") {
        PairStage::ServerChallengeResp {
            response: hex_array(response).ok_or(PairError::BadServerChallengeResp)?,
        }
    } else if let Some(secret) = query.get("clientpairingsecret") {
        client_pairing_secret(secret)?
    } else {
        return Err(PairError::UnknownStage);
    };
    Ok(PairRequest::Stage { uniqueid, stage })
}

fn get_server_cert(query: &Query) -> Result<PairStage, PairError> {
    let salt = query
        .get("salt")
        .and_then(hex_array::<16>)
        .ok_or(PairError::BadSalt)?;
    let cert_hex = query
        .get("clientcert")
        .ok_or(PairError::MissingClientCert)?;
    // Checked before decoding, so no more than the limit is ever allocated.
    if cert_hex.len() > 2 * MAX_CLIENT_CERT_PEM {
        return Err(PairError::ClientCertTooLong);
    }
    let cert = hex::decode(cert_hex).map_err(|_| PairError::ClientCertNotHex)?;
    let client_cert_pem = String::from_utf8(cert).map_err(|_| PairError::ClientCertNotText)?;
    Ok(PairStage::GetServerCert {
        salt,
        client_cert_pem,
        device_name: device_name(query.get("devicename").unwrap_or("")),
    })
}

/// The device name as kept: control characters dropped, cut to [`MAX_DEVICE_NAME`] bytes at a
/// character boundary.
pub fn device_name(raw: &str) -> String {
    let mut name = String::new();
    for c in raw.chars().filter(|c| !c.is_control()) {
        if name.len() + c.len_utf8() > MAX_DEVICE_NAME {
            break;
        }
        name.push(c);
    }
    name
}

fn client_pairing_secret(hex_text: &str) -> Result<PairStage, PairError> {
    if hex_text.len() > 2 * (16 + MAX_CLIENT_SIGNATURE) {
        return Err(PairError::SecretTooLong);
    }
    let bytes = hex::decode(hex_text).map_err(|_| PairError::SecretNotHex)?;
    let Some((secret, signature)) = bytes.split_first_chunk::<16>() else {
        return Err(PairError::SecretWithoutSignature);
    };
    if signature.is_empty() {
        return Err(PairError::SecretWithoutSignature);
    }
    Ok(PairStage::ClientPairingSecret {
        secret: *secret,
        signature: signature.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Query {
        Query::parse(Some(text)).unwrap()
    }

    #[test]
    fn decodes_every_stage() {
        let pem = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
        let stage1 = parse(&q(&format!(
            "uniqueid=0123456789ABCDEF&uuid=1&devicename=roth&updateState=1&phrase=getservercert&salt={}&clientcert={}",
            "00".repeat(16),
            hex::encode(pem)
        )))
        .unwrap();
        assert_eq!(
            stage1,
            PairRequest::Stage {
                uniqueid: "0123456789ABCDEF".into(),
                stage: PairStage::GetServerCert {
                    salt: [0; 16],
                    client_cert_pem: pem.into(),
                    device_name: "roth".into()
                }
            }
        );
        let stage2 = parse(&q(&format!(
            "uniqueid=a&clientchallenge={}",
            "11".repeat(16)
        )))
        .unwrap();
        assert!(
            matches!(stage2, PairRequest::Stage { stage: PairStage::ClientChallenge { challenge }, .. } if challenge == [0x11; 16])
        );
        let stage3 = parse(&q(&format!(
            "uniqueid=a&serverchallengeresp={}",
            "22".repeat(32)
        )))
        .unwrap();
        assert!(matches!(
            stage3,
            PairRequest::Stage {
                stage: PairStage::ServerChallengeResp { response },
                ..
            } if response == [0x22; 32]
        ));
        let stage4 = parse(&q(&format!(
            "uniqueid=a&clientpairingsecret={}{}",
            "33".repeat(16),
            "44".repeat(256)
        )))
        .unwrap();
        assert!(
            matches!(stage4, PairRequest::Stage { stage: PairStage::ClientPairingSecret { secret, ref signature }, .. } if secret == [0x33; 16] && signature == &[0x44; 256])
        );
        assert_eq!(
            parse(&q("uniqueid=a&phrase=pairchallenge")).unwrap(),
            PairRequest::Challenge
        );
    }

    #[test]
    fn malformed_stages_are_refused_by_name() {
        let salt = "00".repeat(16);
        for (query, why) in [
            (
                "phrase=getservercert&salt=00".to_string(),
                PairError::MissingUniqueid,
            ),
            (
                "uniqueid=a b&clientchallenge=00".to_string(),
                PairError::BadUniqueid,
            ),
            (
                format!(
                    "uniqueid={}&clientchallenge=00",
                    "a".repeat(MAX_UNIQUEID + 1)
                ),
                PairError::BadUniqueid,
            ),
            (
                "uniqueid=a&phrase=getservercert&salt=00".to_string(),
                PairError::BadSalt,
            ),
            (
                format!("uniqueid=a&phrase=getservercert&salt={salt}"),
                PairError::MissingClientCert,
            ),
            (
                format!("uniqueid=a&phrase=getservercert&salt={salt}&clientcert=zz"),
                PairError::ClientCertNotHex,
            ),
            (
                format!("uniqueid=a&phrase=getservercert&salt={salt}&clientcert=ff"),
                PairError::ClientCertNotText,
            ),
            (
                format!(
                    "uniqueid=a&phrase=getservercert&salt={salt}&clientcert={}",
                    "41".repeat(MAX_CLIENT_CERT_PEM + 1)
                ),
                PairError::ClientCertTooLong,
            ),
            (
                "uniqueid=a&clientchallenge=0011".to_string(),
                PairError::BadClientChallenge,
            ),
            (
                format!("uniqueid=a&serverchallengeresp={}", "22".repeat(16)),
                PairError::BadServerChallengeResp,
            ),
            (
                format!("uniqueid=a&clientpairingsecret={}", "33".repeat(16)),
                PairError::SecretWithoutSignature,
            ),
            (
                "uniqueid=a&clientpairingsecret=33".to_string(),
                PairError::SecretWithoutSignature,
            ),
            (
                "uniqueid=a&clientpairingsecret=3g".to_string(),
                PairError::SecretNotHex,
            ),
            (
                "uniqueid=a&clientpairingsecret=3".to_string(),
                PairError::SecretNotHex,
            ),
            (
                format!(
                    "uniqueid=a&clientpairingsecret={}",
                    "33".repeat(16 + MAX_CLIENT_SIGNATURE + 1)
                ),
                PairError::SecretTooLong,
            ),
            (
                "uniqueid=a&phrase=whatever".to_string(),
                PairError::UnknownStage,
            ),
        ] {
            assert_eq!(parse(&q(&query)), Err(why), "{query}");
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let pem = "A".repeat(MAX_CLIENT_CERT_PEM);
        let stage1 = format!(
            "uniqueid={}&phrase=getservercert&salt={}&clientcert={}",
            "a".repeat(MAX_UNIQUEID),
            "00".repeat(16),
            hex::encode(&pem)
        );
        assert!(parse(&q(&stage1)).is_ok());
        let stage4 = format!(
            "uniqueid=a&clientpairingsecret={}",
            "33".repeat(16 + MAX_CLIENT_SIGNATURE)
        );
        assert!(parse(&q(&stage4)).is_ok());
    }

    #[test]
    fn device_names_lose_control_characters_and_are_cut_at_a_character() {
        assert_eq!(device_name("ro\u{7}th\n"), "roth");
        let long = format!("{}é", "x".repeat(MAX_DEVICE_NAME - 1));
        let kept = device_name(&long);
        assert_eq!(kept, "x".repeat(MAX_DEVICE_NAME - 1));
        assert_eq!(device_name(&"y".repeat(200)).len(), MAX_DEVICE_NAME);
    }
}
