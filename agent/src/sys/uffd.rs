//! userfaultfd(2) operations on a descriptor CRIU's restore opened and handed to haul
//! (`dest::fill`): copy pages in, map zero pages, unregister a range, and adopt the descriptor
//! the kernel installs for a forked child. The structures are the kernel's
//! (`linux/userfaultfd.h`, ioctl group 0xAA).

use rustix::io::Errno;
use rustix::ioctl::{ioctl, opcode, Updater};
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `struct uffdio_range`.
#[repr(C)]
struct Range {
    start: u64,
    len: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
struct Copy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    /// Bytes copied, or a negative errno.
    copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
struct ZeroPage {
    range: Range,
    mode: u64,
    zeropage: i64,
}

const GROUP: u8 = 0xAA;
const UNREGISTER: rustix::ioctl::Opcode = opcode::read::<Range>(GROUP, 0x01);
const WAKE: rustix::ioctl::Opcode = opcode::read::<Range>(GROUP, 0x02);
const COPY: rustix::ioctl::Opcode = opcode::read_write::<Copy>(GROUP, 0x03);
const ZEROPAGE: rustix::ioctl::Opcode = opcode::read_write::<ZeroPage>(GROUP, 0x04);

/// How an UFFDIO_COPY ended short: the error and how many bytes it had copied before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Short {
    pub errno: Errno,
    pub copied: u64,
}

/// UFFDIO_COPY: puts `src` (whole pages) at `dst` in the task behind `uffd` and wakes the
/// threads waiting on that range. Ok: bytes copied (all of `src`).
pub fn copy(uffd: BorrowedFd<'_>, dst: u64, src: &[u8]) -> Result<u64, Short> {
    let mut arg = Copy {
        dst,
        src: src.as_ptr() as u64,
        len: src.len() as u64,
        mode: 0,
        copy: 0,
    };
    // SAFETY: COPY takes a `struct uffdio_copy`, which `Copy` mirrors; the kernel reads
    // `src.len()` bytes from `src`, which outlives the call, and writes only `arg.copy`.
    let r = unsafe { ioctl(uffd, Updater::<COPY, Copy>::new(&mut arg)) };
    match r {
        Ok(()) => Ok(src.len() as u64),
        Err(errno) => Err(Short {
            errno,
            copied: u64::try_from(arg.copy).unwrap_or(0),
        }),
    }
}

/// UFFDIO_ZEROPAGE: maps the zero page over `start..start+len` and wakes its waiters.
pub fn zero(uffd: BorrowedFd<'_>, start: u64, len: u64) -> Result<(), Errno> {
    let mut arg = ZeroPage {
        range: Range { start, len },
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: ZEROPAGE takes a `struct uffdio_zeropage`, mirrored by `ZeroPage`.
    unsafe { ioctl(uffd, Updater::<ZEROPAGE, ZeroPage>::new(&mut arg)) }
}

/// UFFDIO_UNREGISTER: faults in `start..start+len` are no longer reported.
pub fn unregister(uffd: BorrowedFd<'_>, start: u64, len: u64) -> Result<(), Errno> {
    let mut arg = Range { start, len };
    // SAFETY: UNREGISTER takes a `struct uffdio_range`, mirrored by `Range`.
    unsafe { ioctl(uffd, Updater::<UNREGISTER, Range>::new(&mut arg)) }
}

/// The descriptor a UFFD_EVENT_FORK message names: the kernel installed it in this process
/// while the message was read, so it is this process's to own and close.
pub fn adopt_fork_fd(raw: RawFd) -> Option<OwnedFd> {
    if raw < 0 {
        return None;
    }
    // Only a descriptor that is open here is taken; fcntl on a closed number fails.
    // SAFETY: the number is valid (just checked) and nothing else in haul knows it: the
    // kernel created it for the reader of this message.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    rustix::io::fcntl_getfd(fd).ok()?;
    // SAFETY: as above; ownership passes to the returned OwnedFd, which closes it once.
    Some(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// UFFDIO_WAKE: wakes the threads waiting on `start..start+len` (a fault on a page that
/// another copy already filled).
pub fn wake(uffd: BorrowedFd<'_>, start: u64, len: u64) -> Result<(), Errno> {
    let mut arg = Range { start, len };
    // SAFETY: WAKE takes a `struct uffdio_range`, mirrored by `Range`.
    unsafe { ioctl(uffd, Updater::<WAKE, Range>::new(&mut arg)) }
}

/// A userfaultfd over fresh anonymous memory, as CRIU's restorer leaves a task's lazy memory
/// (tests of `dest::fill` without CRIU).
#[cfg(test)]
pub mod testing {
    use super::*;
    use rustix::mm::{MapFlags, ProtFlags};

    /// `struct uffdio_api`.
    #[repr(C)]
    struct Api {
        api: u64,
        features: u64,
        ioctls: u64,
    }

    /// `struct uffdio_register`.
    #[repr(C)]
    struct Register {
        range: Range,
        mode: u64,
        ioctls: u64,
    }

    const API: rustix::ioctl::Opcode = opcode::read_write::<Api>(GROUP, 0x3F);
    const REGISTER: rustix::ioctl::Opcode = opcode::read_write::<Register>(GROUP, 0x00);
    /// UFFD_FEATURE_EVENT_FORK | EVENT_REMAP | EVENT_REMOVE | EVENT_UNMAP, as CRIU asks.
    const FEATURES: u64 = 0x2 | 0x4 | 0x8 | 0x40;

    /// `pages` pages of private anonymous memory, never touched, unmapped on drop.
    pub struct Region {
        pub addr: u64,
        pub len: u64,
    }

    impl Region {
        pub fn new(pages: u64) -> Region {
            let len = pages * 4096;
            // SAFETY: a new private anonymous mapping that nothing else refers to.
            let p = unsafe {
                rustix::mm::mmap_anonymous(
                    std::ptr::null_mut(),
                    len as usize,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::PRIVATE,
                )
            }
            .unwrap();
            Region {
                addr: p as u64,
                len,
            }
        }

        /// A copy of page `i` (touching it: a fault the handler must answer).
        pub fn page(&self, i: u64) -> Vec<u8> {
            assert!(i * 4096 < self.len);
            let mut out = vec![0u8; 4096];
            // SAFETY: the page lies inside this mapping, which lives as long as `self`.
            unsafe {
                let src = (self.addr + i * 4096) as *const u8;
                for (k, b) in out.iter_mut().enumerate() {
                    *b = std::ptr::read_volatile(src.add(k));
                }
            }
            out
        }

        /// Drops pages `from..to` (MADV_DONTNEED: a REMOVE event).
        pub fn dont_need(&self, from: u64, to: u64) {
            // SAFETY: the range lies inside this mapping.
            unsafe {
                rustix::mm::madvise(
                    (self.addr + from * 4096) as *mut _,
                    ((to - from) * 4096) as usize,
                    rustix::mm::Advice::LinuxDontNeed,
                )
            }
            .unwrap();
        }

        /// Makes pages `from..to` read-only: the kernel splits the mapping there into VMAs of
        /// their own and tells no userfaultfd.
        pub fn read_only(&self, from: u64, to: u64) {
            // SAFETY: the range lies inside this mapping; nothing writes there afterwards.
            unsafe {
                rustix::mm::mprotect(
                    (self.addr + from * 4096) as *mut _,
                    ((to - from) * 4096) as usize,
                    rustix::mm::MprotectFlags::READ,
                )
            }
            .unwrap();
        }
    }

    impl Drop for Region {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`, no longer used.
            let _ = unsafe { rustix::mm::munmap(self.addr as *mut _, self.len as usize) };
        }
    }

    /// Why userfaultfd cannot be used here (QEMU's user mode does not emulate it), if so.
    pub fn unavailable() -> Option<String> {
        use rustix::mm::UserfaultfdFlags;
        // SAFETY: a new descriptor, closed on drop.
        match unsafe { rustix::mm::userfaultfd(UserfaultfdFlags::CLOEXEC) } {
            Ok(fd) => {
                let mut api = Api {
                    api: 0xAA,
                    features: FEATURES,
                    ioctls: 0,
                };
                // SAFETY: UFFDIO_API takes a `struct uffdio_api`, mirrored by `Api`.
                unsafe { ioctl(&fd, Updater::<API, Api>::new(&mut api)) }
                    .err()
                    .map(|e| format!("UFFDIO_API: {e}"))
            }
            Err(e) => Some(format!("userfaultfd: {e}")),
        }
    }

    /// A userfaultfd (non-blocking, with CRIU's features) with `r` registered for missing
    /// pages.
    pub fn register(r: &Region) -> OwnedFd {
        use rustix::mm::UserfaultfdFlags;
        // SAFETY: a new descriptor; the flags are valid.
        let fd = unsafe {
            rustix::mm::userfaultfd(UserfaultfdFlags::CLOEXEC | UserfaultfdFlags::NONBLOCK)
        }
        .unwrap();
        let mut api = Api {
            api: 0xAA,
            features: FEATURES,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API takes a `struct uffdio_api`, mirrored by `Api`.
        unsafe { ioctl(&fd, Updater::<API, Api>::new(&mut api)) }.unwrap();
        let mut reg = Register {
            range: Range {
                start: r.addr,
                len: r.len,
            },
            mode: 1,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER takes a `struct uffdio_register`, mirrored by `Register`.
        unsafe { ioctl(&fd, Updater::<REGISTER, Register>::new(&mut reg)) }.unwrap();
        fd
    }
}
