//! `/pair` and `/unpair`: the query of each pairing stage decoded into a typed [`PairStage`] for
//! the broker (which holds the PIN and the host key), and the broker's [`PairReply`] turned back
//! into the XML Moonlight expects (gamestream-protocol.md §3.2).

use lumen_ipc::net_msg::{
    valid_uniqueid, PairReply, PairStage, MAX_CLIENT_CERT_PEM, MAX_CLIENT_SIGNATURE,
    MAX_DEVICE_NAME,
};

use super::query::{hex_array, Query};
use super::xml::Xml;

/// What a `/pair` request asks.
#[derive(Debug, PartialEq, Eq)]
pub enum PairRequest {
    /// Stages 1-4: forwarded to the broker.
    Stage { uniqueid: String, stage: PairStage },
    /// Stage 5 (`phrase=pairchallenge`): answered by net from the TLS client certificate.
    Challenge,
}

fn bad(message: &str) -> Xml {
    Xml::error(400, message)
}

/// The client's uniqueid, checked.
pub fn uniqueid(query: &Query) -> Result<String, Xml> {
    match query.get("uniqueid") {
        Some(id) if valid_uniqueid(id) => Ok(id.to_string()),
        Some(_) => Err(bad("malformed uniqueid")),
        None => Err(bad("missing uniqueid")),
    }
}

/// Decodes one `/pair` query.
pub fn parse(query: &Query) -> Result<PairRequest, Xml> {
    if query.get("phrase") == Some("pairchallenge") {
        return Ok(PairRequest::Challenge);
    }
    let uniqueid = uniqueid(query)?;
    let stage = if query.get("phrase") == Some("getservercert") {
        let salt = query
            .get("salt")
            .and_then(hex_array::<16>)
            .ok_or_else(|| bad("salt must be 16 bytes of hex"))?;
        let cert_hex = query
            .get("clientcert")
            .ok_or_else(|| bad("missing clientcert"))?;
        if cert_hex.len() > 2 * MAX_CLIENT_CERT_PEM {
            return Err(bad("clientcert is too long"));
        }
        let cert = hex::decode(cert_hex).map_err(|_| bad("clientcert is not hex"))?;
        let client_cert_pem =
            String::from_utf8(cert).map_err(|_| bad("clientcert is not a PEM text"))?;
        let device_name: String = query
            .get("devicename")
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .scan(0usize, |len, c| {
                *len += c.len_utf8();
                (*len <= MAX_DEVICE_NAME).then_some(c)
            })
            .collect();
        PairStage::GetServerCert {
            salt,
            client_cert_pem,
            device_name,
        }
    } else if let Some(challenge) = query.get("clientchallenge") {
        PairStage::ClientChallenge {
            challenge: hex_array(challenge)
                .ok_or_else(|| bad("clientchallenge must be 16 bytes of hex"))?,
        }
    } else if let Some(response) = query.get("serverchallengeresp") {
        PairStage::ServerChallengeResp {
            response: hex_array(response)
                .ok_or_else(|| bad("serverchallengeresp must be 32 bytes of hex"))?,
        }
    } else if let Some(secret) = query.get("clientpairingsecret") {
        if secret.len() > 2 * (16 + MAX_CLIENT_SIGNATURE) {
            return Err(bad("clientpairingsecret is too long"));
        }
        let bytes = hex::decode(secret).map_err(|_| bad("clientpairingsecret is not hex"))?;
        if bytes.len() <= 16 {
            return Err(bad("clientpairingsecret carries no signature"));
        }
        let (secret, signature) = bytes.split_at(16);
        let mut fixed = [0u8; 16];
        fixed.copy_from_slice(secret);
        PairStage::ClientPairingSecret {
            secret: fixed,
            signature: signature.to_vec(),
        }
    } else {
        return Err(bad("unknown pairing stage"));
    };
    Ok(PairRequest::Stage { uniqueid, stage })
}

/// The XML for the broker's answer to a stage. Failures keep `status_code` 200 with
/// `<paired>0</paired>`, as clients expect.
pub fn reply_xml(reply: &PairReply) -> Xml {
    match reply {
        PairReply::ServerCert { cert_pem } => Xml::ok()
            .field("paired", 1)
            .field("plaincert", hex::encode(cert_pem)),
        // No plaincert: "already pairing".
        PairReply::AlreadyPairing => Xml::ok().field("paired", 1),
        PairReply::ChallengeResponse(bytes) => Xml::ok()
            .field("paired", 1)
            .field("challengeresponse", hex::encode(bytes)),
        PairReply::PairingSecret(bytes) => Xml::ok()
            .field("paired", 1)
            .field("pairingsecret", hex::encode(bytes)),
        PairReply::Paired => Xml::ok().field("paired", 1),
        PairReply::Aborted => Xml::ok(),
        PairReply::Failed(_) => Xml::ok().field("paired", 0),
        PairReply::OutOfOrder(_) => {
            Xml::error(400, "out of order pairing request").field("paired", 0)
        }
    }
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
                stage: PairStage::ServerChallengeResp { .. },
                ..
            }
        ));
        let stage4 = parse(&q(&format!(
            "uniqueid=a&clientpairingsecret={}",
            "33".repeat(16 + 256)
        )))
        .unwrap();
        assert!(
            matches!(stage4, PairRequest::Stage { stage: PairStage::ClientPairingSecret { ref signature, .. }, .. } if signature.len() == 256)
        );
        assert_eq!(
            parse(&q("uniqueid=a&phrase=pairchallenge")).unwrap(),
            PairRequest::Challenge
        );
    }

    #[test]
    fn malformed_stages_are_400() {
        for bad in [
            "phrase=getservercert&salt=00".to_string(),
            "uniqueid=a b&clientchallenge=00".to_string(),
            format!("uniqueid=a&phrase=getservercert&salt={}", "00".repeat(16)),
            format!(
                "uniqueid=a&phrase=getservercert&salt={}&clientcert=zz",
                "00".repeat(16)
            ),
            format!(
                "uniqueid=a&phrase=getservercert&salt={}&clientcert=ff",
                "00".repeat(16)
            ),
            "uniqueid=a&clientchallenge=0011".to_string(),
            format!("uniqueid=a&serverchallengeresp={}", "22".repeat(16)),
            format!("uniqueid=a&clientpairingsecret={}", "33".repeat(16)),
            format!(
                "uniqueid=a&clientpairingsecret={}",
                "33".repeat(16 + MAX_CLIENT_SIGNATURE + 1)
            ),
            "uniqueid=a&phrase=whatever".to_string(),
        ] {
            let err = parse(&q(&bad)).expect_err(&bad);
            assert_eq!(err.status(), 400, "{bad}");
        }
    }

    #[test]
    fn replies_render_as_clients_expect() {
        let xml = reply_xml(&PairReply::ServerCert {
            cert_pem: "AB".into(),
        })
        .render();
        assert!(
            xml.contains("<paired>1</paired><plaincert>4142</plaincert>"),
            "{xml}"
        );
        let xml = reply_xml(&PairReply::AlreadyPairing).render();
        assert!(!xml.contains("plaincert"), "{xml}");
        let xml = reply_xml(&PairReply::Failed("wrong PIN".into())).render();
        assert!(
            xml.contains("status_code=\"200\"") && xml.contains("<paired>0</paired>"),
            "{xml}"
        );
        assert!(
            !xml.contains("wrong PIN"),
            "the reason stays in the logs: {xml}"
        );
        let xml = reply_xml(&PairReply::OutOfOrder("stage 3 while 2 was due".into())).render();
        assert!(
            xml.contains("status_code=\"400\"") && xml.contains("<paired>0</paired>"),
            "{xml}"
        );
        let xml = reply_xml(&PairReply::PairingSecret(vec![1, 2])).render();
        assert!(xml.contains("<pairingsecret>0102</pairingsecret>"), "{xml}");
    }
}
