//! `/pair` and `/unpair`: the stage lumen-core decoded (`lumen_core::nvhttp::pairing`)
//! handed to the broker (which holds the PIN and the host key) as a `lumen_ipc::net_msg::PairStage`, and the
//! broker's [`PairReply`] turned back into the XML Moonlight expects (gamestream-protocol.md §3.2).

use lumen_ipc::net_msg::PairReply;

use super::xml::Xml;

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
    use lumen_core::nvhttp::{pairing, PairRequest, Query};
    use lumen_ipc::net_msg::{valid_uniqueid, NetRequest, MAX_CLIENT_SIGNATURE};

    fn decoded(query: &str) -> NetRequest {
        let query = Query::parse(Some(query)).unwrap();
        let Ok(PairRequest::Stage { uniqueid, stage }) = pairing::parse(&query) else {
            panic!("not a stage: {query:?}");
        };
        NetRequest::Pair {
            client_uniqueid: uniqueid,
            stage,
        }
    }

    #[test]
    fn what_core_decodes_the_broker_accepts() {
        let pem = "x".repeat(lumen_ipc::net_msg::MAX_CLIENT_CERT_PEM);
        for query in [
            format!(
                "uniqueid={}&devicename={}&phrase=getservercert&salt={}&clientcert={}",
                "a".repeat(lumen_ipc::net_msg::MAX_UNIQUEID),
                "%C3%A9".repeat(100),
                "00".repeat(16),
                hex::encode(&pem)
            ),
            format!("uniqueid=a&clientchallenge={}", "11".repeat(16)),
            format!("uniqueid=a&serverchallengeresp={}", "22".repeat(32)),
            format!(
                "uniqueid=a&clientpairingsecret={}",
                "33".repeat(16 + MAX_CLIENT_SIGNATURE)
            ),
            format!("uniqueid=a&clientpairingsecret={}", "33".repeat(17)),
        ] {
            let request = decoded(&query);
            assert_eq!(request.validate(), Ok(()), "{query}");
        }
    }

    #[test]
    fn core_and_ipc_agree_on_uniqueids() {
        for id in [
            "",
            "a",
            "a b",
            "x/y",
            "A-_9",
            "é",
            &"a".repeat(64),
            &"a".repeat(65),
        ] {
            assert_eq!(pairing::valid_uniqueid(id), valid_uniqueid(id), "{id:?}");
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
