//! Raw syscalls on file descriptors, in one place (as mio keeps them): `recv`/`send` for
//! sockets, `read`/`write` for pipes and devices, and the per-thread scratch buffer reads go
//! through. Each returns `io::Result`; callers map errors with `errors::os_error`.

use std::os::fd::RawFd;

/// A syscall's `ssize_t` result: `-1` becomes the `errno` error.
fn cvt(n: isize) -> std::io::Result<usize> {
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

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

/// `recv(2)`. Never blocks (`MSG_DONTWAIT`), even on a socket left in blocking mode: the
/// callers hold the interpreter lock.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; `fd` is a socket owned by the
    // transport's socket object, open while the transport is not closed.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    cvt(n)
}

/// `recv` into the spare capacity of `buf` (no zeroing first); what arrives is appended.
pub fn recv_spare(fd: RawFd, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: `spare` is valid for writes of its length (uninitialised bytes the kernel
    // only writes); see `recv` for the fd.
    let n = unsafe {
        libc::recv(
            fd,
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    let n = cvt(n)?;
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// `read(2)`, for pipes and character devices (`recv` needs a socket).
pub fn read_fd(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; `fd` is owned by the
    // transport's pipe object, open while the transport is not closed.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    cvt(n)
}

/// `write(2)`, for pipes and character devices. Python ignores SIGPIPE, so a reader that
/// went away gives EPIPE.
pub fn write_fd(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes; see `read_fd` for the fd.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    cvt(n)
}

pub fn send(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes; see `recv` for the fd.
    // MSG_NOSIGNAL: a peer that went away must give EPIPE, not kill the process.
    // MSG_DONTWAIT: never block (see `recv`).
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), flags) };
    cvt(n)
}

/// A socket address as the kernel gives or takes it.
pub struct RawAddr {
    pub storage: libc::sockaddr_storage,
    pub len: libc::socklen_t,
}

impl RawAddr {
    fn empty() -> RawAddr {
        RawAddr {
            // SAFETY: all-zero bytes are a valid (unspecified-family) sockaddr_storage.
            storage: unsafe { std::mem::zeroed() },
            len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    /// The IPv4 or IPv6 address inside, if that is the family.
    pub fn to_socket_addr(&self) -> Option<std::net::SocketAddr> {
        use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
        match i32::from(self.storage.ss_family) {
            libc::AF_INET if self.len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family says this storage holds a sockaddr_in, and it is long
                // enough; sockaddr_storage is aligned for every sockaddr type.
                let sin = unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)).into())
            }
            libc::AF_INET6 if self.len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6 = unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(
                    SocketAddrV6::new(
                        ip,
                        u16::from_be(sin6.sin6_port),
                        u32::from_be(sin6.sin6_flowinfo),
                        sin6.sin6_scope_id,
                    )
                    .into(),
                )
            }
            _ => None,
        }
    }

    pub fn from_socket_addr(addr: &std::net::SocketAddr) -> RawAddr {
        let mut raw = RawAddr::empty();
        match addr {
            std::net::SocketAddr::V4(a) => {
                // SAFETY: writing a sockaddr_in into storage that is large and aligned enough.
                let sin = unsafe { &mut *(&mut raw.storage as *mut _ as *mut libc::sockaddr_in) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
                raw.len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            std::net::SocketAddr::V6(a) => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6 = unsafe { &mut *(&mut raw.storage as *mut _ as *mut libc::sockaddr_in6) };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_flowinfo = a.flowinfo().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                sin6.sin6_scope_id = a.scope_id();
                raw.len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        raw
    }
}

/// `recvfrom(2)`: one datagram and who sent it.
pub fn recvfrom(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, RawAddr)> {
    let mut addr = RawAddr::empty();
    // SAFETY: `buf` is valid for writes of its length; `addr.storage` is a writable
    // sockaddr_storage whose size is in `addr.len`, which the kernel updates.
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            &mut addr.storage as *mut _ as *mut libc::sockaddr,
            &mut addr.len,
        )
    };
    cvt(n).map(|n| (n, addr))
}

/// `sendto(2)`, or `send(2)` when `addr` is `None` (a connected socket).
pub fn sendto(fd: RawFd, buf: &[u8], addr: Option<&RawAddr>) -> std::io::Result<usize> {
    let (ptr, len) = match addr {
        Some(a) => (&a.storage as *const _ as *const libc::sockaddr, a.len),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: `buf` is valid for reads of its length; `ptr`/`len` describe a valid address
    // or are null/0, which sendto accepts for connected sockets.
    let n = unsafe {
        libc::sendto(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            ptr,
            len,
        )
    };
    cvt(n)
}

/// `writev(2)`: gathers `bufs` into one write (at most `IOV_MAX` of them per call).
pub fn writev(fd: RawFd, bufs: &[&[u8]]) -> std::io::Result<usize> {
    let iov: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: each iovec points into a live slice of `bufs` for the duration of the call;
    // writev only reads through them.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), iov.len().min(1024) as libc::c_int) };
    cvt(n)
}
