//! haul: live migration of runc containers and process trees between hosts, driving CRIU.
//!
//! Source pipeline: `inspect` (runc state, /proc) → `plan` (CRIU options) → `criu` (dump) →
//! `transfer` (pages, images). Destination: `transfer` → `plan` → `criu` (restore) → register.
//! `source` and `dest` orchestrate; see ARCHITECTURE.md.

pub mod cgroups;
pub mod check;
pub mod cli;
pub mod criu;
pub mod dest;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod inspect;
pub mod limits;
pub mod logger;
pub mod plan;
#[cfg(test)]
mod protocol_tests;
pub mod register;
pub mod service;
pub mod source;
pub mod summary;
pub mod sys;
pub mod transfer;
pub mod util;
pub mod workdir;
