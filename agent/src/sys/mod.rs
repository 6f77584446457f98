//! The one module allowed `unsafe`: starting a child process that inherits chosen descriptors,
//! adopting a descriptor inherited from an init system, blocking and waiting for signals, and
//! creating an empty network namespace with its loopback up; `uffd`: the userfaultfd ioctls.
//!
//! Everything else goes through rustix's safe wrappers.

#![allow(unsafe_code)]

pub mod uffd;

use std::ffi::c_int;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// `fork` + `fcntl(F_SETFD, 0)` on each of `inherit` + `execve`: spawns `cmd` so that exactly
/// the descriptors in `inherit` (besides stdio) survive `exec`, under their current numbers.
///
/// Every descriptor haul opens is close-on-exec (Rust's std and rustix open them so); clearing
/// the flag in the child only, between fork and exec, keeps other threads' spawns from leaking
/// these descriptors.
pub fn spawn_inheriting(cmd: &mut Command, inherit: &[BorrowedFd<'_>]) -> io::Result<Child> {
    spawn_inheriting_with(cmd, inherit, false, None)
}

/// [`spawn_inheriting`] inside the network namespace `netns` (an open `/proc/PID/ns/net` or a
/// namespace from [`new_netns`]): `setns` in the child between fork and exec.
pub fn spawn_inheriting_in_netns(
    cmd: &mut Command,
    inherit: &[BorrowedFd<'_>],
    netns: BorrowedFd<'_>,
) -> io::Result<Child> {
    spawn_inheriting_with(cmd, inherit, false, Some(netns.as_raw_fd()))
}

/// [`spawn_inheriting`], and the child is SIGKILLed when the thread that started it ends
/// (`PR_SET_PDEATHSIG`; a killed `haul serve` ends all its threads): for helpers that must not
/// outlive the migration that started them, such as CRIU's lazy-pages daemon.
pub fn spawn_inheriting_tied(cmd: &mut Command, inherit: &[BorrowedFd<'_>]) -> io::Result<Child> {
    spawn_inheriting_with(cmd, inherit, true, None)
}

fn spawn_inheriting_with(
    cmd: &mut Command,
    inherit: &[BorrowedFd<'_>],
    tied: bool,
    netns: Option<RawFd>,
) -> io::Result<Child> {
    let fds: Vec<RawFd> = inherit.iter().map(|fd| fd.as_raw_fd()).collect();
    unblock_signals_in_child(cmd)?;
    // SAFETY: the closure runs in the child between fork and exec. It only borrows descriptor
    // numbers that are open in the parent (the caller holds `BorrowedFd`s, so they stay open
    // until `spawn` returns, and fork copies them) and calls `fcntl(F_SETFD)` (and, if tied,
    // `prctl(PR_SET_PDEATHSIG)`; with a namespace, `setns` on a descriptor the caller lends
    // likewise) through rustix: raw system calls that neither allocate nor take locks, so they
    // are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(ns) = netns {
                rustix::thread::move_into_link_name_space(
                    BorrowedFd::borrow_raw(ns),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
            }
            for &fd in &fds {
                let borrowed = BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::empty())?;
            }
            if tied {
                // prctl(PR_SET_PDEATHSIG): one raw system call, async-signal-safe too.
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))?;
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Spawns `cmd` inside the network namespace `netns` (an open `/proc/PID/ns/net`): `setns` in
/// the child between fork and exec, so haul's own threads never change namespace.
pub fn spawn_in_netns(cmd: &mut Command, netns: BorrowedFd<'_>) -> io::Result<Child> {
    let fd = netns.as_raw_fd();
    unblock_signals_in_child(cmd)?;
    // SAFETY: the closure runs in the child between fork and exec and makes one raw system call
    // (setns through rustix), which neither allocates nor takes locks: async-signal-safe. The
    // descriptor is open in the parent for the whole `spawn` (the caller lends it), so it is
    // open in the child.
    unsafe {
        cmd.pre_exec(move || {
            let ns = BorrowedFd::borrow_raw(fd);
            rustix::thread::move_into_link_name_space(
                ns,
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            Ok(())
        });
    }
    cmd.spawn()
}

/// A new network namespace with its loopback interface up (what runc sets up for a container
/// with a network namespace of its own), created on a short-lived thread so haul's own
/// threads never change namespace. The namespace lives as long as the returned descriptor (or
/// whatever joins it).
pub fn new_netns() -> io::Result<OwnedFd> {
    std::thread::Builder::new()
        .name("haul-netns".into())
        .spawn(|| -> io::Result<OwnedFd> {
            // SAFETY: only CLONE_NEWNET, on this thread, which shares nothing it changes: the
            // file table stays shared (no CLONE_FILES), so the descriptor opened below is the
            // caller's.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }?;
            let ns = rustix::fs::open(
                "/proc/thread-self/ns/net",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )?;
            loopback_flags(true)?;
            Ok(ns)
        })?
        .join()
        .map_err(|_| io::Error::other("the netns thread panicked"))?
}

/// `struct ifreq` with the `ifr_flags` member of its union (40 bytes on Linux).
#[repr(C)]
struct IfreqFlags {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// The flags of `lo` in the calling thread's network namespace (SIOCGIFFLAGS); with `up`,
/// IFF_UP is set first (SIOCSIFFLAGS).
fn loopback_flags(up: bool) -> io::Result<i16> {
    use rustix::ioctl::{ioctl, Opcode, Updater};
    const SIOCGIFFLAGS: Opcode = 0x8913;
    const SIOCSIFFLAGS: Opcode = 0x8914;
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    let mut req = IfreqFlags {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: both opcodes take a pointer to a `struct ifreq`, which `IfreqFlags` lays out
    // (interface name, then the flags member of the union, padded to the union's size); the
    // kernel reads the name and reads or writes only the flags.
    unsafe {
        ioctl(&sock, Updater::<SIOCGIFFLAGS, IfreqFlags>::new(&mut req))?;
        if up && req.flags & IFF_UP == 0 {
            req.flags |= IFF_UP;
            ioctl(&sock, Updater::<SIOCSIFFLAGS, IfreqFlags>::new(&mut req))?;
        }
    }
    Ok(req.flags)
}

const IFF_UP: i16 = 0x1;

/// `fcntl(fd, F_SETFD, FD_CLOEXEC)` on a descriptor number that may not be open.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: the borrow lasts for one fcntl call; if `fd` is not open, fcntl fails with EBADF
    // and nothing else happens.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC)?;
    Ok(())
}

/// `fcntl(fd, F_GETFD)`, then `check`, then ownership: adopts a descriptor number the process
/// inherited (`haul serve --fd N`, systemd's `LISTEN_FDS`) once `check` accepts it.
///
/// Checking before owning matters: if nothing was inherited under that number, haul may have
/// opened something of its own there since (the syslog socket); a failed check leaves it open.
pub fn adopt_fd(
    fd: RawFd,
    check: impl FnOnce(BorrowedFd<'_>) -> Result<(), String>,
) -> Result<OwnedFd, String> {
    if fd < 0 {
        return Err(format!("{fd} is not a descriptor number"));
    }
    // SAFETY: the borrow lasts for the fcntl call and `check`; if `fd` is not open, fcntl fails
    // with EBADF before anything else uses it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(borrowed).map_err(|e| match e {
        rustix::io::Errno::BADF => {
            format!("descriptor {fd} is not open (nothing was inherited under that number)")
        }
        e => format!("descriptor {fd}: {e}"),
    })?;
    check(borrowed)?;
    // SAFETY: `fd` is open (fcntl succeeded) and `check` accepted it as the kind of object the
    // caller expects from its parent; haul creates no such object itself before this call, so
    // no other owner of this number exists in the process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// Why the C library and not rustix: rustix's safe API has no sigprocmask or sigwait; they exist
// only in its `runtime` module, which is meant for libc implementations, hidden behind a hashed
// module name and allowed to change in any release. The C library that std already links (glibc
// or the static musl of release builds) has had `pthread_sigmask` and `sigwait` for decades.
extern "C" {
    fn sigemptyset(set: *mut CSigSet) -> c_int;
    fn sigaddset(set: *mut CSigSet, signum: c_int) -> c_int;
    fn pthread_sigmask(how: c_int, set: *const CSigSet, old: *mut CSigSet) -> c_int;
    fn sigwait(set: *const CSigSet, sig: *mut c_int) -> c_int;
}

/// `SIG_BLOCK`: 0 on Linux, except on the MIPS and SPARC families.
#[cfg(not(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
const SIG_BLOCK: c_int = 0;
#[cfg(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
const SIG_BLOCK: c_int = 1;

/// `SIG_UNBLOCK`: 1 on Linux, except on the MIPS and SPARC families.
#[cfg(not(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
const SIG_UNBLOCK: c_int = 1;
#[cfg(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
const SIG_UNBLOCK: c_int = 2;

/// The C library's `sigset_t`: 1024 bits in glibc and in musl on every architecture (128 bytes).
/// Only `sigemptyset` and `sigaddset` touch the bits, so haul does not depend on their order.
#[repr(C)]
struct CSigSet([u64; 16]);

/// A set of signals, for [`block_signals`] and [`wait_signal`].
pub struct SignalSet(CSigSet);

impl SignalSet {
    /// `sigemptyset` + `sigaddset` for each of `signals`.
    pub fn new(signals: &[rustix::process::Signal]) -> io::Result<SignalSet> {
        let mut set = CSigSet([0; 16]);
        // SAFETY: `set` is a live, writable `sigset_t`-sized buffer for the duration of the call.
        if unsafe { sigemptyset(&mut set) } != 0 {
            return Err(io::Error::last_os_error());
        }
        for s in signals {
            // SAFETY: as above; an invalid signal number fails with EINVAL and writes nothing.
            if unsafe { sigaddset(&mut set, s.as_raw()) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(SignalSet(set))
    }
}

/// `pthread_sigmask(SIG_BLOCK, set)`: blocks `set` in the calling thread and so in every thread
/// it starts afterwards (threads inherit the mask). Call it before starting threads.
///
/// Children do not inherit it: std's `Command` empties the signal mask between fork and exec.
pub fn block_signals(set: &SignalSet) -> io::Result<()> {
    // SAFETY: `set` points to an initialised `sigset_t`; the old mask is not asked for (null).
    // The C library removes the signals it reserves for itself, and nothing in haul or std
    // relies on receiving the signals callers block (SIGTERM, SIGINT, SIGHUP).
    let rc = unsafe { pthread_sigmask(SIG_BLOCK, &set.0, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Makes `cmd`'s child start with SIGTERM, SIGINT and SIGHUP unblocked: haul blocks them in
/// its own threads (they are taken by `sigwait`), and a blocked mask is inherited across exec,
/// which would leave a container started by runc deaf to `runc kill`.
pub fn unblock_signals_in_child(cmd: &mut std::process::Command) -> io::Result<()> {
    use rustix::process::Signal;
    let set = SignalSet::new(&[Signal::TERM, Signal::INT, Signal::HUP])?;
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // `pthread_sigmask`, which is async-signal-safe; `set` was built before the fork and is
    // moved into the closure, so nothing is allocated after the fork.
    unsafe {
        cmd.pre_exec(move || {
            let rc = pthread_sigmask(SIG_UNBLOCK, &set.0, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(())
        });
    }
    Ok(())
}

/// `sigwait(set)`: waits until one of `set` (blocked in every thread) is pending, takes it and
/// returns it.
pub fn wait_signal(set: &SignalSet) -> io::Result<rustix::process::Signal> {
    let mut sig: c_int = 0;
    // SAFETY: `set` points to an initialised `sigset_t` and `sig` to a writable int, both live
    // for the call.
    let rc = unsafe { sigwait(&set.0, &mut sig) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    rustix::process::Signal::from_named_raw(sig)
        .ok_or_else(|| io::Error::other(format!("sigwait returned signal {sig}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::process::Stdio;

    #[test]
    fn only_the_chosen_descriptor_is_inherited() {
        let (keep_r, _keep_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let (other_r, _other_w) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let script = format!(
            "test -e /proc/self/fd/{} && ! test -e /proc/self/fd/{}",
            keep_r.as_raw_fd(),
            other_r.as_raw_fd()
        );
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", &script]).stdin(Stdio::null());
        let mut child = spawn_inheriting(&mut cmd, &[keep_r.as_fd()]).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "child saw the wrong descriptors");
    }

    #[test]
    fn new_netns_is_another_namespace_with_loopback_up() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: creating a network namespace needs root");
            return;
        }
        let ns = new_netns().unwrap();
        let ours = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        let st = rustix::fs::fstat(&ns).unwrap();
        assert_ne!(st.st_ino as u64, ours, "the new namespace is haul's own");
        let flags = std::thread::scope(|s| {
            s.spawn(|| {
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap();
                loopback_flags(false).unwrap()
            })
            .join()
            .unwrap()
        });
        assert_ne!(flags & IFF_UP, 0, "lo is down");
        // This thread's namespace did not change.
        assert_eq!(
            std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino(),
            ours
        );
    }

    #[test]
    fn a_child_spawned_in_a_namespace_runs_there_with_its_descriptors() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: creating a network namespace needs root");
            return;
        }
        let ns = new_netns().unwrap();
        let ino = rustix::fs::fstat(&ns).unwrap().st_ino;
        let (keep_r, _keep_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let script = format!(
            "readlink /proc/self/ns/net && test -e /proc/self/fd/{}",
            keep_r.as_raw_fd()
        );
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let child = spawn_inheriting_in_netns(&mut cmd, &[keep_r.as_fd()], ns.as_fd()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "the descriptor was not inherited");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("net:[{ino}]")
        );
    }

    extern "C" {
        /// Sends a signal to the calling thread (not the process: other test threads must not
        /// get it).
        fn raise(sig: c_int) -> c_int;
    }

    #[test]
    fn a_blocked_signal_raised_in_this_thread_is_taken_by_sigwait() {
        use rustix::process::Signal;
        // SIGUSR2 is not used by the test harness; it is blocked in this thread only.
        let set = SignalSet::new(&[Signal::USR2]).unwrap();
        block_signals(&set).unwrap();
        // SAFETY: SIGUSR2 is blocked in this thread, so raising it only makes it pending here.
        assert_eq!(unsafe { raise(Signal::USR2.as_raw()) }, 0);
        assert_eq!(wait_signal(&set).unwrap(), Signal::USR2);
    }

    #[test]
    fn adopting_checks_before_owning() {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let n = r.as_raw_fd();
        let err = adopt_fd(n, |_| Err("not wanted".into())).unwrap_err();
        assert_eq!(err, "not wanted");
        // Still open: the failed check did not close it.
        rustix::io::fcntl_getfd(&r).unwrap();
        std::mem::forget(r);
        let owned = adopt_fd(n, |_| Ok(())).unwrap();
        assert_eq!(owned.as_raw_fd(), n);
        drop(w);
        assert!(adopt_fd(-1, |_| Ok(())).is_err());
    }
}
