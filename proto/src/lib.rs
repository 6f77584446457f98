//! Protobuf messages haul speaks: CRIU's RPC (`criu`) and haul's own wire messages (`haul`).
//!
//! The Rust code in `generated/` comes from `proto/*.proto` through `cargo xtask proto`
//! (protox + prost-build, no `protoc`); CI checks it is current with `cargo xtask proto --check`.

#![allow(clippy::all)]

/// CRIU's RPC subset and its stats images.
pub mod criu {
    include!("generated/criu.rs");
}

/// haul's connection messages.
pub mod haul {
    include!("generated/haul.rs");
}

#[cfg(test)]
mod tests {
    use super::criu::*;
    use prost::Message;

    /// CRIU's protobuf-c rejects a `criu_opts` without `images_dir_fd`: it must be on the wire
    /// even at its default (-1).
    #[test]
    fn images_dir_fd_is_always_encoded() {
        let opts = CriuOpts::default();
        assert_eq!(opts.images_dir_fd, -1);
        let bytes = opts.encode_to_vec();
        // field 1, varint: tag byte 0x08, then -1 as a 10-byte varint.
        assert_eq!(bytes.first(), Some(&0x08));
        assert_eq!(bytes.len(), 11);
    }

    /// `manage_cgroups_mode = IGNORE` (0) must be emitted when set (runc#4178).
    #[test]
    fn explicit_zero_enum_is_encoded() {
        let opts = CriuOpts {
            manage_cgroups_mode: Some(CriuCgMode::Ignore as i32),
            ..Default::default()
        };
        let bytes = opts.encode_to_vec();
        // field 34 varint: key = 34<<3|0 = 272 = [0x90, 0x02], value 0.
        assert!(bytes.windows(3).any(|w| w == [0x90, 0x02, 0x00]));
    }

    #[test]
    fn request_type_is_required_on_the_wire() {
        let req = CriuReq {
            r#type: CriuReqType::Empty as i32,
            ..Default::default()
        };
        assert_eq!(req.encode_to_vec(), vec![0x08, 0x00]);
    }
}
