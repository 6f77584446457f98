//! `haul serve`: listen, limit concurrent work, hand each connection to a session thread; reload
//! the key on SIGHUP; on SIGTERM or SIGINT stop accepting and let migrations in flight end.

use super::session::{self, SessionConfig};
use crate::error::{Context, Error, Kind, Result};
use crate::limits::PENDING_HANDSHAKES;
use crate::service::{PidFile, Request, Signals};
use crate::transfer::Key;
use rustix::event::{poll, PollFd, PollFlags};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::limits::STOP_GRACE;

/// How often a stop looks at the migrations counter while it waits.
const STOP_POLL: Duration = Duration::from_millis(200);

/// Pause after an accept error other than "no connection after all" (EMFILE, ENOBUFS): the
/// listener stays readable, and without it the loop would spin and flood the log.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Counts a slot for as long as it lives.
pub struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// Takes a slot if fewer than `max` are taken.
    pub fn take(counter: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        let mut cur = counter.load(Ordering::Acquire);
        loop {
            if cur >= max {
                return None;
            }
            match counter.compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(Slot(counter.clone())),
                Err(now) => cur = now,
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Limits {
    pub pending: Arc<AtomicUsize>,
    pub migrations: Arc<AtomicUsize>,
    /// Set once a stop has begun: a session may check it to refuse a migration it has not
    /// started yet (the source is then untouched) instead of starting one the stop will wait for.
    pub stopping: AtomicBool,
}

impl Limits {
    pub fn new() -> Limits {
        Limits {
            pending: Arc::new(AtomicUsize::new(0)),
            migrations: Arc::new(AtomicUsize::new(0)),
            stopping: AtomicBool::new(false),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new()
    }
}

/// What `haul serve` needs besides the session configuration.
pub struct Options {
    /// The `--key` file, read again on SIGHUP; `None` with `--insecure`.
    pub key_file: Option<PathBuf>,
    /// `--pid-file`: written once listening, removed on exit.
    pub pid_file: Option<PathBuf>,
}

/// Serves until SIGTERM or SIGINT; see [`run`].
pub fn serve(listener: TcpListener, cfg: SessionConfig, opts: &Options) -> Result<()> {
    // First, before any thread starts, so that every thread has the signals blocked.
    let signals = Signals::start().ctx(Kind::Setup, "setting up signal handling")?;
    if let Err(e) = raise_open_files_limit() {
        log::warn!("{e}");
    }
    run(
        listener,
        cfg,
        opts,
        &signals,
        &Arc::new(Limits::new()),
        STOP_GRACE,
    )
}

/// Raises the soft limit on open descriptors to the hard one (Ok: the limit now). haul's
/// userfaultfd handler holds a descriptor per restored task, and the kernel installs one more
/// in serve for each fork of a task while its memory is filled: at the soft limit (often
/// 1024) it cannot, and the fill fails.
fn raise_open_files_limit() -> std::result::Result<u64, String> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    match (limit.current, limit.maximum) {
        (Some(soft), Some(hard)) if soft < hard => {
            let raised = Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            setrlimit(Resource::Nofile, raised)
                .map_err(|e| format!("raising the open files limit from {soft} to {hard}: {e}"))?;
            log::debug!("open files limit raised from {soft} to {hard}");
            Ok(hard)
        }
        (soft, _) => Ok(soft.unwrap_or(u64::MAX)),
    }
}

/// Accepts connections until a stop request; then waits up to `grace` for the migrations in
/// flight. `Ok` when none was left; an error (exit 1) when some were cut off by the end of the
/// wait or by a second stop request.
pub fn run(
    listener: TcpListener,
    cfg: SessionConfig,
    opts: &Options,
    signals: &Signals,
    limits: &Arc<Limits>,
    grace: Duration,
) -> Result<()> {
    // Polled, so accept must not block when a connection went away between poll and accept.
    listener
        .set_nonblocking(true)
        .ctx(Kind::Other, "listening socket")?;
    let addr = listener.local_addr().ctx(Kind::Other, "listener address")?;
    std::fs::create_dir_all(&cfg.work_root).ctx(
        Kind::Setup,
        format!("creating work directory {}", cfg.work_root.display()),
    )?;
    log::info!(
        "listening on {addr} ({}), work directory {}",
        if cfg.key.is_some() {
            "key required"
        } else {
            "INSECURE: no key"
        },
        cfg.work_root.display()
    );
    let _pid_file = match &opts.pid_file {
        Some(p) => Some(PidFile::write(p).map_err(Error::setup)?),
        None => None,
    };
    let mut cfg = Arc::new(cfg);
    loop {
        let mut fds = [
            PollFd::new(&listener, PollFlags::IN),
            PollFd::new(signals, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::other(format!("poll on the listening socket: {e}"))),
        }
        let [conn, sig] = fds.map(|f| !f.revents().is_empty());
        if sig {
            let requests = signals
                .read()
                .map_err(|e| Error::other(format!("signals: {e}")))?;
            let mut requests = requests.into_iter();
            while let Some(r) = requests.next() {
                match r {
                    Request::Reload => {
                        if let Some(new) = reload(&cfg, opts.key_file.as_deref()) {
                            cfg = Arc::new(new);
                        }
                    }
                    Request::Stop(name) => {
                        drop(listener);
                        return drain(name, requests.collect(), signals, limits, grace);
                    }
                }
            }
        }
        if conn {
            accept(&listener, &cfg, limits);
        }
    }
}

/// Accepts one connection and starts its session thread.
fn accept(listener: &TcpListener, cfg: &Arc<SessionConfig>, limits: &Arc<Limits>) {
    let stream = match listener.accept() {
        Ok((s, _)) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::ConnectionAborted
            ) =>
        {
            return
        }
        Err(e) => {
            log::warn!("accept: {e}");
            std::thread::sleep(ACCEPT_ERROR_PAUSE);
            return;
        }
    };
    // Linux does not pass O_NONBLOCK from the listener to accepted sockets; say so anyway,
    // since sessions rely on blocking reads with timeouts.
    if let Err(e) = stream.set_nonblocking(false) {
        log::warn!("accept: {e}");
        return;
    }
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let Some(pending) = Slot::take(&limits.pending, PENDING_HANDSHAKES) else {
        log::warn!("{peer}: refused: {PENDING_HANDSHAKES} connections already in the handshake");
        return;
    };
    let cfg = cfg.clone();
    let limits = limits.clone();
    let spawned = std::thread::Builder::new()
        .name("haul-session".into())
        .spawn(move || session::run(stream, &peer, &cfg, &limits, pending));
    if let Err(e) = spawned {
        log::error!("cannot start a session thread: {e}");
    }
}

/// SIGHUP: the configuration for new connections with the key file read again, or `None` (and
/// a log line saying why) to keep the current one. Sessions already running keep their key.
fn reload(cfg: &SessionConfig, key_file: Option<&Path>) -> Option<SessionConfig> {
    let Some(path) = key_file else {
        log::info!("SIGHUP: running with --insecure, no key to reload");
        return None;
    };
    let key = match Key::load(path) {
        Ok(k) => k,
        Err(e) => {
            log::error!("SIGHUP: {e}; keeping the current key");
            return None;
        }
    };
    log::info!(
        "SIGHUP: key reloaded from {}; new connections use it, migrations in progress keep theirs",
        path.display()
    );
    Some(with_key(cfg, key))
}

/// A copy of `cfg` with another key.
fn with_key(cfg: &SessionConfig, key: Key) -> SessionConfig {
    SessionConfig {
        key: Some(key),
        criu: cfg.criu.clone(),
        work_root: cfg.work_root.clone(),
        keep_images: cfg.keep_images,
        runc_root: cfg.runc_root.clone(),
        bundle_root: cfg.bundle_root.clone(),
        stdio_dir: cfg.stdio_dir.clone(),
        runc: cfg.runc.clone(),
        idle_timeout: cfg.idle_timeout,
        commit_timeout: cfg.commit_timeout,
    }
}

/// After a stop request: waits up to `grace` for the migrations counter to reach zero. A second
/// stop request (`queued` holds those read together with the first) ends the wait at once.
/// Returning lets the process exit; a session still running then loses its sockets, so its CRIU
/// aborts (a held restore is killed) and its source rolls back.
fn drain(
    name: &str,
    queued: Vec<Request>,
    signals: &Signals,
    limits: &Limits,
    grace: Duration,
) -> Result<()> {
    limits.stopping.store(true, Ordering::Release);
    let deadline = Instant::now() + grace;
    let mut announced = false;
    let mut requests = queued;
    loop {
        let n = limits.migrations.load(Ordering::Acquire);
        if n == 0 {
            log::info!("{name}: stopped");
            return Ok(());
        }
        if !announced {
            announced = true;
            log::info!(
                "{name}: no longer accepting; waiting up to {} s for {n} migration(s) in flight \
                 (signal again to abort them now)",
                grace.as_secs()
            );
        }
        for r in requests.drain(..) {
            match r {
                Request::Stop(again) => return Err(cut_off(n, &format!("on a second {again}"))),
                Request::Reload => log::info!("SIGHUP: ignored while stopping"),
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(cut_off(n, &format!("after waiting {} s", grace.as_secs())));
        }
        let wait = (deadline - now).min(STOP_POLL);
        requests = signals
            .wait(Some(wait))
            .map_err(|e| Error::other(format!("signals: {e}")))?;
    }
}

fn cut_off(n: usize, when: &str) -> Error {
    Error::other(format!(
        "stopped {when} with {n} migration(s) still in flight: their CRIU aborts as haul exits \
         (held restores are killed, sources roll back); see --work-dir for what they left"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The soft limit on open descriptors ends at the hard one.
    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_one() {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let before = getrlimit(Resource::Nofile);
        if let Some(hard) = before.maximum {
            // One under the hard limit, harmless to the other tests running meanwhile.
            let lower = Rlimit {
                current: Some(hard - 1),
                maximum: Some(hard),
            };
            setrlimit(Resource::Nofile, lower).unwrap();
        }
        let now = raise_open_files_limit().unwrap();
        let limit = getrlimit(Resource::Nofile);
        assert_eq!(limit.current, limit.maximum);
        assert_eq!(limit.current, Some(now));
    }
    use crate::service::encode;
    use rustix::process::Signal;
    use std::os::fd::OwnedFd;

    #[test]
    fn the_help_note_states_the_stop_grace() {
        // cli.rs cannot format a constant into argh's note; it says "80 s".
        assert_eq!(STOP_GRACE, Duration::from_secs(80));
        assert!(STOP_GRACE > crate::limits::COMMIT_TIMEOUT);
    }

    #[test]
    fn slots_are_bounded_and_released() {
        let c = Arc::new(AtomicUsize::new(0));
        let a = Slot::take(&c, 2).unwrap();
        let _b = Slot::take(&c, 2).unwrap();
        assert!(Slot::take(&c, 2).is_none());
        drop(a);
        assert!(Slot::take(&c, 2).is_some());
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("haul-serve-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn config(dir: &Path, key: Option<Key>) -> SessionConfig {
        SessionConfig {
            key,
            criu: "criu".into(),
            work_root: dir.join("work"),
            keep_images: false,
            runc_root: dir.join("runc"),
            bundle_root: dir.join("bundles"),
            stdio_dir: dir.join("stdio"),
            runc: "runc".into(),
            idle_timeout: crate::limits::IDLE_TIMEOUT,
            commit_timeout: crate::limits::COMMIT_TIMEOUT,
        }
    }

    /// Runs the accept loop in a thread, driven by a pipe standing in for the signal thread.
    struct Running {
        tx: OwnedFd,
        limits: Arc<Limits>,
        done: std::sync::mpsc::Receiver<Result<()>>,
    }

    fn start(dir: &Path, pid_file: Option<PathBuf>, grace: Duration) -> Running {
        let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let cfg = config(dir, None);
        let limits = Arc::new(Limits::new());
        let (done_tx, done) = std::sync::mpsc::channel();
        let l = limits.clone();
        std::thread::spawn(move || {
            let opts = Options {
                key_file: None,
                pid_file,
            };
            let _ = done_tx.send(run(
                listener,
                cfg,
                &opts,
                &Signals::from_pipe(rx),
                &l,
                grace,
            ));
        });
        Running { tx, limits, done }
    }

    impl Running {
        fn signal(&self, sig: Signal) {
            rustix::io::write(&self.tx, &[encode(sig)]).unwrap();
        }
        fn result(&self, within: Duration) -> Option<Result<()>> {
            self.done.recv_timeout(within).ok()
        }
    }

    #[test]
    fn sigterm_with_nothing_in_flight_stops_and_removes_the_pid_file() {
        let dir = scratch("idle");
        let pid = dir.join("haul.pid");
        let r = start(&dir, Some(pid.clone()), Duration::from_secs(60));
        let end = Instant::now() + Duration::from_secs(5);
        while !pid.exists() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(pid.exists(), "pid file not written");
        r.signal(Signal::HUP); // --insecure: nothing to reload, keeps serving
        r.signal(Signal::TERM);
        r.result(Duration::from_secs(5)).unwrap().unwrap();
        assert!(!pid.exists(), "pid file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stop_waits_for_a_migration_in_flight() {
        let dir = scratch("drain");
        let r = start(&dir, None, Duration::from_secs(60));
        let slot = Slot::take(&r.limits.migrations, 4).unwrap();
        r.signal(Signal::TERM);
        assert!(
            r.result(Duration::from_millis(300)).is_none(),
            "did not wait"
        );
        assert!(r.limits.stopping.load(Ordering::Acquire));
        drop(slot);
        r.result(Duration::from_secs(5)).unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_signal_or_the_end_of_the_grace_cuts_the_wait_short() {
        let dir = scratch("cut");
        let r = start(&dir, None, Duration::from_secs(60));
        let _slot = Slot::take(&r.limits.migrations, 4).unwrap();
        r.signal(Signal::TERM);
        r.signal(Signal::INT);
        let err = r.result(Duration::from_secs(5)).unwrap().unwrap_err();
        assert!(
            err.message.contains("on a second SIGINT with 1 migration"),
            "{err}"
        );
        assert_eq!(err.kind.exit_code(), 1);

        let r = start(&dir, None, Duration::from_millis(100));
        let _slot = Slot::take(&r.limits.migrations, 4).unwrap();
        r.signal(Signal::TERM);
        let err = r.result(Duration::from_secs(5)).unwrap().unwrap_err();
        assert!(err.message.contains("after waiting 0 s"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reload_takes_a_good_key_and_keeps_the_old_one_otherwise() {
        let dir = scratch("reload");
        let old = Key::generate().unwrap();
        let cfg = config(&dir, Some(old.clone()));
        let file = dir.join("key");
        let new = Key::generate().unwrap();
        let _ = std::fs::remove_file(&file);
        new.write_new(&file).unwrap();
        let got = reload(&cfg, Some(&file)).unwrap();
        assert_eq!(got.key.unwrap().0, new.0);
        assert_eq!(got.work_root, cfg.work_root);

        std::fs::write(&file, "not a key\n").unwrap();
        assert!(reload(&cfg, Some(&file)).is_none());
        std::fs::remove_file(&file).unwrap();
        assert!(reload(&cfg, Some(&file)).is_none());
        assert!(reload(&cfg, None).is_none());
        assert_eq!(cfg.key.unwrap().0, old.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
