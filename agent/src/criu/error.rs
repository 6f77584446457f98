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
                match errno {
                    // Linux errnos are 1 to 4095; rustix asserts that range (a panic, which
                    // aborts haul), and CRIU's field is whatever its process sent.
                    Some(e @ 1..=4095) => {
                        write!(f, " (errno {e}: {})", rustix::io::Errno::from_raw_os_error(*e))?
                    }
                    Some(0) | None => {}
                    Some(e) => write!(f, " (errno {e})")?,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(errno: Option<i32>) -> String {
        CriuError::Failed {
            request: "DUMP",
            errno,
            errmsg: None,
            log: None,
            errors: Vec::new(),
        }
        .to_string()
    }

    /// Found by fuzzing (fixtures/fuzz-crashes/criu_responses/errno-out-of-range): a response
    /// whose cr_errno was outside Linux's range made the message panic in rustix.
    #[test]
    fn any_errno_criu_sends_is_shown() {
        // Named by the C library's text ("Device or resource busy" in glibc, "Resource busy"
        // in musl).
        for e in [16, 4095] {
            let shown = failed(Some(e));
            let prefix = format!("criu DUMP failed (errno {e}: ");
            assert!(
                shown.starts_with(&prefix) && shown.len() > prefix.len() + 1,
                "{shown}"
            );
        }
        for e in [4096, -1, i32::MIN, i32::MAX] {
            assert_eq!(failed(Some(e)), format!("criu DUMP failed (errno {e})"));
        }
        assert_eq!(failed(Some(0)), "criu DUMP failed");
        let found = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/fuzz-crashes/criu_responses/errno-out-of-range"
        ))
        .unwrap();
        crate::fuzzing::criu_responses(&found);
    }
}
