//! End to end, real CRIU with userfaultfd: `--lazy` (post-copy). The destination runs the
//! workload before its memory has moved; CRIU's lazy-pages daemon there fetches the pages from
//! the source's CRIU through haul's connection.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use haul_e2e::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const PORT: u16 = 7071;

struct Setup {
    _lab: Lab,
    net: NetnsPair,
    dir: TempDir,
    haul: PathBuf,
}

fn setup(tag: &str) -> Option<Setup> {
    let mut tools = Lab::NET_TOOLS.to_vec();
    tools.push("criu");
    let lab = Lab::require_or_skip(&tools).expect("lab requirements")?;
    let net = NetnsPair::create(tag).unwrap();
    let dir = TempDir::new(tag).unwrap();
    let haul = haul_bin().unwrap();
    Some(Setup {
        _lab: lab,
        net,
        dir,
        haul,
    })
}

impl Setup {
    fn keygen(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        run(Command::new(&self.haul).arg("keygen").arg(&p)).unwrap();
        p
    }

    fn dst(&self) -> String {
        format!("{}:{PORT}", self.net.dst_addr())
    }

    fn serve(&self, key: &Path, work: &Path) -> ChildWithLog {
        let mut cmd = self.net.cmd_in(Side::Dst, &self.haul);
        cmd.args(["serve", "--listen", &self.dst(), "--key"])
            .arg(key)
            .arg("--work-dir")
            .arg(work)
            .arg("-v");

        let s = ChildWithLog::spawn("serve", &mut cmd).unwrap();
        s.wait_for_line("listening on", Duration::from_secs(10))
            .unwrap();
        s
    }

    fn migrate_cmd(&self, pid: u32, key: &Path, extra: &[&str]) -> Command {
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
        .arg("--lazy")
        .args(extra);

        cmd
    }

    fn migrate(&self, pid: u32, key: &Path, extra: &[&str]) -> Output {
        let out = self.migrate_cmd(pid, key, extra).output().unwrap();
        eprintln!(
            "haul migrate: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "logs")
                .collect()
        })
        .unwrap_or_default()
}

fn json_number(json: &str, field: &str) -> u64 {
    let pat = format!("\"{field}\":");
    let start = json
        .find(&pat)
        .unwrap_or_else(|| panic!("{field} in {json}"))
        + pat.len();
    json[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn lazy_migration_runs_on_the_destination_before_the_memory_moved() {
    let Some(s) = setup("lazymv") else { return };
    let key = s.keygen("key");
    let dst_work = s.dir.join("dst-work");
    let serve = s.serve(&key, &dst_work);

    let hb = s.dir.join("heartbeat");
    let mib: u64 = 256;
    let opts = WorkloadOpts {
        mib,
        sweep_ms: 20_000,
        ..WorkloadOpts::default()
    };
    let mut w = Workload::start_with(Some((&s.net, Side::Src)), &hb, &opts).unwrap();
    Heartbeat::wait_advancing(&hb, Duration::from_secs(30)).unwrap();
    let poller = Poller::start(&hb);
    let stats_json = s.dir.join("stats.json");

    let out = s.migrate(
        w.pid(),
        &key,
        &["--stats-json", stats_json.to_str().unwrap()],
    );
    assert!(out.status.success(), "migrate failed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("migrated pid"), "no summary: {stderr}");
    assert!(stderr.contains("post-copy"), "{stderr}");

    // The source's tasks are gone; one copy runs on the destination and continues.
    w.wait_exit(Duration::from_secs(10)).unwrap();
    let pids = find_workload_pids(&hb);
    assert_eq!(pids.len(), 1, "workload copies: {pids:?}");
    let restored = PidGuard::new(pids[0]).unwrap();
    // A whole sweep of the memory check after the post-copy: every page arrived intact.
    std::thread::sleep(Duration::from_millis(21_000));
    Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).unwrap();
    let stats = poller.stop_stats();
    eprintln!("downtime seen from outside: {:?}", stats.max_gap);
    assert_eq!(stats.counter_regressions, 0, "two copies?");
    assert_eq!(stats.bad, None, "memory check failed after the post-copy");

    // The memory moved after the resume, not before.
    let json = std::fs::read_to_string(&stats_json).unwrap();
    eprintln!("{json}");
    assert!(json.contains("\"lazy\":true"), "{json}");
    assert!(
        json_number(&json, "page_bytes") >= (mib << 20) * 9 / 10,
        "post-copy moved less than the workload's memory: {json}"
    );
    assert!(json_number(&json, "postcopy_ms") > 0, "{json}");
    assert!(
        json_number(&json, "image_bytes") < 32 << 20,
        "the memory went with the images, not lazily: {json}"
    );

    assert!(entries(&s.dir.join("src-work")).is_empty());
    assert!(
        entries(&dst_work).is_empty(),
        "destination left {:?}",
        entries(&dst_work)
    );
    assert!(serve.log_text().contains("post-copy done"));
    restored.kill().unwrap();
    assert!(restored.wait_gone(Duration::from_secs(5)));
}
