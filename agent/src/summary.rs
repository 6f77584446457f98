//! The summary printed after a migration (stderr) and written as JSON (`--stats-json`).

use serde::Serialize;
use std::path::Path;

/// Largest summary JSON: about 1 KiB of fixed fields and up to `PRE_DUMP_ITERATIONS_MAX` (32)
/// pre-copy iterations of about 120 bytes each.
const JSON_MAX: usize = 8 * 1024;

/// Pre-copy in the summary (source/precopy.rs).
#[derive(Debug, Default, Serialize)]
pub struct PreDump<'a> {
    /// `--pre-dump`: "auto", "always" or "never".
    pub mode: &'a str,
    /// Why iterating stopped or why none ran: "disabled", "no-memory-tracking",
    /// "destination-unsupported", "few-pages", "growing", "max-iterations", "no-stats".
    pub stop: &'a str,
    /// The same as a sentence.
    pub detail: &'a str,
    /// One entry per iteration, in order; empty when none ran.
    pub iterations: &'a [crate::source::precopy::Iteration],
}

#[derive(Debug, Default, Serialize)]
pub struct Summary<'a> {
    /// "pid" or "runc".
    pub kind: &'a str,
    /// What moved: the pid or the container id.
    pub id: &'a str,
    pub destination: &'a str,
    /// True when the connection ran without a key (`--insecure`).
    pub insecure: bool,
    /// Wall time of the whole migration.
    pub total_ms: u64,
    /// From CRIU's freeze on the source until the destination reported its tasks running.
    pub frozen_ms: u64,
    /// CRIU dump statistics (source).
    pub criu_freezing_us: u32,
    pub criu_frozen_us: u32,
    pub criu_memdump_us: u32,
    pub criu_memwrite_us: u32,
    pub pages_written: u64,
    /// CRIU restore statistics (destination).
    pub criu_restore_us: u64,
    pub criu_forking_us: u64,
    /// Page-server protocol bytes sent (pages plus CRIU's small headers).
    pub page_bytes: u64,
    pub image_files: u32,
    pub image_bytes: u64,
    /// All bytes haul wrote to the connection.
    pub wire_bytes: u64,
    /// Page throughput over the transfer phase (CRIU's memwrite time; post-copy: the post-copy
    /// phase), MiB/s.
    pub page_mib_per_s: f64,
    /// Pid of the restored root task on the destination.
    pub restored_pid: i32,
    /// Post-copy (`--lazy`): `frozen_ms` ends when the destination's tasks run, and the memory
    /// follows in the post-copy phase; `page_bytes` and `page_mib_per_s` are of that phase.
    pub lazy: bool,
    /// Post-copy: from the destination's resume until its last page arrived.
    pub postcopy_ms: u64,
    /// Without `--lazy` and `--eager-restore`: from the destination's resume until CRIU's
    /// lazy-pages daemon there had filled the memory from its own images; 0 when the memory was
    /// restored before the resume.
    pub fill_ms: u64,
    /// `haul migrate`'s own peak resident memory (VmHWM) when the summary was made, KiB; 0
    /// where /proc does not say.
    pub peak_rss_kib: u64,
    /// Pre-copy iterations before the final dump (whose numbers are the ones above).
    pub pre_dump: PreDump<'a>,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

impl Summary<'_> {
    pub fn print(&self) {
        let mode = if self.insecure {
            "  connection:   INSECURE (no key, no encryption)\n"
        } else {
            ""
        };
        eprint!(
            "haul: migrated {} {} to {} (restored pid {})\n{mode}\
             \x20 total:        {} ms\n\
             \x20 frozen:       {} ms (CRIU freezing {} ms, frozen {} ms, memdump {} ms, restore {} ms)\n\
             \x20 {}:{}{:.1} MiB ({} pages written) at {:.0} MiB/s{}\n\
             \x20 other images: {} files, {:.1} KiB\n\
             \x20 on the wire:  {:.1} MiB\n",
            self.kind,
            self.id,
            self.destination,
            self.restored_pid,
            self.total_ms,
            self.frozen_ms,
            self.criu_freezing_us / 1000,
            self.criu_frozen_us / 1000,
            self.criu_memdump_us / 1000,
            self.criu_restore_us / 1000,
            if self.lazy { "post-copy" } else { "pages" },
            if self.lazy { "    " } else { "        " },
            mib(self.page_bytes),
            self.pages_written,
            self.page_mib_per_s,
            if self.lazy {
                format!(", {} ms after the resume", self.postcopy_ms)
            } else {
                String::new()
            },
            self.image_files,
            self.image_bytes as f64 / 1024.0,
            mib(self.wire_bytes),
        );
        if self.peak_rss_kib > 0 {
            eprintln!(
                "  peak memory:  {:.1} MiB (haul migrate)",
                self.peak_rss_kib as f64 / 1024.0
            );
        }
        if self.fill_ms > 0 {
            eprintln!(
                "  filled:       {} ms after the resume (the destination's copy of the memory)",
                self.fill_ms
            );
        }
        self.print_pre_dump();
    }

    fn print_pre_dump(&self) {
        let p = &self.pre_dump;
        if p.iterations.is_empty() {
            if !p.detail.is_empty() {
                eprintln!("  pre-copy:     skipped: {}", p.detail);
            }
            return;
        }
        let bytes: u64 = p.iterations.iter().map(|i| i.bytes).sum();
        let ms: u64 = p.iterations.iter().map(|i| i.ms).sum();
        eprintln!(
            "  pre-copy:     {} iterations, {:.1} MiB in {ms} ms before the freeze; stopped: {}",
            p.iterations.len(),
            mib(bytes),
            p.detail
        );
        for (k, i) in p.iterations.iter().enumerate() {
            eprintln!(
                "    {:>2}: {} pages written, {:.1} MiB in {} ms (tasks frozen {} ms)",
                k + 1,
                i.pages_written,
                mib(i.bytes),
                i.ms,
                i.frozen_us / 1000
            );
        }
    }

    pub fn to_json(&self) -> Result<String, String> {
        let mut buf = vec![0u8; JSON_MAX];
        let n = serde_json_core::to_slice(self, &mut buf[..]).map_err(|e| format!("{e:?}"))?;
        let s = buf.get(..n).unwrap_or_default();
        String::from_utf8(s.to_vec()).map_err(|e| e.to_string())
    }

    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        let mut json = self.to_json()?;
        json.push('\n');
        std::fs::write(path, json).map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_every_number() {
        let s = Summary {
            kind: "pid",
            id: "42",
            destination: "10.0.0.2:7070",
            total_ms: 1500,
            frozen_ms: 300,
            page_bytes: 64 << 20,
            restored_pid: 777,
            ..Default::default()
        };
        let j = s.to_json().unwrap();
        assert!(j.contains("\"kind\":\"pid\""), "{j}");
        assert!(j.contains("\"frozen_ms\":300"), "{j}");
        assert!(j.contains("\"page_bytes\":67108864"), "{j}");
        assert!(j.contains("\"restored_pid\":777"), "{j}");
        // No pre-copy: an empty list, not a missing field.
        assert!(j.contains("\"iterations\":[]"), "{j}");
    }

    #[test]
    fn json_holds_the_most_pre_copy_iterations_at_their_largest() {
        let it = crate::source::precopy::Iteration {
            pages_written: u64::MAX,
            pages_scanned: u64::MAX,
            bytes: u64::MAX,
            ms: u64::MAX,
            frozen_us: u32::MAX,
        };
        let n = usize::try_from(crate::limits::PRE_DUMP_ITERATIONS_MAX).unwrap();
        let iterations = vec![it; n];
        let detail = "x".repeat(300);
        let s = Summary {
            kind: "runc",
            id: &"c".repeat(1024),
            destination: "[2001:db8::1]:7070",
            total_ms: u64::MAX,
            pre_dump: PreDump {
                mode: "always",
                stop: "max-iterations",
                detail: &detail,
                iterations: &iterations,
            },
            ..Default::default()
        };
        let j = s.to_json().unwrap();
        assert_eq!(
            j.matches("\"pages_written\":18446744073709551615").count(),
            n
        );
        assert!(j.ends_with("]}}"), "cut short: {}", &j[j.len() - 40..]);
    }
}
