//! `haul serve`: listen, limit concurrent work, hand each connection to a session thread.

use super::session::{self, SessionConfig};
use crate::error::{Context, Error, Kind, Result};
use crate::limits::PENDING_HANDSHAKES;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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
}

/// Serves until the process is stopped.
pub fn serve(listen: &str, cfg: SessionConfig) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .map_err(|e| Error::usage(format!("cannot listen on {listen}: {e}")))?;
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
    let cfg = Arc::new(cfg);
    let limits = Arc::new(Limits {
        pending: Arc::new(AtomicUsize::new(0)),
        migrations: Arc::new(AtomicUsize::new(0)),
    });
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("accept: {e}");
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        let Some(pending) = Slot::take(&limits.pending, PENDING_HANDSHAKES) else {
            log::warn!(
                "{peer}: refused: {PENDING_HANDSHAKES} connections already in the handshake"
            );
            continue;
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_released() {
        let c = Arc::new(AtomicUsize::new(0));
        let a = Slot::take(&c, 2).unwrap();
        let _b = Slot::take(&c, 2).unwrap();
        assert!(Slot::take(&c, 2).is_none());
        drop(a);
        assert!(Slot::take(&c, 2).is_some());
    }
}
