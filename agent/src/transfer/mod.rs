//! The connection between source and destination: handshake (Noise NNpsk0 from a pre-shared
//! key), frames with a hard size cap, a multiplexer for control messages, page-server traffic
//! and image files, and the two streams that ride on it (pages, image files).

mod error;
pub mod frame;
pub mod handshake;
pub mod images;
pub mod key;
pub mod mux;
pub mod pages;
pub mod tree;

pub use error::WireError;
pub use frame::{RecvHalf, SendHalf};
pub use key::Key;
pub use mux::{Conn, Incoming};

/// Version of haul's wire protocol; both sides must speak the same. 3: keepalive frames.
pub const PROTOCOL_VERSION: u16 = 3;
