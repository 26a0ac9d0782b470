//! What the client's frame FEC reports (0x5502, protocol notes §5.3) say about each FEC block.
//!
//! moonlight-common-c (src/RtpVideoQueue.c, `reportFinalFrameFecStatus`; queued best-effort by
//! `connectionSendFrameFecStatus` in src/ControlStream.c, at most 8 per ping interval, sent
//! unreliable, and only to Sunshine-like hosts) sends one report:
//! - after it rebuilt a block from parity (`reconstructFrame`, when `bufferDataPackets !=
//!   receivedDataPackets` after the Reed-Solomon decode): some data shards were missing, but data
//!   and parity together reached the data count;
//! - when it abandons a block it could not finish (a packet of a later frame or block arrives while
//!   the block is still pending): data and parity together stayed below the data count;
//! - when it notices a whole FEC block of a frame never arrived: then the figures are those of the
//!   last block it had, which may be complete.
//!
//! The fields are the block's: `totalDataPackets`/`totalParityPackets` are the shards the host
//! sent, `receivedDataPackets`/`receivedParityPackets` those that arrived.

use lumen_core::control::FrameFecStatus;

/// What one report says happened to its FEC block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FecOutcome {
    /// Data shards were missing and parity made up for them: `repaired` data shards rebuilt.
    Recovered { repaired: u16 },
    /// Too few shards arrived to rebuild the block: `missing` more were needed.
    Lost { missing: u16 },
    /// Every data shard arrived (a report about a block skipped after this one).
    Complete,
}

/// Classifies one report by its shard counts.
pub fn classify(status: &FrameFecStatus) -> FecOutcome {
    let data = status.total_data;
    let got_data = status.received_data;
    if got_data >= data {
        return FecOutcome::Complete;
    }
    // Sums in u32: two u16 a client chose cannot overflow it.
    let got = u32::from(got_data) + u32::from(status.received_parity);
    if got >= u32::from(data) {
        FecOutcome::Recovered {
            repaired: data - got_data,
        }
    } else {
        // `got < data <= u16::MAX`, so the difference fits.
        FecOutcome::Lost {
            missing: u16::try_from(u32::from(data) - got).unwrap_or(u16::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(total_data: u16, total_parity: u16, data: u16, parity: u16) -> FrameFecStatus {
        FrameFecStatus {
            frame_index: 100,
            total_data,
            total_parity,
            received_data: data,
            received_parity: parity,
            fec_percentage: 20,
            block_count: 1,
            ..FrameFecStatus::default()
        }
    }

    #[test]
    fn missing_data_made_up_by_parity_is_a_recovery() {
        assert_eq!(
            classify(&report(10, 2, 9, 2)),
            FecOutcome::Recovered { repaired: 1 }
        );
        // Exactly enough: two data shards rebuilt from both parity shards.
        assert_eq!(
            classify(&report(10, 2, 8, 2)),
            FecOutcome::Recovered { repaired: 2 }
        );
        // One data shard, two parity (the smallest frames): the data shard rebuilt from parity.
        assert_eq!(
            classify(&report(1, 2, 0, 1)),
            FecOutcome::Recovered { repaired: 1 }
        );
    }

    #[test]
    fn too_few_shards_is_a_loss() {
        assert_eq!(
            classify(&report(10, 2, 7, 2)),
            FecOutcome::Lost { missing: 1 }
        );
        assert_eq!(
            classify(&report(1, 2, 0, 0)),
            FecOutcome::Lost { missing: 1 }
        );
        assert_eq!(
            classify(&report(u16::MAX, 0, 0, 0)),
            FecOutcome::Lost { missing: u16::MAX }
        );
    }

    #[test]
    fn all_data_present_is_neither() {
        assert_eq!(classify(&report(10, 2, 10, 0)), FecOutcome::Complete);
        assert_eq!(classify(&report(10, 2, 10, 2)), FecOutcome::Complete);
        // Nonsense a client may send is classified, never a panic.
        assert_eq!(classify(&report(0, 0, 0, 0)), FecOutcome::Complete);
        assert_eq!(
            classify(&report(3, 0, 0, u16::MAX)),
            FecOutcome::Recovered { repaired: 3 }
        );
    }
}
