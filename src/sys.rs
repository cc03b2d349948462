//! Raw syscalls on file descriptors, in one place (as mio keeps them): `recv`/`send` for
//! sockets, `read`/`write` for pipes and devices, and the per-thread scratch buffer reads go
//! through. Each returns `io::Result`; callers map errors with `errors::os_error`.

use std::os::fd::RawFd;

/// Runs `f` with this thread's receive buffer, at least `len` bytes long. Reading into it
/// and copying out exactly what arrived beats allocating (and zeroing) `len` bytes per read.
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0);
            }
            f(&mut buf[..len])
        }
        // Re-entered (cannot happen: no Python code runs inside `f`): use a fresh buffer.
        Err(_) => f(&mut vec![0; len]),
    })
}

pub fn would_block(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

pub fn recv(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; `fd` is a socket owned by the
    // transport's socket object, open while the transport is not closed.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `read(2)`, for pipes and character devices (`recv` needs a socket).
pub fn read_fd(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; `fd` is owned by the
    // transport's pipe object, open while the transport is not closed.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `write(2)`, for pipes and character devices. Python ignores SIGPIPE, so a reader that
/// went away gives EPIPE.
pub fn write_fd(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes; see `read_fd` for the fd.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

pub fn send(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes; see `recv` for the fd.
    // MSG_NOSIGNAL: a peer that went away must give EPIPE, not kill the process.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
