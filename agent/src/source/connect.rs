//! Opening an authenticated connection to `haul serve` and the Hello/Welcome exchange.

use crate::criu::{Version, MIN_VERSION};
use crate::error::{Error, Kind, Result};
use crate::transfer::{handshake, Conn, Key, WireError, PROTOCOL_VERSION};
use haul_proto::haul::{control::Msg, CriuVersion, Hello, Purpose, Welcome};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Time allowed for the TCP connection itself.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn wire_to_error(e: WireError, what: &str) -> Error {
    let kind = match e {
        WireError::Auth(_) | WireError::Preamble(_) => Kind::Auth,
        _ => Kind::Other,
    };
    Error::new(kind, format!("{what}: {e}"))
}

/// Connects, authenticates and exchanges Hello/Welcome.
pub fn open(
    to: &str,
    key: Option<&Key>,
    purpose: Purpose,
    criu: Version,
    migration_id: &str,
) -> Result<(Conn, Welcome)> {
    let addrs: Vec<_> = to
        .to_socket_addrs()
        .map_err(|e| {
            Error::usage(format!(
                "bad destination address {to:?}: {e} (use ADDR:PORT)"
            ))
        })?
        .collect();
    let mut last = None;
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let stream = stream.ok_or_else(|| {
        Error::new(
            Kind::Refused,
            format!(
                "cannot connect to {to}: {}; is `haul serve` running there and the port open?",
                last.map(|e| e.to_string())
                    .unwrap_or_else(|| "no address".into())
            ),
        )
    })?;
    let (tx, rx) = handshake::connect(stream, key).map_err(|e| wire_to_error(e, "handshake"))?;
    let conn = Conn::start(tx, rx);
    conn.send(Msg::Hello(Hello {
        protocol: u32::from(PROTOCOL_VERSION),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        criu: Some(CriuVersion {
            major: criu.major,
            minor: criu.minor,
            sublevel: criu.sublevel,
        }),
        purpose: purpose as i32,
        migration_id: migration_id.into(),
    }))
    .map_err(|e| wire_to_error(e, "sending hello"))?;
    let welcome = match conn.recv_control(crate::limits::HANDSHAKE_TIMEOUT, "hello") {
        Ok(Msg::Welcome(w)) => w,
        Ok(Msg::Abort(a)) => {
            return Err(Error::new(
                Kind::Refused,
                format!("destination refused: {}", crate::util::printable(&a.reason)),
            ))
        }
        Ok(other) => {
            return Err(Error::other(format!(
                "destination answered hello with {other:?}"
            )))
        }
        Err(e) => return Err(wire_to_error(e, "waiting for the destination's welcome")),
    };
    let dst = welcome.criu.as_ref().map(Version::from_wire);
    // `criu` is the default (0.0) when this side uses no CRIU (restart mode). The destination's
    // CRIU is the destination's to fix: exit 5 (refused, nothing touched here), not 3 (this
    // host), as when its preflight refuses.
    if purpose != Purpose::Check && criu != Version::default() {
        let refuse = |m: String| Error::new(Kind::Refused, m);
        match dst {
            Some(d) if d < MIN_VERSION => {
                return Err(refuse(format!(
                    "criu {d} on the destination is too old: haul needs {MIN_VERSION} or newer"
                )))
            }
            Some(d) if d < criu => {
                return Err(refuse(format!(
                    "criu {d} on the destination is older than criu {criu} here: images may not restore; upgrade the destination's CRIU"
                )))
            }
            None => return Err(refuse("the destination has no usable criu (haul serve could not start it): install CRIU 4.x there, or use --mode restart".into())),
            _ => {}
        }
    }
    Ok((conn, welcome))
}

/// Sends Prepare and waits for the destination's preflight answer: Prepared, or Abort with its
/// reason (exit 5: nothing was touched here).
pub fn preflight(conn: &Conn, prepare: haul_proto::haul::Prepare) -> Result<()> {
    conn.send(Msg::Prepare(prepare))
        .map_err(|e| wire_to_error(e, "sending prepare"))?;
    match conn.recv_control(crate::limits::IDLE_TIMEOUT, "preflight") {
        Ok(Msg::Prepared(_)) => Ok(()),
        Ok(Msg::Abort(a)) => Err(Error::new(
            Kind::Refused,
            format!(
                "destination refused ({}): {}",
                crate::util::printable(&a.stage),
                crate::util::printable(&a.reason)
            ),
        )),
        Ok(other) => Err(Error::other(format!("unexpected {other:?} in preflight"))),
        Err(e) => Err(wire_to_error(e, "preflight").with_kind(Kind::Refused)),
    }
}
