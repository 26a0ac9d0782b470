//! What the broker keeps on disk: the host identity and the paired clients, written atomically and
//! never silently replaced when found corrupt.

pub mod atomic;
pub mod clients;
pub mod identity;
