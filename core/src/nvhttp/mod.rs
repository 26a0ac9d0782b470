//! nvhttp requests (gamestream-protocol.md §2–3) parsed with no I/O: the query string
//! ([`query`]), the request classifier that turns method, path and query into a typed
//! [`NvRequest`] ([`request`]), the pairing stages' fields ([`pairing`]) and the `/launch`
//! parameters ([`launch`]). lumen-net serves them over hyper; the fuzz targets in `fuzz/` drive
//! the same code through [`fuzz`].
//!
//! Everything here answers bad input with an error value; lumen-net turns each into an XML
//! `status_code="400"` reply.

pub mod fuzz;
pub mod launch;
pub mod pairing;
pub mod query;
pub mod request;

pub use launch::{LaunchError, LaunchParams, Mode};
pub use pairing::{PairError, PairRequest};
pub use query::{Query, QueryError};
pub use request::{classify, split_target, Listener, NvRequest, RequestError};
