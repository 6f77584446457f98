//! CRIU driver: `criu swrk` over a SOCK_SEQPACKET socketpair with protobuf requests. Knows
//! nothing about runc or the network; the orchestrators decide what to ask and how to answer
//! each notification.

#[cfg(test)]
pub mod builtin_fake;
mod error;
#[cfg(test)]
pub mod fake;
pub mod log_excerpt;
pub mod mm;
pub mod page_server;
pub mod page_stream;
pub mod pagemap;
pub mod stats;
mod swrk;
pub mod tar;

pub use error::CriuError;
pub use swrk::{find_criu, Event, Swrk, CRIU_PATH_ENV};

use haul_proto::criu::{CriuReqType, CriuVersion};
use std::fmt;

/// A CRIU version, comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub sublevel: u32,
}

/// Oldest CRIU haul drives: 4.0 has every RPC field haul sends (images_dir, SKIP lock …) and
/// is the first release known to work on the kernels haul targets.
pub const MIN_VERSION: Version = Version {
    major: 4,
    minor: 0,
    sublevel: 0,
};

impl Version {
    /// A version as haul's wire protocol carries it (Hello, Welcome).
    pub fn from_wire(v: &haul_proto::haul::CriuVersion) -> Self {
        Version {
            major: v.major,
            minor: v.minor,
            sublevel: v.sublevel,
        }
    }

    pub fn from_proto(v: &CriuVersion) -> Self {
        Version {
            major: u32::try_from(v.major_number).unwrap_or(0),
            minor: u32::try_from(v.minor_number).unwrap_or(0),
            sublevel: v.sublevel.and_then(|s| u32::try_from(s).ok()).unwrap_or(0),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.sublevel != 0 {
            write!(f, ".{}", self.sublevel)?;
        }
        Ok(())
    }
}

/// Name of a request type for messages.
pub fn req_name(t: i32) -> &'static str {
    match CriuReqType::try_from(t) {
        Ok(CriuReqType::Empty) => "EMPTY",
        Ok(CriuReqType::Dump) => "DUMP",
        Ok(CriuReqType::Restore) => "RESTORE",
        Ok(CriuReqType::Check) => "CHECK",
        Ok(CriuReqType::PreDump) => "PRE_DUMP",
        Ok(CriuReqType::PageServer) => "PAGE_SERVER",
        Ok(CriuReqType::Notify) => "NOTIFY",
        Ok(CriuReqType::CpuinfoDump) => "CPUINFO_DUMP",
        Ok(CriuReqType::CpuinfoCheck) => "CPUINFO_CHECK",
        Ok(CriuReqType::FeatureCheck) => "FEATURE_CHECK",
        Ok(CriuReqType::Version) => "VERSION",
        Ok(CriuReqType::WaitPid) => "WAIT_PID",
        Ok(CriuReqType::PageServerChld) => "PAGE_SERVER_CHLD",
        Ok(CriuReqType::SinglePreDump) => "SINGLE_PRE_DUMP",
        Err(_) => "UNKNOWN",
    }
}
