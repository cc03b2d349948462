//! The floor of ferroloop's benchmarks: the same servers as the Python workloads, with no Python
//! and no event loop library at all.
//!
//! One thread, nonblocking sockets, level-triggered epoll, one reused receive buffer, and each
//! reply written at once from it (only what the kernel does not take at once is copied, and the
//! connection stops reading until that is flushed).  What such a server spends per request is
//! about what the kernel's loopback path costs; a loop's figure above it is the loop's own cost.
//!
//! Usage: `ferroloop-floor echo|http|udp [--cpu N]`.  Binds 127.0.0.1 on a free port, prints
//! `{"port": P, "pid": PID}` on stdout once ready, then serves until killed.
//!
//! * `echo`: TCP; every byte read is written back.
//! * `http`: TCP; every request (up to its blank line, `\r\n\r\n`; bodies are not supported) is
//!   answered with the same fixed HTTP/1.1 response as the Python HTTP workload's server.
//! * `udp`: every datagram is sent back to where it came from.

use std::io::{self, Write};
use std::mem;
use std::process::exit;

/// Bytes read at a time: the same as the Python servers' receive size.
const BUF_SIZE: usize = 65536;
/// The fixed response of the HTTP workload (identical to the Python server's).
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, World!";
/// epoll user data of the listening (or UDP) socket; connections use their fd.
const LISTENER: u64 = u64::MAX;
const MAX_EVENTS: usize = 256;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Echo,
    Http,
    Udp,
}

/// A TCP connection: what the kernel did not take yet, and how much of `\r\n\r\n` was seen.
struct Conn {
    pending: Vec<u8>,
    sent: usize,
    matched: u8,
}

fn fail(what: &str) -> ! {
    eprintln!("ferroloop-floor: {what}: {}", io::Error::last_os_error());
    exit(1);
}

fn check(ret: libc::c_int, what: &str) -> libc::c_int {
    if ret < 0 {
        fail(what);
    }
    ret
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn would_block(err: i32) -> bool {
    err == libc::EAGAIN || err == libc::EWOULDBLOCK
}

fn pin_to_cpu(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        check(
            libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set),
            "sched_setaffinity",
        );
    }
}

fn loopback_any_port() -> libc::sockaddr_in {
    let mut addr: libc::sockaddr_in = unsafe { mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = 0;
    addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
    addr
}

/// A socket bound to 127.0.0.1 on a free port; returns (fd, port).
fn bind_socket(kind: libc::c_int) -> (libc::c_int, u16) {
    unsafe {
        let fd = check(
            libc::socket(libc::AF_INET, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0),
            "socket",
        );
        let one: libc::c_int = 1;
        check(
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                &one as *const _ as *const libc::c_void,
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            ),
            "setsockopt(SO_REUSEADDR)",
        );
        let addr = loopback_any_port();
        check(
            libc::bind(
                fd,
                &addr as *const _ as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            "bind",
        );
        let mut bound: libc::sockaddr_in = mem::zeroed();
        let mut len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        check(
            libc::getsockname(fd, &mut bound as *mut _ as *mut libc::sockaddr, &mut len),
            "getsockname",
        );
        (fd, u16::from_be(bound.sin_port))
    }
}

fn epoll_ctl(ep: libc::c_int, op: libc::c_int, fd: libc::c_int, events: u32, data: u64) {
    let mut ev = libc::epoll_event { events, u64: data };
    check(unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) }, "epoll_ctl");
}

/// Count the complete requests in `data`, carrying the partial `\r\n\r\n` match in `matched`.
fn count_requests(data: &[u8], matched: &mut u8) -> usize {
    let mut count = 0;
    let mut m = *matched;
    for &b in data {
        m = match (m, b) {
            (0 | 2, b'\r') => m + 1,
            (1 | 3, b'\n') => m + 1,
            (_, b'\r') => 1,
            _ => 0,
        };
        if m == 4 {
            count += 1;
            m = 0;
        }
    }
    *matched = m;
    count
}

/// Write `out` to `fd` now; keep what the kernel did not take.  Returns false if the connection
/// failed.
fn reply(ep: libc::c_int, fd: libc::c_int, conn: &mut Conn, out: &[u8]) -> bool {
    if out.is_empty() {
        return true;
    }
    let n = unsafe {
        libc::send(fd, out.as_ptr() as *const libc::c_void, out.len(), libc::MSG_NOSIGNAL)
    };
    let written = if n < 0 {
        if !would_block(errno()) {
            return false;
        }
        0
    } else {
        n as usize
    };
    if written < out.len() {
        conn.pending.extend_from_slice(&out[written..]);
        conn.sent = 0;
        // Stop reading until the rest is flushed (back-pressure, like a transport's pause).
        epoll_ctl(ep, libc::EPOLL_CTL_MOD, fd, libc::EPOLLOUT as u32, fd as u64);
    }
    true
}

/// Flush a connection's pending output.  Returns false if the connection failed.
fn flush(ep: libc::c_int, fd: libc::c_int, conn: &mut Conn) -> bool {
    while conn.sent < conn.pending.len() {
        let rest = &conn.pending[conn.sent..];
        let n = unsafe {
            libc::send(fd, rest.as_ptr() as *const libc::c_void, rest.len(), libc::MSG_NOSIGNAL)
        };
        if n < 0 {
            return would_block(errno());
        }
        conn.sent += n as usize;
    }
    conn.pending.clear();
    conn.sent = 0;
    epoll_ctl(ep, libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32, fd as u64);
    true
}

fn serve_tcp(mode: Mode, listener: libc::c_int, ep: libc::c_int) -> ! {
    let mut buf = vec![0u8; BUF_SIZE];
    let mut responses: Vec<u8> = Vec::new(); // pipelined HTTP requests: several responses
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
    loop {
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), MAX_EVENTS as i32, -1) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            fail("epoll_wait");
        }
        for ev in &events[..n as usize] {
            let (flags, data) = (ev.events, ev.u64);
            if data == LISTENER {
                loop {
                    let fd = unsafe {
                        libc::accept4(
                            listener,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    };
                    if fd < 0 {
                        let err = errno();
                        if would_block(err) {
                            break;
                        }
                        if err == libc::EINTR || err == libc::ECONNABORTED {
                            continue;
                        }
                        fail("accept4");
                    }
                    let one: libc::c_int = 1;
                    unsafe {
                        libc::setsockopt(
                            fd,
                            libc::IPPROTO_TCP,
                            libc::TCP_NODELAY,
                            &one as *const _ as *const libc::c_void,
                            mem::size_of::<libc::c_int>() as libc::socklen_t,
                        );
                    }
                    let index = fd as usize;
                    if conns.len() <= index {
                        conns.resize_with(index + 1, || None);
                    }
                    conns[index] = Some(Conn { pending: Vec::new(), sent: 0, matched: 0 });
                    epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, fd as u64);
                }
                continue;
            }
            let fd = data as libc::c_int;
            let Some(conn) = conns.get_mut(fd as usize).and_then(Option::as_mut) else {
                continue;
            };
            let alive = if !conn.pending.is_empty() {
                flush(ep, fd, conn)
            } else if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                let got = unsafe {
                    libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, BUF_SIZE, 0)
                };
                if got > 0 {
                    let data = &buf[..got as usize];
                    match mode {
                        Mode::Echo => reply(ep, fd, conn, data),
                        _ => match count_requests(data, &mut conn.matched) {
                            0 => true,
                            1 => reply(ep, fd, conn, RESPONSE),
                            k => {
                                responses.clear();
                                for _ in 0..k {
                                    responses.extend_from_slice(RESPONSE);
                                }
                                reply(ep, fd, conn, &responses)
                            }
                        },
                    }
                } else {
                    got < 0 && would_block(errno())
                }
            } else {
                true
            };
            if !alive {
                unsafe { libc::close(fd) };
                conns[fd as usize] = None;
            }
        }
    }
}

fn serve_udp(sock: libc::c_int, ep: libc::c_int) -> ! {
    let mut buf = vec![0u8; BUF_SIZE];
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
    loop {
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), MAX_EVENTS as i32, -1) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            fail("epoll_wait");
        }
        // One socket: read every datagram queued (at most 64 per wake-up), each sent back at once.
        for _ in 0..64 {
            let mut addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
            let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let got = unsafe {
                libc::recvfrom(
                    sock,
                    buf.as_mut_ptr() as *mut libc::c_void,
                    BUF_SIZE,
                    0,
                    &mut addr as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if got < 0 {
                let err = errno();
                if would_block(err) {
                    break;
                }
                if err == libc::EINTR || err == libc::ECONNREFUSED {
                    continue;
                }
                fail("recvfrom");
            }
            // A datagram the kernel cannot take now is dropped, as UDP does.
            unsafe {
                libc::sendto(
                    sock,
                    buf.as_ptr() as *const libc::c_void,
                    got as usize,
                    0,
                    &addr as *const _ as *const libc::sockaddr,
                    len,
                )
            };
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: ferroloop-floor echo|http|udp [--cpu N]");
    exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.first().map(String::as_str) {
        Some("echo") => Mode::Echo,
        Some("http") => Mode::Http,
        Some("udp") => Mode::Udp,
        _ => usage(),
    };
    match &args[1..] {
        [] => {}
        [flag, cpu] if flag == "--cpu" => pin_to_cpu(cpu.parse().unwrap_or_else(|_| usage())),
        _ => usage(),
    }
    let ep = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }, "epoll_create1");
    let kind = if mode == Mode::Udp { libc::SOCK_DGRAM } else { libc::SOCK_STREAM };
    let (sock, port) = bind_socket(kind);
    if mode != Mode::Udp {
        check(unsafe { libc::listen(sock, 1024) }, "listen");
    }
    epoll_ctl(ep, libc::EPOLL_CTL_ADD, sock, libc::EPOLLIN as u32, LISTENER);
    {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{{\"port\": {port}, \"pid\": {}}}", std::process::id());
        let _ = out.flush();
    }
    if mode == Mode::Udp {
        serve_udp(sock, ep)
    } else {
        serve_tcp(mode, sock, ep)
    }
}
