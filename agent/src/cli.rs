//! Command line (argh). Every command a user runs has examples and its exit codes in its help
//! (error.rs's table); the internal ones haul starts itself (stdio-relay, postcopy-guard,
//! freeze-guard) have neither.

use argh::FromArgs;
use std::path::PathBuf;

/// haul: live-migrate containers and process trees between hosts with CRIU.
#[derive(FromArgs, Debug)]
#[argh(
    example = "haul keygen /etc/haul/key\n\
               haul serve --listen 0.0.0.0:7070 --key /etc/haul/key          (destination)\n\
               haul migrate pid 4242 --to 10.0.0.2:7070 --key /etc/haul/key  (source)\n\
               haul check --to 10.0.0.2:7070 --key /etc/haul/key",
    note = "Environment: HAUL_CRIU (criu binary), HAUL_LOG (error|warn|info|debug|trace).\n\n\
            exit codes: 0 success; 1 other failure; 2 bad command line or configuration;\n\
            3 this host cannot migrate (criu missing/too old here); 4 authentication failed or\n\
            protocol differs; 5 destination refused before anything froze (its checks or its\n\
            criu; source untouched);\n\
            6 migration failed and was rolled back (workload still runs on the source);\n\
            7 in doubt: source tasks gone, destination did not confirm (it keeps the images);\n\
            8 container lost: --lazy post-copy failed after the destination started, or\n\
            --mode restart could start it neither there nor here again"
)]
pub struct Cli {
    /// more logging (-v debug, -vv trace)
    #[argh(switch, short = 'v')]
    pub verbose: u8,
    /// only errors on stderr (no progress, no summary)
    #[argh(switch, short = 'q')]
    pub quiet: bool,
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Serve(Serve),
    Migrate(Migrate),
    Keygen(Keygen),
    Check(Check),
    Inspect(Inspect),
    Recover(Recover),
    StdioRelay(StdioRelay),
    PostcopyGuard(PostcopyGuard),
    FreezeGuard(FreezeGuard),
}

/// Destination: complete an in-doubt migration from the images `haul serve` kept.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "recover",
    example = "haul recover /var/lib/haul/m-1795938661250-9f3a01c2",
    note = "A migration is in doubt when the destination reported it held the restored tasks but\n\
            never heard the source's commit (connection cut, a crash). The destination then\n\
            stops its copy and keeps the complete images with a note IN-DOUBT, so the workload\n\
            never runs twice. Check that the source no longer runs it (its `haul migrate` exited\n\
            7 and said so), then run this with the same --runc-root, --bundle-root and\n\
            --stdio-dir as `haul serve` to restore it here and register it with runc.\n\n\
            exit codes: 0 recovered (it runs here); 1 the restore failed; 2 bad arguments or not an\n\
            in-doubt directory; 3 criu missing here; 5 the container does not fit here (its id\n\
            taken, its bundle, a mount source or runc missing)"
)]
pub struct Recover {
    /// the kept migration directory (named in the IN-DOUBT log line)
    #[argh(positional)]
    pub dir: PathBuf,
    /// runc state root (default /run/runc)
    #[argh(option, default = "PathBuf::from(\"/run/runc\")")]
    pub runc_root: PathBuf,
    /// where copied bundles are (default /var/lib/haul/bundles)
    #[argh(option, default = "PathBuf::from(\"/var/lib/haul/bundles\")")]
    pub bundle_root: PathBuf,
    /// where stdout/stderr logs go (default /var/log/haul)
    #[argh(option, default = "PathBuf::from(\"/var/log/haul\")")]
    pub stdio_dir: PathBuf,
    /// criu binary (default: $HAUL_CRIU, else criu on PATH)
    #[argh(option)]
    pub criu: Option<PathBuf>,
    /// runc binary (default: runc on PATH)
    #[argh(option)]
    pub runc: Option<PathBuf>,
}

/// Destination: accept migrations and restore them here with CRIU.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "serve",
    example = "haul serve --listen 0.0.0.0:7070 --key /etc/haul/key\n\
               haul serve --listen 127.0.0.1:7070 --insecure --work-dir /tmp/haul\n\
               haul serve --fd 3 --key /etc/haul/key --syslog     (systemd socket activation)",
    note = "Runs in the foreground, for an init system or supervisor; logs go to stderr, or with\n\
            --syslog to /dev/log as haul[PID], facility daemon (stderr if /dev/log is unreachable).\n\
            Listens on --listen, or on an inherited listening TCP socket with --fd N (systemd socket\n\
            activation: 3; inetd wait mode: 0); with neither, on the one socket systemd passed\n\
            (LISTEN_FDS=1). --pid-file is written once listening and removed on exit.\n\n\
            SIGHUP reads the --key file again: new connections use the new key, migrations in\n\
            progress keep theirs; an unreadable or bad file is logged and the old key stays.\n\
            SIGTERM or SIGINT: stop accepting, wait up to 80 s for migrations in flight to finish,\n\
            then exit 0. A second signal, or the end of the wait, exits at once with 1: the CRIU of\n\
            each migration still in flight sees haul's sockets close and aborts, a restore held for\n\
            the commit is killed, and the source rolls back (its workload keeps running there).\n\n\
            --idle-timeout: a source silent that long while serve waits for it (its description,\n\
            image files, pages, the bundle) is dropped with one logged reason and its migration\n\
            rolled back; the wait for the commit (60 s) and the handshake (10 s) have their own.\n\n\
            Each migration gets a fresh directory under --work-dir; it is removed after a successful\n\
            restore. If the source stops its tasks but the commit never arrives, the restored tasks\n\
            are stopped and the complete images stay in that directory with a file IN-DOUBT\n\
            explaining why.\n\n\
            Where the kernel has userfaultfd, a migration without --lazy resumes the restored tasks\n\
            before their memory is copied in; serve's userfaultfd handler then fills it from the\n\
            images here, and serve must keep running until it is done (a few hundred ms per GiB).\n\n\
            environment: HAUL_FILL=before-resume restores all memory before the resume (as the\n\
            source's --eager-restore); HAUL_CIPHER=chacha20-poly1305 keeps frames on\n\
            ChaCha20-Poly1305 instead of AEGIS-128L (used when both CPUs have AES instructions);\n\
            HAUL_FILLER=criu fills memory after the resume with CRIU's lazy-pages daemon instead\n\
            of serve's own userfaultfd handler; HAUL_PREFETCH=off turns off the daemon's\n\
            read-ahead for --lazy; HAUL_CRIU_TAR=system leaves\n\
            tmpfs contents to GNU tar; HAUL_CRIU names the criu binary.\n\n\
            exit codes: 0 stopped by a signal once no migration was in flight; 1 stopped with\n\
            migrations in flight (second signal, end of the wait), or another failure; 2 bad\n\
            arguments, key file or listening address; 3 this host cannot serve (no criu found,\n\
            work directory or pid file not writable)"
)]
pub struct Serve {
    /// address and port to listen on, e.g. 0.0.0.0:7070 (or --fd)
    #[argh(option)]
    pub listen: Option<String>,
    /// listen on inherited descriptor N, a listening TCP socket (instead of --listen)
    #[argh(option)]
    pub fd: Option<u32>,
    /// write haul's pid to this file once listening; removed on exit
    #[argh(option)]
    pub pid_file: Option<PathBuf>,
    /// log to syslog (/dev/log) instead of stderr
    #[argh(switch)]
    pub syslog: bool,
    /// pre-shared key file (made by `haul keygen`); required unless --insecure
    #[argh(option)]
    pub key: Option<PathBuf>,
    /// run without authentication or encryption (trusted test networks only)
    #[argh(switch)]
    pub insecure: bool,
    /// criu binary (default: $HAUL_CRIU, else criu on PATH)
    #[argh(option)]
    pub criu: Option<PathBuf>,
    /// where per-migration directories go, and bin/tar, haul as CRIU's tar (default
    /// /var/lib/haul)
    #[argh(option, default = "PathBuf::from(\"/var/lib/haul\")")]
    pub work_dir: PathBuf,
    /// keep images after a successful restore (debugging)
    #[argh(switch)]
    pub keep_images: bool,
    /// runc state root for restored containers (default /run/runc)
    #[argh(option, default = "PathBuf::from(\"/run/runc\")")]
    pub runc_root: PathBuf,
    /// where bundles go with --fs copy (default /var/lib/haul/bundles)
    #[argh(option, default = "PathBuf::from(\"/var/lib/haul/bundles\")")]
    pub bundle_root: PathBuf,
    /// where restored containers' stdout/stderr logs go (default /var/log/haul)
    #[argh(option, default = "PathBuf::from(\"/var/log/haul\")")]
    pub stdio_dir: PathBuf,
    /// runc binary (default: runc on PATH)
    #[argh(option)]
    pub runc: Option<PathBuf>,
    /// seconds a silent source is waited for before its migration is dropped (default 120,
    /// from 1 to 86400)
    #[argh(
        option,
        default = "crate::limits::IDLE_TIMEOUT.as_secs()",
        from_str_fn(idle_timeout_secs)
    )]
    pub idle_timeout: u64,
}

/// `--idle-timeout SECS`: whole seconds within `IDLE_TIMEOUT_MIN..=IDLE_TIMEOUT_MAX`.
fn idle_timeout_secs(value: &str) -> Result<u64, String> {
    use crate::limits::{IDLE_TIMEOUT_MAX, IDLE_TIMEOUT_MIN};
    let (min, max) = (IDLE_TIMEOUT_MIN.as_secs(), IDLE_TIMEOUT_MAX.as_secs());
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "--idle-timeout {value:?}: give whole seconds from {min} to {max}"
        )),
    }
}

/// Source: migrate something to a host running `haul serve`.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "migrate",
    example = "haul migrate runc web1 --to 10.0.0.2:7070 --key /etc/haul/key\n\
               haul migrate pid 4242 --to 10.0.0.2:7070 --key /etc/haul/key",
    note = "`haul migrate runc --help` and `haul migrate pid --help` say more.\n\n\
            exit codes: 0 migrated; 1 other failure; 2 bad arguments; 3 this host cannot (criu or\n\
            runc missing or too old here); 4 authentication; 5 the destination refused before\n\
            freezing (its checks or its criu); 6 failed and rolled back (still running here);\n\
            7 in doubt; 8 container lost (--lazy post-copy, or --mode restart could start it\n\
            neither there nor here again)"
)]
pub struct Migrate {
    #[argh(subcommand)]
    pub what: MigrateWhat,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum MigrateWhat {
    Pid(MigratePid),
    Runc(MigrateRunc),
}

/// Migrate a runc container: checkpoint it here, restore it on the destination and register it
/// with runc there (`runc list/exec/kill` work on the destination afterwards).
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "runc",
    example = "haul migrate runc web1 --to 10.0.0.2:7070 --key /etc/haul/key\n\
               haul migrate runc web1 --to 10.0.0.2:7070 --key k --dst-id web1-b --fs copy\n\
               haul migrate runc web1 --to 10.0.0.2:7070 --key k --lazy",
    note = "Before anything freezes, the destination checks: the id is free in its runc root, the\n\
            bundle is there (or is copied with --fs copy), every bind-mount source exists, runc and\n\
            CRIU are present and recent enough. Then the container's cgroup is frozen, CRIU dumps it\n\
            while its pages stream, and it is stopped here only after the destination holds the\n\
            restored copy; any failure before that thaws it here with its memory intact.\n\n\
            --lazy (post-copy): CRIU dumps without the memory and keeps it here, frozen; the\n\
            destination restores, lets the tasks run, and haul serve there fetches each page as\n\
            it is touched (userfaultfd), then the rest. Downtime grows only with the time CRIU\n\
            takes to set the memory aside here (~0.15 s per GiB), not with the transfer.\n\
            Until the destination runs, any failure still resumes the tasks here. After that the\n\
            memory is split between the hosts: if the connection or either CRIU fails before the\n\
            last page is across, both copies are stopped and the container is lost (exit 8).\n\
            Use it on a reliable link; `haul check --to` says whether the destination can.\n\n\
            Without --lazy every page crosses before the destination resumes the tasks; there,\n\
            CRIU restores everything but the tasks' private memory, the tasks resume, and haul\n\
            serve fills that memory from the destination's own copy (userfaultfd; the summary's\n\
            \"filled\" line). The source is no longer needed for it, but `haul serve` is: if it\n\
            is killed during the fill (a few hundred ms per GiB), the\n\
            restored tasks are stopped rather than left waiting for memory that never comes.\n\
            --eager-restore fills it before the resume instead (longer stop), as does\n\
            HAUL_FILL=before-resume on `haul serve`.\n\n\
            Pre-copy (--pre-dump auto, the default): while the workload runs, CRIU copies its\n\
            memory in rounds, each only what changed since the one before, so the freeze sends\n\
            little. Rounds stop after --pre-dump-max-iterations, after one that wrote at most\n\
            --pre-dump-min-pages pages, or after one that grew by more than --pre-dump-max-growth\n\
            percent (P.Haul's rules). auto dumps once, and logs why, when this host cannot track\n\
            memory (a kernel without soft-dirty bits; `haul check` says) or the destination's haul\n\
            is older; always then fails before anything is frozen (exit 3, or 5 for the\n\
            destination); never dumps once.\n\n\
            exit codes: 0 migrated; 1 other failure; 2 bad arguments; 3 this host cannot (criu or runc\n\
            missing or too old here); 4 authentication; 5 the destination refused before freezing\n\
            (its checks or its criu); 6 failed and rolled back (still running here); 7 in doubt;\n\
            8 container lost: --lazy post-copy failed after the destination started, or\n\
            --mode restart could start it neither there nor here again"
)]
pub struct MigrateRunc {
    /// container id
    #[argh(positional)]
    pub id: String,
    /// destination ADDR:PORT where `haul serve` listens
    #[argh(option)]
    pub to: String,
    /// pre-shared key file (made by `haul keygen`); required unless --insecure
    #[argh(option)]
    pub key: Option<PathBuf>,
    /// run without authentication or encryption (trusted test networks only)
    #[argh(switch)]
    pub insecure: bool,
    /// runc state root here (default /run/runc)
    #[argh(option, default = "PathBuf::from(\"/run/runc\")")]
    pub runc_root: PathBuf,
    /// id of the container on the destination (default: the same id)
    #[argh(option)]
    pub dst_id: Option<String>,
    /// filesystem: shared (the bundle path exists on both hosts; default) or copy
    #[argh(option, default = "String::from(\"shared\")")]
    pub fs: String,
    /// runc binary here (default: runc on PATH)
    #[argh(option)]
    pub runc: Option<PathBuf>,
    /// checkpoint (default: live, with CRIU) or restart (stop here, start afresh there: for
    /// hosts where checkpointing is impossible; the process state is lost)
    #[argh(option, default = "String::from(\"checkpoint\")")]
    pub mode: String,
    /// restart mode: signal that stops the container here (default TERM)
    #[argh(option, default = "String::from(\"TERM\")")]
    pub stop_signal: String,
    /// restart mode: seconds to wait for it to stop before KILL (default 10)
    #[argh(option, default = "10")]
    pub stop_timeout: u64,
    /// pre-copy before the freeze: auto (default; when this host can track memory and the
    /// destination serves it), always (else fail before freezing anything) or never
    #[argh(option, default = "crate::source::precopy::Mode::Auto")]
    pub pre_dump: crate::source::precopy::Mode,
    /// pre-copy: stop after N iterations (default 8, at most 32)
    #[argh(option, default = "crate::source::precopy::DEFAULT_MAX_ITERATIONS")]
    pub pre_dump_max_iterations: u32,
    /// pre-copy: stop after an iteration that wrote at most N pages (default 64)
    #[argh(option, default = "crate::source::precopy::DEFAULT_MIN_PAGES")]
    pub pre_dump_min_pages: u64,
    /// pre-copy: stop after an iteration that wrote more than PERCENT percent more pages than
    /// the one before (default 10)
    #[argh(option, default = "crate::source::precopy::DEFAULT_MAX_GROWTH_PERCENT")]
    pub pre_dump_max_growth: u32,
    /// criu binary (default: $HAUL_CRIU, else criu on PATH)
    #[argh(option)]
    pub criu: Option<PathBuf>,
    /// where the images written here go, and bin/tar, haul as CRIU's tar (default
    /// /var/lib/haul)
    #[argh(option, default = "PathBuf::from(\"/var/lib/haul\")")]
    pub work_dir: PathBuf,
    /// also write the summary as JSON to this file
    #[argh(option)]
    pub stats_json: Option<PathBuf>,
    /// keep this side's work directory (CRIU's dump.log, stats, images) after success
    #[argh(switch)]
    pub keep_work: bool,
    /// post-copy: the destination runs the workload before its memory has moved, then fetches
    /// the rest from here (downtime independent of memory size). If the connection is lost
    /// after the destination started, the container is lost (exit 8): see below
    #[argh(switch)]
    pub lazy: bool,
    /// restore all memory on the destination before the container resumes there (by default
    /// the destination resumes it first and fills the memory it already holds just after,
    /// when its kernel has userfaultfd: a shorter stop; see below)
    #[argh(switch)]
    pub eager_restore: bool,
}

/// Show what haul sees and would ask CRIU, without freezing anything.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "inspect",
    example = "haul inspect runc web1",
    note = "exit codes: 0 printed; 1 other failure; 2 bad arguments, or no such running container"
)]
pub struct Inspect {
    #[argh(subcommand)]
    pub what: InspectWhat,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum InspectWhat {
    Runc(InspectRunc),
}

/// Print a runc container as haul parses it and the CRIU dump and restore options it would use
/// on this host.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "runc",
    example = "haul inspect runc web1\nhaul inspect runc web1 --runc-root /run/runc --json",
    note = "exit codes: 0 printed; 1 other failure; 2 bad arguments, or no such running container"
)]
pub struct InspectRunc {
    /// container id
    #[argh(positional)]
    pub id: String,
    /// runc state root (default /run/runc)
    #[argh(option, default = "PathBuf::from(\"/run/runc\")")]
    pub runc_root: PathBuf,
    /// machine-readable output
    #[argh(switch)]
    pub json: bool,
}

/// (internal) relay a restored container's stdio pipe into a log file; started by `haul serve`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "stdio-relay")]
pub struct StdioRelay {
    /// log file to append to
    #[argh(option)]
    pub log: PathBuf,
    /// hold stdin open (the write end of a container's stdin pipe) until no reader is left
    #[argh(switch)]
    pub hold: bool,
}

/// (internal) if `haul migrate` dies: fail CRIU's lazy page server before the commit (CRIU
/// resumes the tasks) or kill the frozen tasks after it, and thaw the freezer cgroup haul froze
/// once CRIU has exited; started by `haul migrate`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "freeze-guard")]
pub struct FreezeGuard {
    /// the container's v1 freezer cgroup directory
    #[argh(option)]
    pub freezer: Option<std::path::PathBuf>,
    /// the dumping CRIU
    #[argh(option)]
    pub criu_pid: i32,
    /// inherited descriptor: haul's end of CRIU's page socket (--lazy)
    #[argh(option)]
    pub page_socket: Option<i32>,
    /// the root task whose network namespace CRIU locked (--lazy)
    #[argh(option)]
    pub unlock_network_of: Option<i32>,
    /// the frozen tasks, comma-separated, killed if haul dies after the commit (--lazy)
    #[argh(option, default = "String::new()")]
    pub tasks: String,
}

/// (internal) kill a restored task if `haul serve` ends before its post-copy completed; started
/// by `haul serve` for `--lazy`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "postcopy-guard")]
pub struct PostcopyGuard {
    /// restored root task
    #[argh(option)]
    pub pid: i32,
    /// its start time (clock ticks since boot, /proc/PID/stat field 22)
    #[argh(option)]
    pub start_time: u64,
}

/// Migrate a process tree: PID must be the init of its own pid namespace and a session leader
/// (for example started with `unshare -pf setsid PROGRAM`).
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "pid",
    example = "haul migrate pid 4242 --to 10.0.0.2:7070 --key /etc/haul/key\n\
               haul migrate pid 4242 --to 10.0.0.2:7070 --key k --stats-json /tmp/stats.json\n\
               haul migrate pid 4242 --to 10.0.0.2:7070 --key k --lazy",
    note = "The tasks stay frozen while the destination restores; they are stopped here only after\n\
            the destination holds the restored copy. Any failure before that resumes them here.\n\n\
            --lazy (post-copy): CRIU dumps without the memory and keeps it here, frozen; the\n\
            destination restores, lets the tasks run, and haul serve there fetches each page as\n\
            it is touched (userfaultfd), then the rest. Downtime grows only with the time CRIU\n\
            takes to set the memory aside here (~0.15 s per GiB), not with the transfer.\n\
            Until the destination runs, any failure still resumes the tasks here. After that the\n\
            memory is split between the hosts: if the connection or either CRIU fails before the\n\
            last page is across, both copies are stopped and the container is lost (exit 8).\n\
            Use it on a reliable link; `haul check --to` says whether the destination can.\n\n\
            Without --lazy every page crosses before the destination resumes the tasks; there,\n\
            CRIU restores everything but the tasks' private memory, the tasks resume, and haul\n\
            serve fills that memory from the destination's own copy (userfaultfd; the summary's\n\
            \"filled\" line). The source is no longer needed for it, but `haul serve` is: if it\n\
            is killed during the fill (a few hundred ms per GiB), the\n\
            restored tasks are stopped rather than left waiting for memory that never comes.\n\
            --eager-restore fills it before the resume instead (longer stop), as does\n\
            HAUL_FILL=before-resume on `haul serve`.\n\n\
            Pre-copy (--pre-dump auto, the default): while the workload runs, CRIU copies its\n\
            memory in rounds, each only what changed since the one before, so the freeze sends\n\
            little. Rounds stop after --pre-dump-max-iterations, after one that wrote at most\n\
            --pre-dump-min-pages pages, or after one that grew by more than --pre-dump-max-growth\n\
            percent (P.Haul's rules). auto dumps once, and logs why, when this host cannot track\n\
            memory (a kernel without soft-dirty bits; `haul check` says) or the destination's haul\n\
            is older; always then fails before anything is frozen (exit 3, or 5 for the\n\
            destination); never dumps once.\n\n\
            exit codes: 0 migrated; 1 other failure; 2 bad arguments; 3 this host cannot (criu\n\
            missing or too old here); 4 authentication; 5 the destination refused before freezing\n\
            (its checks or its criu); 6 failed and rolled back (still running here); 7 in doubt;\n\
            8 container lost: --lazy post-copy failed after the destination started"
)]
pub struct MigratePid {
    /// pid of the root of the process tree
    #[argh(positional)]
    pub pid: i32,
    /// destination ADDR:PORT where `haul serve` listens
    #[argh(option)]
    pub to: String,
    /// pre-shared key file (made by `haul keygen`); required unless --insecure
    #[argh(option)]
    pub key: Option<PathBuf>,
    /// run without authentication or encryption (trusted test networks only)
    #[argh(switch)]
    pub insecure: bool,
    /// criu binary (default: $HAUL_CRIU, else criu on PATH)
    #[argh(option)]
    pub criu: Option<PathBuf>,
    /// where the images written here go, and bin/tar, haul as CRIU's tar (default
    /// /var/lib/haul)
    #[argh(option, default = "PathBuf::from(\"/var/lib/haul\")")]
    pub work_dir: PathBuf,
    /// pre-copy before the freeze: auto (default; when this host can track memory and the
    /// destination serves it), always (else fail before freezing anything) or never
    #[argh(option, default = "crate::source::precopy::Mode::Auto")]
    pub pre_dump: crate::source::precopy::Mode,
    /// pre-copy: stop after N iterations (default 8, at most 32)
    #[argh(option, default = "crate::source::precopy::DEFAULT_MAX_ITERATIONS")]
    pub pre_dump_max_iterations: u32,
    /// pre-copy: stop after an iteration that wrote at most N pages (default 64)
    #[argh(option, default = "crate::source::precopy::DEFAULT_MIN_PAGES")]
    pub pre_dump_min_pages: u64,
    /// pre-copy: stop after an iteration that wrote more than PERCENT percent more pages than
    /// the one before (default 10)
    #[argh(option, default = "crate::source::precopy::DEFAULT_MAX_GROWTH_PERCENT")]
    pub pre_dump_max_growth: u32,
    /// also write the summary as JSON to this file
    #[argh(option)]
    pub stats_json: Option<PathBuf>,
    /// keep this side's work directory (CRIU's dump.log, stats, images) after success
    #[argh(switch)]
    pub keep_work: bool,
    /// post-copy: the destination runs the workload before its memory has moved, then fetches
    /// the rest from here (downtime independent of memory size). If the connection is lost
    /// after the destination started, the container is lost (exit 8): see below
    #[argh(switch)]
    pub lazy: bool,
    /// restore all memory on the destination before the container resumes there (by default
    /// the destination resumes it first and fills the memory it already holds just after,
    /// when its kernel has userfaultfd: a shorter stop; see below)
    #[argh(switch)]
    pub eager_restore: bool,
}

/// Write a new random pre-shared key (mode 0600); copy it to both hosts.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "keygen",
    example = "haul keygen /etc/haul/key",
    note = "exit codes: 0 written; 1 no random bytes from the kernel; 2 bad arguments, or the file\n\
            exists or cannot be written"
)]
pub struct Keygen {
    /// file to create (must not exist)
    #[argh(positional)]
    pub file: PathBuf,
}

/// Check that this host (and, with --to, the destination) can migrate.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "check",
    example = "haul check\nhaul check --to 10.0.0.2:7070 --key /etc/haul/key",
    note = "Prints one line per check: ok, FAIL with the reason, or note.\n\n\
            exit codes: 0 nothing failed; 2 bad arguments or key file; 3 a check failed (here or on\n\
            the destination)"
)]
pub struct Check {
    /// destination ADDR:PORT to check as well
    #[argh(option)]
    pub to: Option<String>,
    /// pre-shared key file for --to
    #[argh(option)]
    pub key: Option<PathBuf>,
    /// check the destination without a key
    #[argh(switch)]
    pub insecure: bool,
    /// criu binary (default: $HAUL_CRIU, else criu on PATH)
    #[argh(option)]
    pub criu: Option<PathBuf>,
    /// scratch directory (default /var/lib/haul)
    #[argh(option, default = "PathBuf::from(\"/var/lib/haul\")")]
    pub work_dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{IDLE_TIMEOUT, IDLE_TIMEOUT_MAX, IDLE_TIMEOUT_MIN};

    fn serve(extra: &[&str]) -> Result<Serve, String> {
        let mut args = vec!["--listen", "127.0.0.1:1", "--insecure"];
        args.extend_from_slice(extra);
        Serve::from_args(&["serve"], &args).map_err(|e| e.output)
    }

    #[test]
    fn idle_timeout_defaults_to_the_limit_and_takes_its_range() {
        assert_eq!(serve(&[]).unwrap().idle_timeout, IDLE_TIMEOUT.as_secs());
        for ok in [IDLE_TIMEOUT_MIN, IDLE_TIMEOUT_MAX] {
            let secs = ok.as_secs().to_string();
            assert_eq!(
                serve(&["--idle-timeout", &secs]).unwrap().idle_timeout,
                ok.as_secs()
            );
        }
        for bad in [
            IDLE_TIMEOUT_MIN.as_secs() - 1,
            IDLE_TIMEOUT_MAX.as_secs() + 1,
        ] {
            let e = serve(&["--idle-timeout", &bad.to_string()]).unwrap_err();
            assert!(e.contains("give whole seconds from 1 to 86400"), "{e}");
        }
        assert!(serve(&["--idle-timeout", "2.5"]).is_err());
    }

    /// `haul ARGS --help` as argh renders it, whitespace runs made single spaces.
    fn help(args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.push("--help");
        match Cli::from_args(&["haul"], &all) {
            Ok(_) => panic!("haul {args:?} --help parsed as a command"),
            Err(e) => {
                assert!(
                    e.status.is_ok(),
                    "haul {args:?} --help failed: {}",
                    e.output
                );
                e.output.split_whitespace().collect::<Vec<_>>().join(" ")
            }
        }
    }

    /// argh cannot format constants into help text; `haul serve --help` spells these out, and
    /// must say what the constants are.
    #[test]
    fn the_serve_help_states_the_timeouts() {
        use crate::limits::{COMMIT_TIMEOUT, HANDSHAKE_TIMEOUT, STOP_GRACE};
        let text = help(&["serve"]);
        for needed in [
            format!(
                "(default {}, from {} to {})",
                IDLE_TIMEOUT.as_secs(),
                IDLE_TIMEOUT_MIN.as_secs(),
                IDLE_TIMEOUT_MAX.as_secs()
            ),
            format!("the commit ({} s)", COMMIT_TIMEOUT.as_secs()),
            format!("the handshake ({} s)", HANDSHAKE_TIMEOUT.as_secs()),
            format!(
                "wait up to {} s for migrations in flight",
                STOP_GRACE.as_secs()
            ),
        ] {
            assert!(
                text.contains(&needed),
                "haul serve --help lacks {needed:?}:\n{text}"
            );
        }
    }

    /// Every command a user runs has examples and its exit codes in its help, each code with
    /// error.rs's number.
    #[test]
    fn every_user_command_has_examples_and_exit_codes() {
        use crate::error::Kind;
        for cmd in [
            &[][..],
            &["serve"],
            &["migrate"],
            &["migrate", "runc"],
            &["migrate", "pid"],
            &["inspect"],
            &["inspect", "runc"],
            &["keygen"],
            &["check"],
            &["recover"],
        ] {
            let text = help(cmd);
            assert!(
                text.contains("Examples: haul "),
                "haul {cmd:?}: no example:\n{text}"
            );
            assert!(
                text.contains("exit codes: 0 "),
                "haul {cmd:?}: no exit codes:\n{text}"
            );
        }
        let migrate = [
            (Kind::Usage, "bad arguments"),
            (Kind::Setup, "this host cannot"),
            (Kind::Auth, "authentication"),
            (Kind::Refused, "the destination refused before freezing"),
            (Kind::RolledBack, "failed and rolled back"),
            (Kind::InDoubt, "in doubt"),
            (Kind::Lost, "container lost"),
        ];
        for cmd in [&["migrate"][..], &["migrate", "runc"], &["migrate", "pid"]] {
            let text = help(cmd);
            for (kind, what) in migrate {
                let code = kind.exit_code().to_string();
                assert!(
                    text.contains(&format!("; {code} {what}")),
                    "haul {cmd:?} --help: exit {code} is not {what:?}:\n{text}"
                );
            }
        }
    }
}
