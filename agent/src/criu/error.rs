//! Errors of the CRIU driver, each with what CRIU said and where its log is.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum CriuError {
    /// The criu binary was not found or could not be started.
    NotFound { tried: String, detail: String },
    /// A socket operation with CRIU failed.
    Io {
        op: &'static str,
        err: rustix::io::Errno,
    },
    /// CRIU answered with a response larger than the bound.
    ResponseTooLarge { size: usize, limit: usize },
    /// CRIU's response was not a valid protobuf.
    BadResponse { detail: String },
    /// CRIU answered a different request type than asked.
    UnexpectedResponse {
        asked: &'static str,
        got: &'static str,
    },
    /// CRIU closed the socket or exited without answering.
    Exited {
        during: &'static str,
        status: String,
        log: Option<PathBuf>,
        errors: Vec<String>,
    },
    /// CRIU reported a failure.
    Failed {
        request: &'static str,
        errno: Option<i32>,
        errmsg: Option<String>,
        log: Option<PathBuf>,
        errors: Vec<String>,
    },
}

impl fmt::Display for CriuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CriuError::NotFound { tried, detail } => write!(
                f,
                "cannot start criu ({tried}): {detail}; install CRIU 4.x or pass --criu PATH / set HAUL_CRIU"
            ),
            CriuError::Io { op, err } => write!(f, "talking to criu ({op}): {err}"),
            CriuError::ResponseTooLarge { size, limit } => write!(
                f,
                "criu sent a response of {size} bytes; the limit is {limit} bytes"
            ),
            CriuError::BadResponse { detail } => write!(f, "criu sent an undecodable response: {detail}"),
            CriuError::UnexpectedResponse { asked, got } => {
                write!(f, "criu answered {got} to a {asked} request")
            }
            CriuError::Exited { during, status, log, errors } => {
                write!(f, "criu exited during {during} without answering ({status})")?;
                write_log(f, log, errors)
            }
            CriuError::Failed { request, errno, errmsg, log, errors } => {
                write!(f, "criu {request} failed")?;
                if let Some(m) = errmsg {
                    write!(f, ": {m}")?;
                }
                if let Some(e) = errno {
                    if *e != 0 {
                        write!(f, " (errno {e}: {})", rustix::io::Errno::from_raw_os_error(*e))?;
                    }
                }
                write_log(f, log, errors)
            }
        }
    }
}

fn write_log(f: &mut fmt::Formatter<'_>, log: &Option<PathBuf>, errors: &[String]) -> fmt::Result {
    if let Some(p) = log {
        write!(f, "; CRIU log: {}", p.display())?;
    }
    for line in errors {
        write!(f, "\n    {line}")?;
    }
    Ok(())
}

impl std::error::Error for CriuError {}
