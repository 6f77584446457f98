//! haul's top-level error: what failed, why, what to do, and the process exit code.
//!
//! Leaf modules keep small typed errors (`criu::CriuError`, `transfer::WireError`,
//! `inspect::…`); they convert into this one at the orchestrator, which adds context.

use std::fmt;

/// What kind of failure, which decides the exit code (documented in the README and `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad command line or configuration (missing key file, bad address). Exit 2.
    Usage,
    /// This host cannot do the job: criu missing or too old here, kernel feature missing. Exit 3.
    Setup,
    /// The peer failed authentication or speaks another protocol version. Exit 4.
    Auth,
    /// The destination refused before anything was frozen, its own checks or its CRIU (missing,
    /// too old, older than the source's); the source was not touched. Exit 5.
    Refused,
    /// The migration failed and was rolled back: the workload runs on the source. Exit 6.
    RolledBack,
    /// The source's tasks are gone but the destination did not confirm: the destination keeps
    /// complete images to finish the restore. Exit 7.
    InDoubt,
    /// The workload runs nowhere: post-copy (`--lazy`) failed after the destination ran it
    /// (both copies stopped), or `--mode restart` could start it neither there nor here
    /// again. Exit 8.
    Lost,
    /// Anything else (I/O error on a local file, CRIU crashed). Exit 1.
    Other,
}

impl Kind {
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Other => 1,
            Kind::Usage => 2,
            Kind::Setup => 3,
            Kind::Auth => 4,
            Kind::Refused => 5,
            Kind::RolledBack => 6,
            Kind::InDoubt => 7,
            Kind::Lost => 8,
        }
    }
}

/// Exit codes as printed in `--help`.
pub const EXIT_CODES_HELP: &str = "\
exit codes:
  0  success
  1  other failure (local I/O, CRIU crashed)
  2  bad command line or configuration (key file, address)
  3  this host cannot migrate (criu missing or too old here, kernel feature missing)
  4  authentication failed or protocol versions differ
  5  destination refused before anything was frozen (its checks or its criu; source untouched)
  6  migration failed and was rolled back (workload still runs on the source)
  7  in doubt: source tasks are gone, destination did not confirm; it keeps the images
  8  container lost: --lazy post-copy failed after the destination started (both copies
     stopped), or --mode restart could start it neither there nor here again";

#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Kind::Usage, message)
    }
    pub fn setup(message: impl Into<String>) -> Self {
        Self::new(Kind::Setup, message)
    }
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(Kind::Other, message)
    }
    /// An I/O error on a local object, named.
    pub fn io(what: impl fmt::Display, err: impl fmt::Display) -> Self {
        Self::new(Kind::Other, format!("{what}: {err}"))
    }
    /// Prefixes the message with what was being done.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
    /// Changes the kind (e.g. a connection error during the frozen phase becomes `RolledBack`).
    pub fn with_kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Adds context to any displayable error.
pub trait Context<T> {
    fn ctx(self, kind: Kind, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn ctx(self, kind: Kind, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error::new(kind, format!("{what}: {e}")))
    }
}
