//! The page relay: CRIU's page-server protocol between the source's CRIU (dumping, `ps.fd` a
//! UNIX socketpair) and the destination's CRIU page server (also on a socketpair), carried in
//! PAGE_DATA frames. Each side runs one outbound relay thread; inbound bytes are written by the
//! connection's reader (`mux`). A UNIX socket also avoids CRIU's TCP_CORK stall.

use super::frame::{FrameBuf, Kind, SendHalf};
use super::mux::{send_frame, send_frame_buf};
use super::WireError;
use crate::limits::{PAGE_SOCKET_BUFFER, RELAY_BUFFER};
use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A stream socketpair: (haul's end, CRIU's end), each end able to queue `PAGE_SOCKET_BUFFER`
/// bytes (forced as root, else as far as `net.core.wmem_max` allows), so one read of the relay
/// can take a whole frame of CRIU's pages.
pub fn socket_pair() -> Result<(OwnedFd, OwnedFd), rustix::io::Errno> {
    let (a, b) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    for end in [&a, &b] {
        if rustix::net::sockopt::set_socket_send_buffer_size_force(end, PAGE_SOCKET_BUFFER).is_err()
        {
            let _ = rustix::net::sockopt::set_socket_send_buffer_size(end, PAGE_SOCKET_BUFFER);
        }
    }
    Ok((a, b))
}

/// Relays bytes from the local CRIU's page socket to the peer until CRIU closes it, then sends
/// PAGE_EOF. Returns the number of page-protocol bytes relayed.
pub fn spawn_outbound(
    sock: Arc<OwnedFd>,
    tx: Arc<Mutex<SendHalf>>,
    counter: Arc<super::mux::Counters>,
) -> Result<JoinHandle<Result<u64, WireError>>, WireError> {
    std::thread::Builder::new()
        .name("haul-pages-out".into())
        .spawn(move || {
            // CRIU's bytes are read straight into the frame that carries them, RELAY_BUFFER
            // (one frame's payload) at a time.
            let mut frame = FrameBuf::new();
            let mut total = 0u64;
            let mut frames = 0u64;
            loop {
                let payload = frame.payload_mut();
                let len = payload.len().min(RELAY_BUFFER);
                let n = match rustix::io::read(&*sock, payload.get_mut(..len).unwrap_or_default()) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => {
                        return Err(WireError::Protocol(format!(
                            "reading CRIU's page stream: {e}"
                        )))
                    }
                };
                // Counted before the send: the peer's answer to these bytes (a page server's
                // close status) may reach CRIU, and CRIU's answer the orchestrator, before this
                // thread runs again; a count taken then must include them (pre-copy's bytes
                // per iteration).
                counter.pages_out.fetch_add(n as u64, Ordering::SeqCst);
                if let Err(e) = send_frame_buf(&tx, Kind::PageData, &mut frame, n) {
                    counter.pages_out.fetch_sub(n as u64, Ordering::SeqCst);
                    // The peer is gone: make the local CRIU's writes fail instead of block, so
                    // a dump fails (and its tasks resume) and a page server exits.
                    let _ = rustix::net::shutdown(&*sock, rustix::net::Shutdown::Both);
                    return Err(e);
                }
                total += n as u64;
                frames += 1;
            }
            send_frame(&tx, Kind::PageEof, &[])?;
            log::debug!("page relay: {total} bytes in {frames} frames");
            Ok(total)
        })
        .map_err(|err| WireError::Io {
            op: "spawn relay thread",
            err,
        })
}

#[cfg(test)]
mod tests {
    use super::super::{mux, Conn, Key};
    use super::*;
    use crate::limits::IDLE_TIMEOUT;
    use crate::transfer::frame::PAYLOAD_MAX;
    use crate::transfer::handshake;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::net::UnixStream;

    /// Relays `n` bytes written at once to the page socket; returns the payload sizes of the
    /// PAGE_DATA frames that reached the peer.
    fn relayed_frames(n: usize) -> Vec<usize> {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let (_tx, mut rx) = handshake::accept(s, None, IDLE_TIMEOUT).unwrap();
            let mut sizes = Vec::new();
            loop {
                match rx.recv("test").unwrap() {
                    (Kind::PageData, p) => sizes.push(p.len()),
                    (Kind::PageEof, _) => return sizes,
                    (k, _) => panic!("{k:?}"),
                }
            }
        });
        let (tx, _rx) = handshake::connect(TcpStream::connect(addr).unwrap(), None).unwrap();
        let (ours, criu) = socket_pair().unwrap();
        // All of it is queued, and CRIU's end closed, before the relay reads.
        crate::transfer::mux::write_all(&criu, &vec![1u8; n]).unwrap();
        drop(criu);
        let relay =
            spawn_outbound(Arc::new(ours), Arc::new(Mutex::new(tx)), Arc::default()).unwrap();
        assert_eq!(relay.join().unwrap().unwrap(), n as u64);
        peer.join().unwrap()
    }

    #[test]
    fn the_relay_sends_relay_buffer_bytes_per_frame() {
        assert_eq!(RELAY_BUFFER, PAYLOAD_MAX, "one read fills one frame");
        assert_eq!(relayed_frames(RELAY_BUFFER), [RELAY_BUFFER]);
        assert_eq!(relayed_frames(RELAY_BUFFER + 1), [RELAY_BUFFER, 1]);
    }

    /// One side of a relayed page stream: the connection, the relay thread and the local
    /// "CRIU" end of the page socket.
    struct Side {
        conn: Conn,
        criu: UnixStream,
        _relay: JoinHandle<Result<u64, WireError>>,
    }

    fn side(tx: super::super::frame::SendHalf, rx: super::super::frame::RecvHalf) -> Side {
        let conn = Conn::start(tx, rx);
        let (ours, theirs) = UnixStream::pair().unwrap();
        let ours = Arc::new(OwnedFd::from(ours));
        conn.set_page_sink(ours.clone());
        let relay = spawn_outbound(ours, conn.sender(), conn.counters.clone()).unwrap();
        Side {
            conn,
            criu: theirs,
            _relay: relay,
        }
    }

    /// Post-copy traffic: small requests one way, page answers the other, one at a time, both
    /// through relays over an encrypted loopback connection.
    #[test]
    fn requests_and_answers_cross_the_relay_both_ways() {
        let key = Key::generate().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let k2 = key.clone();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let (tx, rx) = handshake::accept(s, Some(&k2), IDLE_TIMEOUT).unwrap();
            side(tx, rx)
        });
        let (tx, rx) = handshake::connect(TcpStream::connect(addr).unwrap(), Some(&key)).unwrap();
        let dst = side(tx, rx);
        let src = server.join().unwrap();

        // The source's "CRIU" answers each 24-byte request with 64 KiB of its first byte.
        let mut src_criu = src.criu.try_clone().unwrap();
        let answering = std::thread::spawn(move || {
            let mut req = [0u8; 24];
            let mut n = 0u32;
            while src_criu.read_exact(&mut req).is_ok() {
                src_criu.write_all(&vec![req[0]; 64 << 10]).unwrap();
                n += 1;
            }
            n
        });
        let mut dst_criu = dst.criu.try_clone().unwrap();
        let rounds = 200u32;
        let start = std::time::Instant::now();
        let mut answer = vec![0u8; 64 << 10];
        for i in 0..rounds {
            let tag = (i % 251) as u8;
            dst_criu.write_all(&[tag; 24]).unwrap();
            dst_criu.read_exact(&mut answer).unwrap();
            assert!(answer.iter().all(|&b| b == tag), "round {i}: wrong answer");
        }
        let per = start.elapsed() / rounds;
        eprintln!("relay round trip with a 64 KiB answer: {per:?}");
        dst_criu.shutdown(std::net::Shutdown::Write).unwrap();
        drop(dst.criu);
        assert_eq!(answering.join().unwrap(), rounds);
        assert_eq!(
            mux::load(&src.conn.counters.pages_out),
            u64::from(rounds) * (64 << 10)
        );
        assert_eq!(
            mux::load(&dst.conn.counters.pages_out),
            u64::from(rounds) * 24
        );
    }
}
