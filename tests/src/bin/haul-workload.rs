//! A small, CRIU-friendly workload for the end-to-end tests.
//!
//! It touches `--mib N` MiB of memory with a pattern derived from the byte offset, then every
//! `--interval-ms` ms overwrites `--heartbeat FILE` in place (pwrite at offset 0 on an fd kept
//! open since start) with `counter timestamp_us\n` and verifies a sample of the memory pattern.
//! A sweep over the whole buffer is spread over the ticks so that all memory is checked about
//! every `--sweep-ms` ms (default 2000) without a latency spike. `--dirty-pages N` rewrites N
//! pages per tick with the same values (dirties memory without changing the pattern). On a mismatch it writes `BAD offset\n` to the
//! heartbeat file and exits with status 3. If it inherited any file descriptor besides
//! stdin/stdout/stderr it writes `FDS fd->target,...` to the heartbeat file and exits with
//! status 4 (the launcher must close them; see `haul_e2e::Workload`).
//!
//! `--shared-mib N` adds N MiB of shared anonymous memory (`MAP_SHARED | MAP_ANONYMOUS`, which
//! CRIU dumps as a shared-memory segment of its own, `pagemap-shmem-ID.img`) with a pattern of
//! its own, checked the same way.
//!
//! It is single threaded and uses only `std::thread::sleep` for timing (no timerfd, eventfd,
//! signalfd) so that CRIU can dump and restore it. The only file it keeps open besides
//! stdin/stdout/stderr is the heartbeat file.

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::exit;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const WORDS_PER_PAGE: usize = 4096 / 8;
const SAMPLE_PAGES: usize = 64;

/// The value expected at byte offset `off` of the buffer.
fn pattern(off: u64) -> u64 {
    off.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

struct Args {
    mib: u64,
    shared_mib: u64,
    heartbeat: PathBuf,
    interval_ms: u64,
    dirty_pages: usize,
    sweep_ms: u64,
}

fn usage(msg: &str) -> ! {
    eprintln!("haul-workload: {msg}");
    eprintln!(
        "usage: haul-workload --heartbeat FILE [--mib N] [--shared-mib N] [--interval-ms MS] \
         [--dirty-pages N] [--sweep-ms MS]"
    );
    exit(2)
}

fn parse_args() -> Args {
    let mut mib = 0u64;
    let mut shared_mib = 0u64;
    let mut heartbeat = None;
    let mut interval_ms = 5u64;
    let mut dirty_pages = 0usize;
    let mut sweep_ms = 2000u64;
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy().into_owned();
        let mut value = |name: &str| {
            it.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match a.as_str() {
            "--mib" => {
                mib = value("--mib")
                    .to_string_lossy()
                    .parse()
                    .unwrap_or_else(|_| usage("bad --mib"))
            }
            "--shared-mib" => {
                shared_mib = value("--shared-mib")
                    .to_string_lossy()
                    .parse()
                    .unwrap_or_else(|_| usage("bad --shared-mib"))
            }
            "--heartbeat" => heartbeat = Some(PathBuf::from(value("--heartbeat"))),
            "--interval-ms" => {
                interval_ms = value("--interval-ms")
                    .to_string_lossy()
                    .parse()
                    .unwrap_or_else(|_| usage("bad --interval-ms"))
            }
            "--dirty-pages" => {
                dirty_pages = value("--dirty-pages")
                    .to_string_lossy()
                    .parse()
                    .unwrap_or_else(|_| usage("bad --dirty-pages"))
            }
            "--sweep-ms" => {
                sweep_ms = value("--sweep-ms")
                    .to_string_lossy()
                    .parse()
                    .unwrap_or_else(|_| usage("bad --sweep-ms"))
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let heartbeat = heartbeat.unwrap_or_else(|| usage("--heartbeat is required"));
    Args {
        mib,
        shared_mib,
        heartbeat,
        interval_ms: interval_ms.max(1),
        dirty_pages,
        sweep_ms,
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn write_hb(f: &File, line: &str) {
    if f.write_all_at(line.as_bytes(), 0).is_err() {
        exit(2);
    }
}

/// The value expected at byte offset `off` of the shared memory.
fn shared_pattern(off: u64) -> u64 {
    pattern(off) ^ 0xA5A5_5A5A_A5A5_5A5A
}

/// Checks words `[from, to)` against `pat`; returns the byte offset of the first mismatch.
fn check_with(mem: &[u64], from: usize, to: usize, pat: fn(u64) -> u64) -> Option<u64> {
    let mem = black_box(mem);
    mem[from..to]
        .iter()
        .enumerate()
        .find(|(i, &w)| w != pat(((from + i) * 8) as u64))
        .map(|(i, _)| ((from + i) * 8) as u64)
}

/// Checks words `[from, to)` of the private memory.
fn check(mem: &[u64], from: usize, to: usize) -> Option<u64> {
    check_with(mem, from, to, pattern)
}

/// `mib` MiB of shared anonymous memory, filled with `shared_pattern`. The workload's only
/// unsafe code: a mapping std does not offer.
#[allow(unsafe_code)]
fn shared_memory(mib: u64) -> &'static mut [u64] {
    if mib == 0 {
        return &mut [];
    }
    let len = (mib as usize) << 20;
    // SAFETY: a fresh anonymous mapping of `len` bytes, never unmapped, used only as this
    // slice of u64 (page-aligned, zero-filled, so every value is a valid u64).
    let mem = unsafe {
        let p = rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::SHARED,
        )
        .unwrap_or_else(|e| usage(&format!("mmap of {mib} MiB shared: {e}")));
        std::slice::from_raw_parts_mut(p.cast::<u64>(), len / 8)
    };
    for (i, w) in mem.iter_mut().enumerate() {
        *w = shared_pattern((i * 8) as u64);
    }
    mem
}

/// File descriptors open besides stdin/stdout/stderr and `keep` (CRIU must not see any).
fn extra_fds(keep: i32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let listed: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    // The directory's own fd is closed now, so it no longer resolves.
    listed
        .into_iter()
        .filter(|&fd| fd > 2 && fd != keep)
        .filter_map(|fd| {
            let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
            Some(format!("{fd}->{}", target.display()))
        })
        .collect()
}

fn bad(f: &File, off: u64) -> ! {
    write_hb(f, &format!("BAD {off}\n"));
    exit(3)
}

fn main() {
    let args = parse_args();
    let hb = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&args.heartbeat)
        .unwrap_or_else(|e| usage(&format!("open {}: {e}", args.heartbeat.display())));

    let extra = extra_fds(hb.as_raw_fd());
    if !extra.is_empty() {
        // An inherited fd would be dumped and restored by CRIU too; refuse loudly.
        write_hb(&hb, &format!("FDS {}\n", extra.join(",")));
        exit(4);
    }

    let words = (args.mib as usize) * (1 << 20) / 8;
    let mut mem = vec![0u64; words];
    for (i, w) in mem.iter_mut().enumerate() {
        *w = pattern((i * 8) as u64);
    }
    black_box(&mut mem);
    let pages = words / WORDS_PER_PAGE;
    let shared = shared_memory(args.shared_mib);
    let shared_chunk = shared
        .len()
        .div_ceil((args.sweep_ms / args.interval_ms).max(1) as usize)
        .max(1);
    let mut shared_pos = 0usize;

    let ticks_per_sweep = (args.sweep_ms / args.interval_ms).max(1) as usize;
    let sweep_chunk = words.div_ceil(ticks_per_sweep).max(1);
    let mut sweep_pos = 0usize;
    let mut rng: u64 = 0x2545_F491_4F6C_DD1D ^ now_us();
    let mut dirty_pos = 0usize;
    let mut counter: u64 = 0;
    let interval = Duration::from_millis(args.interval_ms);

    loop {
        counter += 1;
        write_hb(&hb, &format!("{counter} {}\n", now_us()));

        if pages > 0 {
            for _ in 0..SAMPLE_PAGES {
                // xorshift64
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let p = (rng % pages as u64) as usize;
                let from = p * WORDS_PER_PAGE;
                if let Some(off) = check(&mem, from, from + WORDS_PER_PAGE) {
                    bad(&hb, off);
                }
            }
            // Rewrite some pages with the same values: they become dirty, the pattern holds.
            for _ in 0..args.dirty_pages.min(pages) {
                let from = dirty_pos * WORDS_PER_PAGE;
                for (i, w) in mem[from..from + WORDS_PER_PAGE].iter_mut().enumerate() {
                    *w = pattern(((from + i) * 8) as u64);
                }
                dirty_pos = (dirty_pos + 1) % pages;
            }
            black_box(&mut mem);
        }
        if words > 0 {
            let to = (sweep_pos + sweep_chunk).min(words);
            if let Some(off) = check(&mem, sweep_pos, to) {
                bad(&hb, off);
            }
            sweep_pos = if to >= words { 0 } else { to };
        }
        if !shared.is_empty() {
            let to = (shared_pos + shared_chunk).min(shared.len());
            if let Some(off) = check_with(shared, shared_pos, to, shared_pattern) {
                // Offsets of the shared memory are reported past the private memory's.
                bad(&hb, (words * 8) as u64 + off);
            }
            shared_pos = if to >= shared.len() { 0 } else { to };
        }

        std::thread::sleep(interval);
    }
}
