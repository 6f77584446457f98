//! Options for a plain process tree (P.Haul's "pid" type): the tree rooted at a pid that is the
//! init of its own pid namespace and its own session leader.

use super::LOG_LEVEL;
use haul_proto::criu::{CriuOpts, CriuPageServerInfo};

/// DUMP of the tree rooted at `pid`, pages through the page-server socket `ps_fd` (a number
/// inherited by CRIU), images into `images_dir_fd`.
pub fn dump(pid: i32, images_dir_fd: i32, ps_fd: i32) -> CriuOpts {
    CriuOpts {
        images_dir_fd,
        pid: Some(pid),
        log_level: Some(LOG_LEVEL),
        log_file: Some("dump.log".into()),
        ps: Some(CriuPageServerInfo {
            fd: Some(ps_fd),
            ..Default::default()
        }),
        // Stop at post-dump with the tasks frozen until the destination is ready.
        notify_scripts: Some(true),
        file_locks: Some(true),
        ..Default::default()
    }
}

/// PAGE_SERVER on the destination, reading CRIU's page protocol from `ps_fd`.
pub fn page_server(images_dir_fd: i32, ps_fd: i32) -> CriuOpts {
    CriuOpts {
        images_dir_fd,
        log_level: Some(LOG_LEVEL),
        log_file: Some("page-server.log".into()),
        ps: Some(CriuPageServerInfo {
            fd: Some(ps_fd),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// RESTORE of a process tree from `images_dir_fd`, held at post-restore by notifications.
pub fn restore(images_dir_fd: i32) -> CriuOpts {
    CriuOpts {
        images_dir_fd,
        log_level: Some(LOG_LEVEL),
        log_file: Some("restore.log".into()),
        notify_scripts: Some(true),
        file_locks: Some(true),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_sends_pages_through_the_inherited_socket_and_waits_at_post_dump() {
        let o = dump(1234, 7, 9);
        assert_eq!(o.pid, Some(1234));
        assert_eq!(o.images_dir_fd, 7);
        assert_eq!(o.ps.as_ref().and_then(|p| p.fd), Some(9));
        assert!(o
            .ps
            .as_ref()
            .is_some_and(|p| p.address.is_none() && p.port.is_none()));
        assert_eq!(o.notify_scripts, Some(true));
        assert!(
            o.leave_running.is_none(),
            "the source must not keep running after commit"
        );
        assert_eq!(o.log_file.as_deref(), Some("dump.log"));
    }

    #[test]
    fn restore_is_held_by_notifications() {
        let o = restore(5);
        assert_eq!(o.images_dir_fd, 5);
        assert_eq!(o.notify_scripts, Some(true));
        assert!(!o.log_file.unwrap_or_default().contains('/'));
    }
}
