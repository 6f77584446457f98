//! `haul serve` under an init system: pid file, key reload on SIGHUP, stop on SIGTERM, an
//! inherited listening socket (`--fd N`), and `--syslog` (to /dev/log, or stderr without it).
//! Everything runs on 127.0.0.1 with ports the kernel picks; `haul check --to` plays the source.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use haul_e2e::*;
use rustix::process::Signal;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long `haul serve` may take to exit after SIGTERM with nothing in flight.
const STOP_WITHIN: Duration = Duration::from_secs(5);

struct Setup {
    _lab: Lab,
    dir: TempDir,
    haul: PathBuf,
}

/// Root and CRIU: `haul serve` needs criu to start and `haul check` runs it.
fn setup(tag: &str) -> Option<Setup> {
    let lab = Lab::require_or_skip(&["criu"]).expect("lab requirements")?;
    Some(Setup {
        _lab: lab,
        dir: TempDir::new(tag).unwrap(),
        haul: haul_bin().unwrap(),
    })
}

impl Setup {
    fn serve_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.haul);
        cmd.arg("serve")
            .arg("--work-dir")
            .arg(self.dir.join("dst-work"))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn keygen(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        run(Command::new(&self.haul).arg("keygen").arg(&p)).unwrap();
        p
    }

    /// `haul check --to ADDR` with a key file (or `--insecure`).
    fn check(&self, addr: &str, key: Option<&Path>) -> Output {
        let mut cmd = Command::new(&self.haul);
        cmd.args(["check", "--to", addr, "--work-dir"])
            .arg(self.dir.join("src-work"))
            .stdin(Stdio::null());
        match key {
            Some(k) => cmd.arg("--key").arg(k),
            None => cmd.arg("--insecure"),
        };
        let out = cmd.output().unwrap();
        eprintln!(
            "haul check: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// The address from `listening on 127.0.0.1:PORT (...)`.
fn listening_addr(serve: &ChildWithLog) -> String {
    let line = serve
        .wait_for_line("listening on ", Duration::from_secs(10))
        .unwrap();
    let rest = &line[line.find("listening on ").unwrap() + "listening on ".len()..];
    rest.split_whitespace().next().unwrap().to_string()
}

fn stop(serve: &mut ChildWithLog) -> ExitStatus {
    serve.guard().signal(Signal::TERM).unwrap();
    serve
        .guard()
        .wait_timeout(STOP_WITHIN)
        .unwrap()
        .unwrap_or_else(|| panic!("haul serve still runs {STOP_WITHIN:?} after SIGTERM"))
}

fn wait_for_file(path: &Path, timeout: Duration) -> String {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            return s;
        }
        assert!(Instant::now() < end, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Replaces a file the way an operator's tooling does: a new file renamed over the old one.
fn replace(path: &Path, with: &Path) {
    let tmp = path.with_extension("new");
    std::fs::copy(with, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn pid_file_key_reload_on_sighup_and_clean_stop_on_sigterm() {
    let Some(s) = setup("svc-reload") else { return };
    let key_a = s.keygen("key-a");
    let key_b = s.keygen("key-b");
    let key = s.dir.join("key");
    replace(&key, &key_a);
    let pid_file = s.dir.join("haul.pid");
    let mut cmd = s.serve_cmd(&["--listen", "127.0.0.1:0", "--key"]);
    cmd.arg(&key).arg("--pid-file").arg(&pid_file);
    let mut serve = ChildWithLog::spawn("serve", &mut cmd).unwrap();
    let addr = listening_addr(&serve);

    assert_eq!(
        wait_for_file(&pid_file, Duration::from_secs(5)),
        format!("{}\n", serve.pid())
    );
    assert!(
        s.check(&addr, Some(&key_a)).status.success(),
        "key A before the reload"
    );

    replace(&key, &key_b);
    serve.guard().signal(Signal::HUP).unwrap();
    serve
        .wait_for_line("SIGHUP: key reloaded", Duration::from_secs(5))
        .unwrap();
    assert!(
        s.check(&addr, Some(&key_b)).status.success(),
        "key B after the reload"
    );
    let old = s.check(&addr, Some(&key_a));
    assert!(!old.status.success(), "the old key still works");
    let report = String::from_utf8_lossy(&old.stdout);
    assert!(
        report.contains("FAIL  destination: connection and authentication"),
        "{report}"
    );

    // A bad key file on SIGHUP is reported and the key in use stays.
    std::fs::write(&key, "not a key\n").unwrap();
    serve.guard().signal(Signal::HUP).unwrap();
    serve
        .wait_for_line("keeping the current key", Duration::from_secs(5))
        .unwrap();
    assert!(
        s.check(&addr, Some(&key_b)).status.success(),
        "key B after a bad reload"
    );

    let status = stop(&mut serve);
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    serve
        .wait_for_line("SIGTERM: stopped", Duration::from_secs(1))
        .unwrap();
    assert!(!pid_file.exists(), "pid file left behind");
}

#[test]
fn serves_on_an_inherited_listening_socket() {
    let Some(s) = setup("svc-fd") else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let n = listener.as_raw_fd();
    // As an init system does: the socket survives exec. Other tests of this binary spawning at
    // the same moment may inherit it too; haul marks inherited descriptors close-on-exec at start.
    rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::empty()).unwrap();
    let mut cmd = s.serve_cmd(&["--insecure", "--fd", &n.to_string()]);
    let spawned = ChildWithLog::spawn("serve-fd", &mut cmd);
    drop(listener);
    let mut serve = spawned.unwrap();
    assert_eq!(listening_addr(&serve), addr);
    assert!(
        s.check(&addr, None).status.success(),
        "check over the inherited socket"
    );
    assert_eq!(stop(&mut serve).code(), Some(0));
}

#[test]
fn a_descriptor_that_is_not_a_listening_socket_is_refused() {
    let Some(s) = setup("svc-badfd") else { return };
    // stdin is /dev/null here: not a socket.
    let out = s.serve_cmd(&["--insecure", "--fd", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--fd 0: descriptor 0 is not a socket"),
        "{err}"
    );

    let out = s
        .serve_cmd(&["--insecure", "--fd", "0", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// With /dev/log, `--syslog` keeps stderr free of log lines; without it (as on the lab machine),
/// haul says so once and logs to stderr.
#[test]
fn syslog_or_its_fallback_to_stderr() {
    let Some(s) = setup("svc-syslog") else { return };
    let pid_file = s.dir.join("haul.pid");
    let mut cmd = s.serve_cmd(&["--insecure", "--syslog", "--listen", "127.0.0.1:0"]);
    cmd.arg("--pid-file").arg(&pid_file);
    let mut serve = ChildWithLog::spawn("serve-syslog", &mut cmd).unwrap();
    wait_for_file(&pid_file, Duration::from_secs(10));
    if Path::new("/dev/log").exists() {
        // The pid file is written after the "listening on" record.
        let lines = serve.lines();
        assert!(
            lines.is_empty(),
            "log lines on stderr with --syslog: {lines:?}"
        );
    } else {
        eprintln!("no /dev/log on this machine: checking the fallback to stderr");
        serve
            .wait_for_line("cannot log to syslog at /dev/log", Duration::from_secs(1))
            .unwrap();
        serve
            .wait_for_line("listening on", Duration::from_secs(1))
            .unwrap();
    }
    assert_eq!(stop(&mut serve).code(), Some(0));
}

/// The real syslog path, whatever this machine has: in a private mount namespace, a tmpfs on
/// /dev holds a /dev/log that leads to a datagram socket this test reads.
#[test]
fn syslog_records_reach_dev_log() {
    let Some(s) = setup("svc-devlog") else { return };
    Lab::require(&["unshare", "mount"]).expect("unshare and mount");
    let sock = s.dir.join("log");
    let daemon = UnixDatagram::bind(&sock).unwrap();
    daemon
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let pid_file = s.dir.join("haul.pid");
    let script =
        "mount -t tmpfs haul-test-dev /dev && ln -s \"$1\" /dev/log && shift && exec \"$@\"";
    let mut cmd = Command::new(find_tool("unshare").unwrap());
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(&sock)
    .arg(&s.haul)
    .args(["serve", "--insecure", "--syslog", "--listen", "127.0.0.1:0"])
    .arg("--pid-file")
    .arg(&pid_file)
    .arg("--work-dir")
    .arg(s.dir.join("dst-work"))
    .stdin(Stdio::null());
    let mut serve = ChildWithLog::spawn("serve-devlog", &mut cmd).unwrap();
    let pid = serve.pid();

    let mut buf = [0u8; 4096];
    let n = daemon.recv(&mut buf).expect("a syslog record");
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        first.starts_with(&format!("<30>haul[{pid}]: listening on 127.0.0.1:")),
        "{first}"
    );
    assert_eq!(
        wait_for_file(&pid_file, Duration::from_secs(5)),
        format!("{pid}\n")
    );
    assert_eq!(stop(&mut serve).code(), Some(0));
    let n = daemon.recv(&mut buf).expect("the stop record");
    assert_eq!(
        String::from_utf8_lossy(&buf[..n]),
        format!("<30>haul[{pid}]: SIGTERM: stopped")
    );
    let lines = serve.lines();
    assert!(
        lines.is_empty(),
        "output on stderr with --syslog: {lines:?}"
    );
}

/// `haul check --to` names the cipher the frames are sealed with: AEGIS-128L when both sides
/// have AES instructions, ChaCha20-Poly1305 with a note when the destination does not offer it
/// (HAUL_CIPHER=chacha20-poly1305 on serve plays a destination without AES).
#[test]
fn check_names_the_negotiated_cipher() {
    let Some(s) = setup("svc-cipher") else { return };
    let key = s.keygen("key");
    let aes_here = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .any(|l| {
            // x86_64 "flags", aarch64 "Features"
            (l.starts_with("flags") || l.starts_with("Features"))
                && l.split_whitespace().any(|f| f == "aes")
        });
    for (serve_env, want) in [
        (
            None,
            if aes_here {
                "AEGIS-128L"
            } else {
                "ChaCha20-Poly1305"
            },
        ),
        (Some("chacha20-poly1305"), "ChaCha20-Poly1305"),
    ] {
        let mut cmd = s.serve_cmd(&["--listen", "127.0.0.1:0", "--key"]);
        cmd.arg(&key);
        if let Some(v) = serve_env {
            cmd.env("HAUL_CIPHER", v);
        }
        let mut serve = ChildWithLog::spawn("serve-cipher", &mut cmd).unwrap();
        let addr = listening_addr(&serve);
        let out = s.check(&addr, Some(&key));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains(&format!("key verified, frames sealed with {want}")),
            "{serve_env:?}: {text}"
        );
        // The note says why the slower cipher was chosen, where this CPU could do better.
        assert_eq!(
            text.contains("note  destination: cipher: ChaCha20-Poly1305, not AEGIS-128L"),
            aes_here && want == "ChaCha20-Poly1305",
            "{serve_env:?}: {text}"
        );
        assert_eq!(stop(&mut serve).code(), Some(0));
    }
}
