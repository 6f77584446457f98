//! `cargo xtask init-check`: the init files in init/ (OpenRC, SysV, systemd and the one config
//! file they share) parse, read HAUL_LISTEN and HAUL_KEY from that config, and start `haul
//! serve` with them. Runs without root, OpenRC or systemd running:
//! - the config uses only the NAME=value form that systemd's EnvironmentFile and sh agree on;
//! - `sh -n`, and `bash -n` / `busybox sh -n` where installed, on every shell file;
//! - OpenRC: the script is sourced with stub OpenRC helpers and a test config, and its
//!   `command_args` and `start_pre` are checked;
//! - SysV: start, status, start again, stop and status with a stub `haul` that records its
//!   arguments, and a start that must fail when the key is missing;
//! - systemd: `systemd-analyze verify` when it exists (any warning fails), on a copy whose
//!   ExecStart points at a stub, since verify insists that the binary exists.

use crate::util;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CONF: &str = "init/haul.conf";
const OPENRC: &str = "init/openrc/haul";
const SYSV: &str = "init/sysv/haul";
const SYSTEMD: &str = "init/systemd/haul.service";
/// Where every init file expects the config on a device.
const CONF_ON_DEVICE: &str = "/etc/haul/haul.conf";
const SETTINGS: [&str; 4] = ["HAUL_LISTEN", "HAUL_KEY", "HAUL_WORK_DIR", "HAUL_OPTS"];
/// The options the test config sets, word for word as haul must receive them after `serve`.
const TEST_OPTS: &str = "--keep-images --criu /usr/sbin/criu";

pub fn run(args: &[String]) -> Result<(), String> {
    if !args.is_empty() {
        return Err("usage: cargo xtask init-check".into());
    }
    let root = util::root();
    let tmp = root.join("target/xtask-init-check");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;

    check_conf(&read(&root.join(CONF))?)?;
    syntax(&root)?;
    for (file, text) in [
        (OPENRC, read(&root.join(OPENRC))?),
        (SYSV, read(&root.join(SYSV))?),
    ] {
        reads_settings(file, &text)?;
    }
    let unit = read(&root.join(SYSTEMD))?;
    for needed in [
        format!("EnvironmentFile={CONF_ON_DEVICE}"),
        "--listen ${HAUL_LISTEN}".to_string(),
        "--key ${HAUL_KEY}".to_string(),
    ] {
        if !unit.contains(&needed) {
            return Err(format!("{SYSTEMD}: does not contain {needed:?}"));
        }
    }

    let fx = Fixture::new(&tmp)?;
    openrc(&root, &fx)?;
    sysv(&root, &fx)?;
    systemd(&unit, &tmp)?;
    eprintln!("xtask: init-check: OpenRC, SysV and systemd files are consistent and work");
    Ok(())
}

/// Every line is blank, a comment, `NAME=word` or `NAME="words"`, with no `$`, backslash or
/// backquote; HAUL_LISTEN, HAUL_KEY, HAUL_WORK_DIR and HAUL_OPTS are all set.
fn check_conf(text: &str) -> Result<(), String> {
    let mut set = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| Err(format!("{CONF}:{}: {why}: {line:?}", n + 1));
        let Some((name, value)) = line.split_once('=') else {
            return bad("not NAME=value");
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return bad("the name is not an upper-case shell variable name");
        }
        if value.contains(['$', '\\', '`', '\'']) {
            return bad(
                "$, backslash, backquote and single quote mean different things to sh and systemd",
            );
        }
        let inner = match value.strip_prefix('"') {
            Some(rest) => match rest.strip_suffix('"') {
                Some(inner) => inner,
                None => return bad("an opening double quote without a closing one at the end"),
            },
            None => value,
        };
        if inner.contains('"') || (inner == value && value.contains(char::is_whitespace)) {
            return bad("a value with spaces must be one double-quoted string");
        }
        set.push(name);
    }
    match SETTINGS.iter().find(|s| !set.contains(s)) {
        Some(missing) => Err(format!("{CONF}: does not set {missing}")),
        None => Ok(()),
    }
}

/// `sh -n` (and `bash -n`, `busybox sh -n` where installed) on every shell file.
fn syntax(root: &Path) -> Result<(), String> {
    let mut shells: Vec<Vec<&str>> = vec![vec!["sh"]];
    if util::on_path("bash") {
        shells.push(vec!["bash"]);
    } else {
        eprintln!("xtask: init-check: bash not installed, skipping bash -n");
    }
    if util::on_path("busybox") {
        shells.push(vec!["busybox", "sh"]);
    } else {
        eprintln!("xtask: init-check: busybox not installed, skipping busybox sh -n");
    }
    for shell in &shells {
        for file in [CONF, OPENRC, SYSV] {
            let mut cmd = Command::new(shell[0]);
            cmd.args(&shell[1..]).arg("-n").arg(root.join(file));
            expect_quiet_success(&mut cmd, &format!("{} -n {file}", shell.join(" ")))?;
        }
    }
    Ok(())
}

/// The script sources the shared config and uses HAUL_LISTEN and HAUL_KEY.
fn reads_settings(file: &str, text: &str) -> Result<(), String> {
    if !text.contains(CONF_ON_DEVICE) {
        return Err(format!("{file}: does not read {CONF_ON_DEVICE}"));
    }
    if !text.contains(". \"$HAUL_CONF\"") {
        return Err(format!("{file}: does not source \"$HAUL_CONF\""));
    }
    for name in ["HAUL_LISTEN", "HAUL_KEY"] {
        if !text.contains(&format!("${name}")) && !text.contains(&format!("${{{name}}}")) {
            return Err(format!("{file}: does not use {name}"));
        }
    }
    Ok(())
}

/// A test config, a key file and a stub `haul` that writes its arguments, one per line, to
/// `args` and then waits for SIGTERM.
struct Fixture {
    dir: PathBuf,
    conf: PathBuf,
    conf_without_key: PathBuf,
    key: PathBuf,
    work: PathBuf,
    bin: PathBuf,
    args: PathBuf,
}

impl Fixture {
    fn new(dir: &Path) -> Result<Self, String> {
        let fx = Fixture {
            dir: dir.to_path_buf(),
            conf: dir.join("haul.conf"),
            conf_without_key: dir.join("haul-no-key.conf"),
            key: dir.join("key"),
            work: dir.join("work"),
            bin: dir.join("haul"),
            args: dir.join("args"),
        };
        write(&fx.key, "not a real key\n")?;
        let conf = |key: &Path| {
            format!(
                "HAUL_LISTEN=127.0.0.1:7071\nHAUL_KEY={}\nHAUL_WORK_DIR={}\nHAUL_OPTS=\"{TEST_OPTS}\"\n",
                key.display(),
                fx.work.display()
            )
        };
        write(&fx.conf, &conf(&fx.key))?;
        write(&fx.conf_without_key, &conf(&dir.join("missing-key")))?;
        write(
            &fx.bin,
            &format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" >'{}'\ntrap 'exit 0' TERM\nwhile :; do sleep 1; done\n",
                fx.args.display()
            ),
        )?;
        let mut chmod = Command::new("chmod");
        chmod.arg("0755").arg(&fx.bin);
        expect_quiet_success(&mut chmod, "chmod stub")?;
        Ok(fx)
    }

    /// The words haul must receive.
    fn expected_args(&self) -> Vec<String> {
        let mut v: Vec<String> = ["serve", "--listen", "127.0.0.1:7071", "--key"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.push(self.key.display().to_string());
        v.push("--work-dir".into());
        v.push(self.work.display().to_string());
        v.extend(TEST_OPTS.split(' ').map(String::from));
        v
    }
}

/// Sources the OpenRC script as openrc-run would (after stub helpers), prints `command_args` and
/// runs `start_pre`, with the good config and with one whose key file is missing.
fn openrc(root: &Path, fx: &Fixture) -> Result<(), String> {
    let harness = fx.dir.join("openrc-harness.sh");
    write(
        &harness,
        &format!(
            "RC_SVCNAME=haul\n\
             eerror() {{ echo \"eerror: $*\" >&2; }}\n\
             checkpath() {{ echo \"checkpath $*\"; }}\n\
             . '{}'\n\
             echo \"command=$command\"\n\
             echo \"pidfile=$pidfile\"\n\
             echo \"background=$command_background\"\n\
             set -- $command_args\n\
             printf 'arg=%s\\n' \"$@\"\n\
             start_pre\n",
            root.join(OPENRC).display()
        ),
    )?;
    let run = |conf: &Path| {
        Command::new("sh")
            .arg(&harness)
            .env("HAUL_CONF", conf)
            .env("HAUL_BIN", &fx.bin)
            .output()
            .map_err(|e| format!("sh {}: {e}", harness.display()))
    };
    let out = run(&fx.conf)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{OPENRC}: start_pre failed with a good config:\n{}",
            both(&out)
        ));
    }
    let args: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("arg="))
        .map(String::from)
        .collect();
    if args != fx.expected_args() {
        return Err(format!(
            "{OPENRC}: command_args are {args:?}, expected {:?}",
            fx.expected_args()
        ));
    }
    for line in [
        format!("command={}", fx.bin.display()),
        "pidfile=/run/haul.pid".to_string(),
        "background=true".to_string(),
        format!("checkpath --directory --mode 0700 {}", fx.work.display()),
    ] {
        if !stdout.lines().any(|l| l == line) {
            return Err(format!("{OPENRC}: expected {line:?} in:\n{stdout}"));
        }
    }
    let out = run(&fx.conf_without_key)?;
    if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("haul keygen") {
        return Err(format!(
            "{OPENRC}: start_pre must refuse a missing key and say how to make one:\n{}",
            both(&out)
        ));
    }
    Ok(())
}

/// Starts, queries and stops the SysV script with the stub haul.
fn sysv(root: &Path, fx: &Fixture) -> Result<(), String> {
    let pidfile = fx.dir.join("haul.pid");
    let script = root.join(SYSV);
    let run = |action: &str, conf: &Path| -> Result<Output, String> {
        Command::new("sh")
            .arg(&script)
            .arg(action)
            .env("HAUL_CONF", conf)
            .env("HAUL_BIN", &fx.bin)
            .env("HAUL_PIDFILE", &pidfile)
            .env("HAUL_LOGFILE", fx.dir.join("haul.log"))
            .env("HAUL_STOP_TIMEOUT", "5")
            .output()
            .map_err(|e| format!("sh {SYSV} {action}: {e}"))
    };
    let expect = |action: &str, conf: &Path, code: i32| -> Result<Output, String> {
        let out = run(action, conf)?;
        if out.status.code() == Some(code) {
            Ok(out)
        } else {
            Err(format!(
                "{SYSV} {action}: exit {:?}, expected {code}:\n{}",
                out.status.code(),
                both(&out)
            ))
        }
    };

    expect("status", &fx.conf, 3)?;
    let started = expect("start", &fx.conf, 0);
    // Whatever happens next, do not leave the stub running.
    let result = started.and_then(|_| {
        let args = read(&fx.args)?;
        let args: Vec<String> = args.lines().map(String::from).collect();
        if args != fx.expected_args() {
            return Err(format!(
                "{SYSV}: haul got {args:?}, expected {:?}",
                fx.expected_args()
            ));
        }
        expect("status", &fx.conf, 0)?;
        let again = expect("start", &fx.conf, 0)?;
        if !String::from_utf8_lossy(&again.stdout).contains("already running") {
            return Err(format!(
                "{SYSV}: a second start must see the running haul:\n{}",
                both(&again)
            ));
        }
        Ok(())
    });
    let stopped = expect("stop", &fx.conf, 0);
    result?;
    stopped?;
    expect("status", &fx.conf, 3)?;
    let out = expect("start", &fx.conf_without_key, 1)?;
    if !String::from_utf8_lossy(&out.stderr).contains("haul keygen") {
        return Err(format!(
            "{SYSV}: a missing key must say how to make one:\n{}",
            both(&out)
        ));
    }
    if pidfile.exists() {
        return Err(format!("{SYSV}: a failed start left {}", pidfile.display()));
    }
    Ok(())
}

/// `systemd-analyze verify` on a copy of the unit whose ExecStart names an existing stub.
fn systemd(unit: &str, tmp: &Path) -> Result<(), String> {
    if !util::on_path("systemd-analyze") {
        eprintln!(
            "xtask: init-check: systemd-analyze not installed, skipping `systemd-analyze verify`"
        );
        return Ok(());
    }
    let dir = tmp.join("systemd");
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let stub = dir.join("haul");
    write(&stub, "#!/bin/sh\n")?;
    let mut chmod = Command::new("chmod");
    chmod.arg("0755").arg(&stub);
    expect_quiet_success(&mut chmod, "chmod stub")?;
    let copy = dir.join("haul.service");
    write(
        &copy,
        &unit.replace("/usr/local/bin/haul", &stub.display().to_string()),
    )?;
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify").arg(&copy);
    // verify exits 0 after unknown keys or bad values ("..., ignoring"), so any output fails.
    expect_quiet_success(&mut verify, &format!("systemd-analyze verify {SYSTEMD}"))
}

/// Runs `cmd`; it must exit 0 and print nothing.
fn expect_quiet_success(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if out.status.success() && out.stdout.is_empty() && out.stderr.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: {}:\n{}", out.status, both(&out)))
    }
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::check_conf;

    #[test]
    fn config_form_that_sh_and_systemd_agree_on() {
        let base =
            "HAUL_LISTEN=0.0.0.0:7070\nHAUL_KEY=/etc/haul/key\nHAUL_WORK_DIR=/var/lib/haul\n";
        assert!(check_conf(&format!("# c\n\n{base}HAUL_OPTS=\n")).is_ok());
        assert!(check_conf(&format!("{base}HAUL_OPTS=\"--keep-images -v\"\n")).is_ok());
        for bad in [
            "HAUL_OPTS=--keep-images -v",
            "HAUL_OPTS=$HOME",
            "HAUL_OPTS='x'",
            "HAUL_OPTS=\"a",
            "export HAUL_OPTS=",
            "haul_opts=",
        ] {
            assert!(check_conf(&format!("{base}{bad}\n")).is_err(), "{bad}");
        }
        assert!(check_conf(base).unwrap_err().contains("HAUL_OPTS"));
    }
}
