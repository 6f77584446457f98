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
    /// README's Limits table names every constant of this file.
    #[test]
    fn the_readme_documents_every_limit() {
        let readme = include_str!("../../README.md");
        let table = readme
            .split("### Limits")
            .nth(1)
            .and_then(|s| s.split("\n### ").next())
            .unwrap();
        for line in include_str!("limits.rs").lines() {
            if let Some(rest) = line.strip_prefix("pub const ") {
                let name = rest.split(':').next().unwrap();
                assert!(
                    table.contains(&format!("`{name}`")),
                    "README's Limits table does not name {name}"
                );
            }
        }
    }
}
