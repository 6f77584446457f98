//! Page relay throughput: N MiB from a "source CRIU" through two haul relays (an encrypted
//! loopback connection, the same threads and frames a migration uses) into a "destination
//! CRIU", checked byte for byte. A benchmark, not a test: timings depend on the machine's load.
//!
//! ```text
//! cargo build --profile dist-symbols -p haul --example relay_bench
//! target/dist-symbols/examples/relay_bench --mib 256 --reps 5
//! valgrind --tool=callgrind --separate-threads=yes target/dist-symbols/examples/relay_bench --mib 64
//! ```
//!
//! Options: `--mib N` (256), `--reps R` (1), `--insecure` (plaintext frames), `--chunk BYTES`
//! (size of the source CRIU's writes, 1 MiB), `--crypto` (only seal and open N MiB of frames,
//! no sockets: the cipher's own cost).
//!
//! Printed per run: MiB/s by the wall clock from the first byte written to the last byte read,
//! and the CPU time of the whole process per MiB (user + system, all threads: both relays, the
//! two fake CRIUs, the kernel's socket copies) and of the relay threads alone (the process less
//! the two fake CRIUs' own threads).

use haul::transfer::{frame, handshake, pages, Conn, Key};
use std::error::Error;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// The byte pattern repeats every PATTERN bytes: a prime, so no frame or write boundary lines
/// up with it and a dropped, repeated or reordered piece shows as a mismatch.
const PATTERN: usize = 1_048_573;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

struct Opts {
    mib: u64,
    reps: u32,
    insecure: bool,
    crypto: bool,
    chunk: usize,
}

fn parse_args() -> Res<Opts> {
    let mut o = Opts {
        mib: 256,
        reps: 1,
        insecure: false,
        crypto: false,
        chunk: 1 << 20,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mib" => o.mib = args.next().ok_or("--mib needs a number")?.parse()?,
            "--reps" => o.reps = args.next().ok_or("--reps needs a number")?.parse()?,
            "--chunk" => o.chunk = args.next().ok_or("--chunk needs a number")?.parse()?,
            "--insecure" => o.insecure = true,
            "--crypto" => o.crypto = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if o.chunk == 0 {
        return Err("--chunk must be positive".into());
    }
    Ok(o)
}

fn pattern() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..PATTERN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect()
}

/// CPU time (user + system) of the whole process, all threads including ended ones, from
/// /proc/self/stat (clock ticks, 10 ms; rustix's clock_gettime does not run under valgrind).
fn process_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name in parentheses: state is field 3, utime 14, stime 15.
    let after = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// CPU time of the calling thread (nanoseconds from /proc/thread-self/schedstat).
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// Writes `total` bytes of the pattern, `chunk` bytes per write, then closes its end.
fn source_criu(mut s: UnixStream, pat: Arc<Vec<u8>>, total: u64, chunk: usize) -> Res<Duration> {
    let mut off = 0u64;
    while off < total {
        let at = usize::try_from(off % PATTERN as u64)?;
        let left = usize::try_from(total - off).unwrap_or(usize::MAX);
        let n = chunk.min(left).min(PATTERN - at);
        s.write_all(pat.get(at..at + n).ok_or("pattern slice")?)?;
        off += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    Ok(thread_cpu())
}

/// Reads until EOF and compares every byte with the pattern; returns the byte count.
fn dest_criu(mut s: UnixStream, pat: Arc<Vec<u8>>) -> Res<(u64, Duration)> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let mut got = buf.get(..n).ok_or("read past the buffer")?;
        while !got.is_empty() {
            let at = usize::try_from(off % PATTERN as u64)?;
            let k = got.len().min(PATTERN - at);
            let (head, rest) = got.split_at(k);
            if pat.get(at..at + k) != Some(head) {
                return Err(format!("bytes differ within {k} bytes from offset {off}").into());
            }
            off += k as u64;
            got = rest;
        }
    }
    Ok((off, thread_cpu()))
}

/// One side: the connection, its outbound relay and the "CRIU" end of its page socket.
fn side(tx: frame::SendHalf, rx: frame::RecvHalf) -> Res<(Conn, UnixStream)> {
    let conn = Conn::start(tx, rx);
    // The page socketpair exactly as haul makes it for CRIU.
    let (ours, theirs) = pages::socket_pair()?;
    let theirs = UnixStream::from(theirs);
    let ours = Arc::new(ours);
    conn.set_page_sink(ours.clone());
    // Detached: it ends when its CRIU end closes or the connection goes.
    pages::spawn_outbound(ours, conn.sender(), conn.counters.clone())?;
    Ok((conn, theirs))
}

fn relay_run(o: &Opts, pat: &Arc<Vec<u8>>) -> Res<()> {
    let key = if o.insecure {
        None
    } else {
        Some(Key::generate()?)
    };
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let k2 = key.clone();
    let server = std::thread::spawn(move || -> Res<(Conn, UnixStream)> {
        let (s, _) = l.accept()?;
        let (tx, rx) = handshake::accept(s, k2.as_ref(), haul::limits::IDLE_TIMEOUT)?;
        side(tx, rx)
    });
    let (tx, rx) = handshake::connect(TcpStream::connect(addr)?, key.as_ref())?;
    let (src_conn, src_criu) = side(tx, rx)?;
    let (dst_conn, dst_criu) = server.join().map_err(|_| "server thread panicked")??;

    let total = o.mib * MIB;
    let cpu0 = process_cpu();
    let start = Instant::now();
    let p = pat.clone();
    let reader = std::thread::spawn(move || dest_criu(dst_criu, p));
    let p = pat.clone();
    let chunk = o.chunk;
    let writer = std::thread::spawn(move || source_criu(src_criu, p, total, chunk));
    let (got, read_cpu) = reader.join().map_err(|_| "reader panicked")??;
    let secs = start.elapsed().as_secs_f64();
    let write_cpu = writer.join().map_err(|_| "writer panicked")??;
    let all = process_cpu().saturating_sub(cpu0);
    if got != total {
        return Err(format!("{got} bytes arrived of {total}").into());
    }
    let relay = all.saturating_sub(read_cpu + write_cpu);
    let mib = o.mib as f64;
    println!(
        "relay {} MiB{}: {:.0} MiB/s; CPU per MiB: process {:.0} us, relay threads {:.0} us",
        o.mib,
        if o.insecure { " (plaintext)" } else { "" },
        mib / secs,
        all.as_secs_f64() * 1e6 / mib,
        relay.as_secs_f64() * 1e6 / mib,
    );
    src_conn.close();
    dst_conn.close();
    Ok(())
}

/// Two transport states of one Noise session (initiator, responder), as haul's handshake makes.
fn noise_pair() -> Res<(snow::StatelessTransportState, snow::StatelessTransportState)> {
    let params: snow::params::NoiseParams = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s".parse()?;
    let psk = [7u8; 32];
    let mut i = snow::Builder::new(params.clone())
        .psk(0, &psk)?
        .build_initiator()?;
    let mut r = snow::Builder::new(params).psk(0, &psk)?.build_responder()?;
    let (mut m, mut p) = ([0u8; 128], [0u8; 128]);
    let n = i.write_message(&[], &mut m)?;
    r.read_message(m.get(..n).ok_or("msg")?, &mut p)?;
    let n = r.write_message(&[], &mut m)?;
    i.read_message(m.get(..n).ok_or("msg")?, &mut p)?;
    Ok((
        i.into_stateless_transport_mode()?,
        r.into_stateless_transport_mode()?,
    ))
}

/// The cipher alone, both relays' share: seals and opens `mib` MiB in full frames, first
/// through snow's transport API (separate input and output buffers: a copy per frame each way,
/// as haul did before), then in place with haul-seal (as haul's frames do now).
fn crypto_run(o: &Opts) -> Res<()> {
    let (a, b) = noise_pair()?;
    let payload = haul::limits::FRAME_PLAINTEXT_MAX;
    let frames = o.mib * MIB / payload as u64;
    let mib = (frames * payload as u64) as f64 / MIB as f64;

    let mut plain = vec![0u8; payload];
    let mut wire = vec![0u8; haul::limits::FRAME_MAX];
    let start = Instant::now();
    for nonce in 0..frames {
        plain.fill(nonce as u8);
        let n = a.write_message(nonce, &plain, &mut wire)?;
        let m = b.read_message(nonce, wire.get(..n).ok_or("len")?, &mut plain)?;
        if m != payload {
            return Err("short frame".into());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "crypto, snow API: {mib:.0} MiB sealed and opened: {:.0} MiB/s",
        mib / secs
    );

    for cipher in [
        haul_seal::Cipher::ChaCha20Poly1305,
        haul_seal::Cipher::Aegis128L,
    ] {
        let Some(key) = haul_seal::SealKey::for_session(cipher, &[7u8; 32]) else {
            println!(
                "crypto, in place, {}: not available on this CPU",
                cipher.name()
            );
            continue;
        };
        let start = Instant::now();
        for nonce in 0..frames {
            plain.fill(nonce as u8);
            let tag = key.seal(nonce, &mut plain).map_err(|e| format!("{e:?}"))?;
            key.open(nonce, &mut plain, &tag)
                .map_err(|e| format!("{e:?}"))?;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "crypto, in place, {}: {mib:.0} MiB sealed and opened: {:.0} MiB/s",
            cipher.name(),
            mib / secs
        );
    }
    Ok(())
}

fn main() -> Res<()> {
    let o = parse_args()?;
    let pat = Arc::new(pattern());
    for _ in 0..o.reps {
        if o.crypto {
            crypto_run(&o)?;
        } else {
            relay_run(&o, &pat)?;
        }
    }
    Ok(())
}
