//! The source side: connect, prepare the destination, dump with CRIU while pages stream, send
//! the images, and commit only when the destination holds the restored tasks.

pub mod connect;
pub mod freeze;
pub mod migrate;
pub mod postcopy;
pub mod precopy;
pub mod progress;
pub mod restart;
pub mod runc;
