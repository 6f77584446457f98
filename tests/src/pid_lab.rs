//! Two hosts (network namespaces) for `haul migrate pid` end-to-end tests: `haul serve` in
//! "dst", `haul migrate pid` from "src", with real CRIU. Shared by migrate_pid, migrate_lazy
//! and precopy.

// Test support: a lab that cannot be set up is a failed test, said with the reason.
#![allow(clippy::expect_used, clippy::panic)]

use crate::{haul_bin, run, ChildWithLog, Lab, NetnsPair, Side, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The lab of one test; `None` from [`PidLab::create`] means the lab tools are missing (the
/// test is skipped, as the other e2e tests do).
pub struct PidLab {
    pub lab: Lab,
    pub net: NetnsPair,
    pub dir: TempDir,
    pub haul: PathBuf,
    port: u16,
}

impl PidLab {
    /// Namespaces and a directory named after `tag`; `haul serve` will listen on `port`.
    pub fn create(tag: &str, port: u16) -> Option<PidLab> {
        let mut tools = Lab::NET_TOOLS.to_vec();
        tools.push("criu");
        let lab = Lab::require_or_skip(&tools).expect("lab requirements")?;
        let net = NetnsPair::create(tag).expect("network namespaces");
        let dir = TempDir::new(tag).expect("test directory");
        let haul = haul_bin().expect("haul binary");
        Some(PidLab {
            lab,
            net,
            dir,
            haul,
            port,
        })
    }

    /// A new key file `name` in the test directory.
    pub fn keygen(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        run(Command::new(&self.haul).arg("keygen").arg(&p)).expect("haul keygen");
        p
    }

    /// The destination's ADDR:PORT.
    pub fn dst(&self) -> String {
        format!("{}:{}", self.net.dst_addr(), self.port)
    }

    /// `haul serve -v` in "dst" with `key` and `work`, once it listens.
    pub fn serve(&self, key: &Path, work: &Path) -> ChildWithLog {
        self.serve_with(key, work, &[])
    }

    /// [`PidLab::serve`] with `extra` arguments.
    pub fn serve_with(&self, key: &Path, work: &Path, extra: &[&std::ffi::OsStr]) -> ChildWithLog {
        self.serve_with_env(key, work, extra, &[])
    }

    /// `serve_with` with `env` added to serve's environment.
    pub fn serve_with_env(
        &self,
        key: &Path,
        work: &Path,
        extra: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
    ) -> ChildWithLog {
        let mut cmd = self.net.cmd_in(Side::Dst, &self.haul);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args(["serve", "--listen", &self.dst(), "--key"])
            .arg(key)
            .arg("--work-dir")
            .arg(work)
            .arg("-v")
            .args(extra);
        let s = ChildWithLog::spawn("serve", &mut cmd).expect("haul serve");
        s.wait_for_line("listening on", Duration::from_secs(10))
            .expect("haul serve listening");
        s
    }

    /// `haul migrate pid PID --to ... --key KEY --work-dir <dir>/src-work EXTRA...` in "src".
    pub fn migrate_cmd(&self, pid: u32, key: &Path, extra: &[&str]) -> Command {
        let mut cmd = self.net.cmd_in(Side::Src, &self.haul);
        cmd.args([
            "migrate",
            "pid",
            &pid.to_string(),
            "--to",
            &self.dst(),
            "--key",
        ])
        .arg(key)
        .arg("--work-dir")
        .arg(self.dir.join("src-work"))
        .args(extra);
        cmd
    }

    /// Runs [`PidLab::migrate_cmd`] to the end and prints its status and stderr.
    pub fn migrate(&self, pid: u32, key: &Path, extra: &[&str]) -> Output {
        let out = self
            .migrate_cmd(pid, key, extra)
            .output()
            .expect("haul migrate");
        eprintln!(
            "haul migrate: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// Names in `dir` (none if it does not exist), without the `logs` kept from failed migrations
/// and `bin` (haul's own `tar` for CRIU, `<work root>/bin/tar`).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "logs" && n != "bin")
                .collect()
        })
        .unwrap_or_default()
}

/// The unsigned integer `field` of a flat JSON object (haul's `--stats-json`); panics if absent.
pub fn json_number(json: &str, field: &str) -> u64 {
    let pat = format!("\"{field}\":");
    let Some(at) = json.find(&pat) else {
        panic!("no {field} in {json}")
    };
    json.get(at + pat.len()..)
        .unwrap_or_default()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{field} is not a number in {json}"))
}
