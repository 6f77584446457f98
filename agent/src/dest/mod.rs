//! The destination side: `haul serve` accepts authenticated connections; each migration gets
//! its own session (receive pages and images → restore held at post-restore → Ready → Commit).

pub mod cgroup_limits;
pub mod fill;
pub mod journal;
pub mod lazy;
pub mod page_images;
pub mod precopy;
pub mod prefetch;
pub mod recover;
pub mod restart;
pub mod runc;
pub mod serve;
pub mod session;
pub mod stdio;
