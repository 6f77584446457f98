//! Every capacity and timeout haul enforces, in one place, each with the reason for its value.
//! Parsers of runc and /proc files keep their own bounds in `inspect::bounds`.

use std::time::Duration;

/// Largest frame on the connection, header excluded: 256 KiB, its 16-byte tag included. Larger
/// than Noise's 64 KiB transport messages (haul seals frames itself, `haul_seal`): a page relay
/// with 256 KiB frames used ~25-30% less CPU per MiB than with 64 KiB ones (relay_bench, 512
/// MiB, AEGIS-128L: 1150-1600 against 1560-2340 us), fewer system calls and thread wake-ups.
/// Plaintext mode uses the same cap so both modes behave alike.
pub const FRAME_MAX: usize = 256 * 1024;

/// Authentication tag added by the cipher (AEGIS-128L or ChaCha20-Poly1305) to every encrypted
/// frame.
pub const FRAME_TAG: usize = 16;

/// Largest plaintext a frame carries (one kind byte plus payload).
pub const FRAME_PLAINTEXT_MAX: usize = FRAME_MAX - FRAME_TAG;

/// Largest control message (protobuf) accepted from the peer: control messages are small; the
/// largest is a CPU description for `haul check` (a few KiB).
pub const CONTROL_MAX: usize = FRAME_PLAINTEXT_MAX - 1;

/// Longest image file name accepted from the peer. CRIU's names are short
/// ("pages-1.img", "mountpoints-12.img"); 128 leaves room without inviting abuse.
pub const FILE_NAME_MAX: usize = 128;

/// Most image files one migration may carry. CRIU writes a few files per task and per
/// namespace; 4096 covers process trees of hundreds of tasks.
pub const FILES_MAX: u32 = 4096;

/// Most bytes of non-page image files one migration may carry (pages go to the page server and
/// are bounded by the destination's disk): 1 GiB.
pub const IMAGE_BYTES_MAX: u64 = 1 << 30;

/// Largest CRIU RPC response accepted: responses are small protobufs; 1 MiB is far above any
/// real one and keeps a misbehaving CRIU from making haul allocate without bound.
pub const CRIU_RESPONSE_MAX: usize = 1 << 20;

/// Bytes of the CRIU log quoted in an error (the lines with "Error" near the end).
pub const CRIU_LOG_TAIL: usize = 16 * 1024;

/// Number of CRIU log error lines quoted in an error message.
pub const CRIU_LOG_ERROR_LINES: usize = 8;

/// Bytes of CRIU's page stream the relay reads at once and sends as one frame: a frame's whole
/// payload. Reads of 8 KiB were measured 7x slower than large ones, and a larger buffer would
/// only be cut into frames again.
pub const RELAY_BUFFER: usize = FRAME_PLAINTEXT_MAX - 1;

/// Send buffer of each end of a page socketpair between haul and CRIU: a unix socket's default
/// (~208 KiB) holds less than one frame's payload, so the relay's reads would come out short.
/// Kernel memory, used only while CRIU is ahead of the relay.
pub const PAGE_SOCKET_BUFFER: usize = 1 << 20;

/// Incoming frames queued between the connection reader and the orchestrator. Each holds at most
/// `FRAME_MAX` bytes, so this bounds that queue at 1 MiB.
pub const INCOMING_QUEUE: usize = 4;

/// Time allowed for the whole handshake (TCP accept to authenticated session).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest silence tolerated on an established connection while a peer is expected to send.
/// CRIU may take long to dump or restore a large process tree; 120 s is generous but finite.
/// The destination's default for `haul serve --idle-timeout`.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Shortest `--idle-timeout`: a second (0 would give up before the peer could answer).
pub const IDLE_TIMEOUT_MIN: Duration = Duration::from_secs(1);

/// Longest `--idle-timeout`: a day. A finite wait keeps a vanished source from holding one of
/// the `CONCURRENT_MIGRATIONS` slots for ever.
pub const IDLE_TIMEOUT_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// How long the destination waits for CRIU's lazy-pages daemon to read the images and listen
/// (`--lazy`): it reads the process tree and page maps, a second or so for large trees.
pub const LAZY_DAEMON_START: Duration = Duration::from_secs(30);

/// Longest time CRIU's lazy-pages daemon may take to fill a restored container's memory from
/// the destination's own images after the resume (no `--eager-restore`; it runs at memory-copy
/// speed, about a second per GiB here).
pub const LOCAL_FILL_LIMIT: Duration = Duration::from_secs(600);

/// Longest wait, after SIGKILL, for a restored tree whose memory fill failed to be dead before
/// the fill lets go of its userfaultfds: the exit of a task frees its memory first, a few
/// hundred ms for tens of GiB; past this wait the descriptors stay open instead.
pub const RESTORED_STOP_WAIT: Duration = Duration::from_secs(10);

/// How long the destination holds restored tasks at post-restore waiting for Commit before it
/// gives up (kills them, keeps the images).
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Concurrent migrations `haul serve` accepts; more are refused with a reason.
pub const CONCURRENT_MIGRATIONS: usize = 4;

/// Connections in the handshake at once; more are closed at accept.
pub const PENDING_HANDSHAKES: usize = 8;

/// Size of the key file: 32 random bytes written as 64 hex digits and a newline.
pub const KEY_BYTES: usize = 32;

/// Most entries of a bundle tree sent with `--fs copy`: a busybox or alpine rootfs has a few
/// hundred to a few thousand; 200 000 covers large distributions while bounding the source's
/// change-tracking table (about 100 bytes per entry).
pub const TREE_ENTRIES_MAX: u64 = 200_000;

/// Most bytes of a bundle tree sent with `--fs copy` (64 GiB): bounded by the destination's disk,
/// this only stops a runaway peer.
pub const TREE_BYTES_MAX: u64 = 64 << 30;

/// Longest relative path in a bundle tree (PATH_MAX).
pub const TREE_PATH_MAX: usize = 4096;

/// How long a stop waits for migrations in flight. Longer than `COMMIT_TIMEOUT` (60 s), so a
/// restore held at post-restore when the stop begins resolves by the session's own rules (run,
/// killed on Abort, or in doubt with its images kept); shorter than systemd's default
/// `TimeoutStopSec` (90 s), so haul ends the wait itself rather than SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(80);

/// Unacknowledged data older than this aborts the connection (TCP_USER_TIMEOUT): a destination
/// that vanished without FIN is noticed in seconds, not after TCP's ~15 min of retransmissions,
/// while the container waits frozen. 20 s tolerates short radio dropouts on edge links.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

/// Keepalive probes start after this much silence (then every this much, 3 probes): a dead
/// peer is found while waiting for a reply with nothing in flight.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

/// How often the destination shows it is alive during a long wait of its own on which the
/// source waits too (the memory fill after the resume): an empty keepalive frame, well within
/// the source's `IDLE_TIMEOUT` of silence.
pub const KEEPALIVE_FRAME_EVERY: Duration = Duration::from_secs(15);

/// Most pre-dump iterations of one migration (`--pre-dump-max-iterations` may not exceed it, and
/// the destination refuses more). Each iteration leaves an images directory on the destination
/// until the restore; P.Haul stops at 8, and a workload that has not converged by then dirties
/// memory about as fast as it is copied, so further rounds only delay the freeze. 32 leaves room
/// to experiment while bounding the destination's directories and the time spent pre-copying.
pub const PRE_DUMP_ITERATIONS_MAX: u32 = 32;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::bounds::{
        DESCRIPTORS_JSON_MAX, MAX_DEVICES, MAX_DEVICE_RULES, MAX_MASKED_PATHS, MAX_MOUNTS,
        MOUNTINFO_MAX, PROC_CGROUP_MAX, PROC_STAT_MAX, STATE_JSON_MAX,
    };

    /// A quantity as README's Limits table writes it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Q {
        Bytes(u64),
        Secs(u64),
        Count(u64),
    }

    impl Q {
        /// Whether a quantity read from the README states `actual`. A number without a unit
        /// ("16 of them the tag") may state a size in bytes.
        fn states(self, actual: Q) -> bool {
            self == actual || matches!((self, actual), (Q::Count(a), Q::Bytes(b)) if a == b)
        }
    }

    /// Every constant the Limits table may name, with its value. A constant the table names
    /// and this list lacks fails the test: add it here.
    fn documented() -> Vec<(&'static str, Q)> {
        let b = |v: u64| Q::Bytes(v);
        let s = |d: Duration| Q::Secs(d.as_secs());
        let n = |v: u64| Q::Count(v);
        vec![
            ("FRAME_MAX", b(FRAME_MAX as u64)),
            ("FRAME_TAG", b(FRAME_TAG as u64)),
            ("FRAME_PLAINTEXT_MAX", b(FRAME_PLAINTEXT_MAX as u64)),
            ("CONTROL_MAX", b(CONTROL_MAX as u64)),
            ("FILE_NAME_MAX", b(FILE_NAME_MAX as u64)),
            ("FILES_MAX", n(u64::from(FILES_MAX))),
            ("IMAGE_BYTES_MAX", b(IMAGE_BYTES_MAX)),
            ("CRIU_RESPONSE_MAX", b(CRIU_RESPONSE_MAX as u64)),
            ("CRIU_LOG_TAIL", b(CRIU_LOG_TAIL as u64)),
            ("CRIU_LOG_ERROR_LINES", n(CRIU_LOG_ERROR_LINES as u64)),
            ("RELAY_BUFFER", b(RELAY_BUFFER as u64)),
            ("PAGE_SOCKET_BUFFER", b(PAGE_SOCKET_BUFFER as u64)),
            ("INCOMING_QUEUE", n(INCOMING_QUEUE as u64)),
            ("HANDSHAKE_TIMEOUT", s(HANDSHAKE_TIMEOUT)),
            ("IDLE_TIMEOUT", s(IDLE_TIMEOUT)),
            ("IDLE_TIMEOUT_MIN", s(IDLE_TIMEOUT_MIN)),
            ("IDLE_TIMEOUT_MAX", s(IDLE_TIMEOUT_MAX)),
            ("LAZY_DAEMON_START", s(LAZY_DAEMON_START)),
            ("LOCAL_FILL_LIMIT", s(LOCAL_FILL_LIMIT)),
            ("COMMIT_TIMEOUT", s(COMMIT_TIMEOUT)),
            ("CONCURRENT_MIGRATIONS", n(CONCURRENT_MIGRATIONS as u64)),
            ("PENDING_HANDSHAKES", n(PENDING_HANDSHAKES as u64)),
            ("KEY_BYTES", b(KEY_BYTES as u64)),
            ("TREE_ENTRIES_MAX", n(TREE_ENTRIES_MAX)),
            ("TREE_BYTES_MAX", b(TREE_BYTES_MAX)),
            ("TREE_PATH_MAX", b(TREE_PATH_MAX as u64)),
            ("STOP_GRACE", s(STOP_GRACE)),
            ("TCP_USER_TIMEOUT", s(TCP_USER_TIMEOUT)),
            ("KEEPALIVE_IDLE", s(KEEPALIVE_IDLE)),
            ("KEEPALIVE_FRAME_EVERY", s(KEEPALIVE_FRAME_EVERY)),
            ("RESTORED_STOP_WAIT", s(RESTORED_STOP_WAIT)),
            (
                "PRE_DUMP_ITERATIONS_MAX",
                n(u64::from(PRE_DUMP_ITERATIONS_MAX)),
            ),
            ("STATE_JSON_MAX", b(STATE_JSON_MAX as u64)),
            ("MAX_MOUNTS", n(MAX_MOUNTS as u64)),
            ("MAX_MASKED_PATHS", n(MAX_MASKED_PATHS as u64)),
            ("MAX_DEVICES", n(MAX_DEVICES as u64)),
            ("MAX_DEVICE_RULES", n(MAX_DEVICE_RULES as u64)),
            ("MOUNTINFO_MAX", b(MOUNTINFO_MAX as u64)),
            ("PROC_CGROUP_MAX", b(PROC_CGROUP_MAX as u64)),
            ("PROC_STAT_MAX", b(PROC_STAT_MAX as u64)),
            ("DESCRIPTORS_JSON_MAX", b(DESCRIPTORS_JSON_MAX as u64)),
        ]
    }

    /// The quantities of a table cell, in order: a number ("262144", "200 000") and the unit
    /// after it ("bytes", "4096-byte", "KiB", "MiB", "GiB", "s", "h"); a number followed by any
    /// other word, or none, is a count. Digits inside a word (AEGIS-128L) are not numbers.
    fn quantities(cell: &str) -> Vec<Q> {
        let c = cell.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < c.len() {
            let in_word = |k: usize| k > 0 && c[k - 1].is_ascii_alphanumeric();
            if !c[i].is_ascii_digit() || in_word(i) || (i > 0 && c[i - 1] == b'-' && in_word(i - 1))
            {
                i += 1;
                continue;
            }
            let mut n = 0u64;
            loop {
                while i < c.len() && c[i].is_ascii_digit() {
                    n = n * 10 + u64::from(c[i] - b'0');
                    i += 1;
                }
                // "200 000": a space, then exactly three digits.
                let group = c
                    .get(i + 1..i + 4)
                    .is_some_and(|g| g.iter().all(u8::is_ascii_digit))
                    && c.get(i + 4).is_none_or(|d| !d.is_ascii_digit());
                if c.get(i) == Some(&b' ') && group {
                    i += 1;
                } else {
                    break;
                }
            }
            let mut j = i;
            if matches!(c.get(j), Some(b' ' | b'-')) {
                j += 1;
            }
            let start = j;
            while j < c.len() && c[j].is_ascii_alphabetic() {
                j += 1;
            }
            let unit = &cell[start..j];
            out.push(match unit {
                "byte" | "bytes" => Q::Bytes(n),
                "KiB" => Q::Bytes(n << 10),
                "MiB" => Q::Bytes(n << 20),
                "GiB" => Q::Bytes(n << 30),
                "s" => Q::Secs(n),
                "min" => Q::Secs(n * 60),
                "h" => Q::Secs(n * 3600),
                _ => Q::Count(n),
            });
        }
        out
    }

    /// README's Limits table: (constants named in a row, that row's value cell).
    fn readme_rows() -> Vec<(Vec<&'static str>, &'static str)> {
        let readme = include_str!("../../README.md");
        let table = readme
            .split("### Limits")
            .nth(1)
            .and_then(|s| s.split("\n### ").next())
            .unwrap();
        table
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| limit |"))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').collect();
                assert!(cells.len() >= 5, "README's Limits table: odd row {l:?}");
                let names = cells[2].split('`').skip(1).step_by(2).collect();
                (names, cells[3].trim())
            })
            .collect()
    }

    /// README's Limits table names every constant of this file.
    #[test]
    fn the_readme_documents_every_limit() {
        let rows = readme_rows();
        for line in include_str!("limits.rs").lines() {
            if let Some(rest) = line.strip_prefix("pub const ") {
                let name = rest.split(':').next().unwrap();
                assert!(
                    rows.iter().any(|(names, _)| names.contains(&name)),
                    "README's Limits table does not name {name}"
                );
            }
        }
    }

    /// Each value in README's Limits table is the constant's. A row naming one constant per
    /// " / "-separated part ("4096 / 1 GiB") is read part by part: each part's first quantity
    /// is its constant's value. Other rows ("the last 16 KiB, at most 8 error lines") must
    /// state the constants' values in the order the row names them.
    #[test]
    fn the_readme_states_every_limit_s_value() {
        let known = documented();
        let rows = readme_rows();
        assert!(rows.len() > 10, "README's Limits table not found");
        for (names, value) in rows {
            let actual: Vec<(&str, Q)> = names
                .iter()
                .map(|name| {
                    let q = known.iter().find(|(k, _)| k == name).map(|(_, q)| *q);
                    (
                        *name,
                        q.unwrap_or_else(|| panic!("no value known for {name}: add it")),
                    )
                })
                .collect();
            let parts: Vec<&str> = value.split(" / ").collect();
            if names.len() > 1 && parts.len() == names.len() {
                for ((name, q), part) in actual.iter().zip(&parts) {
                    let first = quantities(part).first().copied();
                    assert!(
                        first.is_some_and(|f| f.states(*q)),
                        "README's Limits table: {name} is {q:?}, the table says {part:?}"
                    );
                }
            } else {
                let mut stated = quantities(value).into_iter();
                for (name, q) in &actual {
                    assert!(
                        stated.any(|f| f.states(*q)),
                        "README's Limits table: {name} is {q:?}, not in {value:?} (in order)"
                    );
                }
            }
        }
    }

    #[test]
    fn table_quantities_are_read_with_their_units() {
        assert_eq!(
            quantities("200 000 entries / 64 GiB / 4096-byte paths"),
            [Q::Count(200_000), Q::Bytes(64 << 30), Q::Bytes(4096)]
        );
        assert_eq!(
            quantities("120 s; `haul serve --idle-timeout SECS`, 1 s to 24 h"),
            [Q::Secs(120), Q::Secs(1), Q::Secs(86400)]
        );
        assert_eq!(
            quantities("4 frames (1 MiB) / 262127 bytes, AEGIS-128L"),
            [Q::Count(4), Q::Bytes(1 << 20), Q::Bytes(262_127)]
        );
        assert!(Q::Count(16).states(Q::Bytes(16)));
        assert!(!Q::Bytes(16).states(Q::Count(16)));
        assert!(!Q::Secs(16).states(Q::Count(16)));
    }
}
