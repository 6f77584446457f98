//! haul: live migration of runc containers.
