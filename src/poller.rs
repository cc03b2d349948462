//! File-descriptor readiness for `add_reader`/`add_writer` (asyncio: the selector in
//! `selector_events.py`), on top of mio.
//!
//! asyncio's readers and writers are level-triggered: a reader that leaves data in the
//! socket is called again on the next iteration. mio registers edge-triggered (EPOLLET), so
//! every fd that reported an event is *re-armed* before the next poll with
//! `EPOLL_CTL_MOD`, which makes the kernel re-check readiness and report it again if it
//! still holds (epoll re-checks a queued item before returning it, so a re-arm for an fd that
//! was drained meanwhile reports nothing). That costs one syscall per fired fd, paid only by
//! user-level readers; Rust-owned sockets use the edge-triggered events directly.
//!
//! Stale events: an event is turned into the reader/writer handle at the moment the poll
//! returns, and `remove_reader` cancels that handle, so a callback that closes an fd and
//! opens another with the same number in the same batch never makes the old handle run
//! for the new owner. Re-arming never *adds* a registration, it only modifies one the map
//! still holds, so a re-arm of a closed-and-reused fd cannot register a stranger's fd.
//!
//! One registration per fd: the loop's own operations on an fd (native `sock_*` waits) add
//! their interest to the same entry as its reader and writer, under the same token, so that
//! registering one never takes the others' events away (epoll keeps one registration per
//! file descriptor).
//!
//! Generic over the stored item, with no PyO3 types: `cargo test` covers it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::fd::RawFd;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// Hashes an fd number with one multiplication. Discussion: the loop looks fds up several
/// times per I/O event (its registrations, transports, native waits); the default SipHash
/// cost a few percent of a `sock_recv` echo. Fd numbers come from the kernel, not from an
/// adversary, so no keyed hash is needed.
#[derive(Default)]
pub struct FdHasher(u64);

impl Hasher for FdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_i32(&mut self, n: i32) {
        // Fibonacci hashing: the multiplication spreads small numbers over the high bits,
        // which the table's control bytes use, and keeps the low ones distinct.
        self.0 = u64::from(n as u32).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by fd numbers.
pub type FdMap<V> = HashMap<RawFd, V, BuildHasherDefault<FdHasher>>;

/// Which side of an fd a registration is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Read,
    Write,
}

impl Side {
    /// The poller interest that reports this side.
    pub fn interest(self) -> Interest {
        match self {
            Side::Read => Interest::READABLE,
            Side::Write => Interest::WRITABLE,
        }
    }
}

/// The interest that reports the wanted sides, if any.
pub fn interest_of(read: bool, write: bool) -> Option<Interest> {
    match (read, write) {
        (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
        (true, false) => Some(Interest::READABLE),
        (false, true) => Some(Interest::WRITABLE),
        (false, false) => None,
    }
}

struct FdEntry<T> {
    reader: Option<T>,
    writer: Option<T>,
    /// What the loop's own operations on this fd (native `sock_*` waits) need reported.
    native: Option<Interest>,
}

impl<T> FdEntry<T> {
    /// Everything the fd is registered for: its reader, its writer and the native waits.
    fn interest(&self) -> Option<Interest> {
        let own = interest_of(self.reader.is_some(), self.writer.is_some());
        match (own, self.native) {
            (Some(a), Some(b)) => Some(a | b),
            (a, b) => a.or(b),
        }
    }
    fn slot(&mut self, side: Side) -> &mut Option<T> {
        match side {
            Side::Read => &mut self.reader,
            Side::Write => &mut self.writer,
        }
    }
}

/// One readiness report: which fd, and which sides are ready (errors and hang-ups make
/// both sides ready, as asyncio's `EpollSelector` does).
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    pub fd: RawFd,
    pub readable: bool,
    pub writable: bool,
    /// The peer shut its side or the socket has an error: reads will not block any more.
    pub hangup: bool,
}

impl Ready {
    pub fn from_event(ev: &mio::event::Event) -> Ready {
        let err = ev.is_error();
        Ready {
            fd: ev.token().0 as RawFd,
            readable: ev.is_readable() || ev.is_read_closed() || err,
            writable: ev.is_writable() || ev.is_write_closed() || err,
            hangup: ev.is_read_closed() || err,
        }
    }
}

/// The fd → (reader, writer) map and its kernel registrations.
pub struct IoMap<T> {
    entries: FdMap<FdEntry<T>>,
    rearm: Vec<RawFd>,
}

impl<T> Default for IoMap<T> {
    fn default() -> Self {
        Self::new()
    }
}

fn is_errno(e: &io::Error, code: i32) -> bool {
    e.raw_os_error() == Some(code)
}

/// Brings the kernel's registration of `fd` from `before` to `after` (skipped when they
/// are equal, unless `force`).
fn apply(
    registry: &Registry,
    fd: RawFd,
    before: Option<Interest>,
    after: Option<Interest>,
    force: bool,
) -> io::Result<()> {
    let token = Token(fd as usize);
    match (before, after) {
        (None, Some(i)) => match registry.register(&mut SourceFd(&fd), token, i) {
            Err(e) if is_errno(&e, libc::EEXIST) => {
                registry.reregister(&mut SourceFd(&fd), token, i)
            }
            r => r,
        },
        (Some(b), Some(i)) if force || b != i => {
            match registry.reregister(&mut SourceFd(&fd), token, i) {
                Err(e) if is_errno(&e, libc::ENOENT) => {
                    registry.register(&mut SourceFd(&fd), token, i)
                }
                r => r,
            }
        }
        (Some(_), None) => {
            // A closed fd has already left the epoll set: nothing to undo.
            let _ = registry.deregister(&mut SourceFd(&fd));
            Ok(())
        }
        _ => Ok(()),
    }
}

impl<T> IoMap<T> {
    pub fn new() -> Self {
        IoMap {
            entries: FdMap::default(),
            rearm: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sets (or with `None` clears) the reader or writer of `fd`, updating the kernel
    /// registration. Returns the previous item. On error nothing changes.
    pub fn set(
        &mut self,
        registry: &Registry,
        fd: RawFd,
        side: Side,
        item: Option<T>,
    ) -> io::Result<Option<T>> {
        let entry = self.entries.entry(fd).or_insert(FdEntry {
            reader: None,
            writer: None,
            native: None,
        });
        let before = entry.interest();
        let old = std::mem::replace(entry.slot(side), item);
        // Always tell the kernel, even if the interest is unchanged: the fd may have been
        // closed and its number reused since it was registered.
        match apply(registry, fd, before, entry.interest(), true) {
            Ok(()) => {
                self.remove_if_empty(fd);
                Ok(old)
            }
            Err(e) => {
                // Put things back as they were.
                if let Some(entry) = self.entries.get_mut(&fd) {
                    let new = std::mem::replace(entry.slot(side), old);
                    drop(new);
                }
                self.remove_if_empty(fd);
                Err(e)
            }
        }
    }

    /// Sets what the loop's own operations on `fd` need reported (`None`: nothing). The fd
    /// keeps one registration, shared with its reader and writer, so that none of them
    /// takes the others' events away. The kernel is told only if the interest changes,
    /// or always with `force` (the registration may belong to a closed file whose number
    /// was reused). On error nothing changes.
    pub fn set_native(
        &mut self,
        registry: &Registry,
        fd: RawFd,
        native: Option<Interest>,
        force: bool,
    ) -> io::Result<()> {
        let entry = self.entries.entry(fd).or_insert(FdEntry {
            reader: None,
            writer: None,
            native: None,
        });
        let before = entry.interest();
        let old = std::mem::replace(&mut entry.native, native);
        let result = apply(registry, fd, before, entry.interest(), force);
        if result.is_err() {
            if let Some(entry) = self.entries.get_mut(&fd) {
                entry.native = old;
            }
        }
        self.remove_if_empty(fd);
        result
    }

    /// What the loop's own operations on `fd` are registered for.
    pub fn native(&self, fd: RawFd) -> Option<Interest> {
        self.entries.get(&fd).and_then(|e| e.native)
    }

    /// Forgets the native interest of `fd` without telling the kernel: something else
    /// (a transport) registered the fd under its own token.
    pub fn forget_native(&mut self, fd: RawFd) {
        if let Some(entry) = self.entries.get_mut(&fd) {
            entry.native = None;
        }
        self.remove_if_empty(fd);
    }

    fn remove_if_empty(&mut self, fd: RawFd) {
        if self
            .entries
            .get(&fd)
            .is_some_and(|e| e.interest().is_none())
        {
            self.entries.remove(&fd);
        }
    }

    /// Whether `fd` is registered (for its reader, its writer or native waits).
    pub fn contains(&self, fd: RawFd) -> bool {
        self.entries.contains_key(&fd)
    }

    /// Whether `fd` has a reader or a writer.
    pub fn has_handles(&self, fd: RawFd) -> bool {
        self.entries
            .get(&fd)
            .is_some_and(|e| e.reader.is_some() || e.writer.is_some())
    }

    /// The reader or writer registered for `fd`, if any.
    pub fn get(&self, fd: RawFd, side: Side) -> Option<&T> {
        let e = self.entries.get(&fd)?;
        match side {
            Side::Read => e.reader.as_ref(),
            Side::Write => e.writer.as_ref(),
        }
    }

    /// Calls `f` with every item a readiness report wakes, and notes the fd for re-arming.
    pub fn dispatch(&mut self, ready: Ready, mut f: impl FnMut(&T)) {
        let Some(e) = self.entries.get(&ready.fd) else {
            return;
        };
        let mut woke = false;
        if ready.readable {
            if let Some(r) = &e.reader {
                f(r);
                woke = true;
            }
        }
        if ready.writable {
            if let Some(w) = &e.writer {
                f(w);
                woke = true;
            }
        }
        if woke {
            self.rearm.push(ready.fd);
        }
    }

    /// Re-arms every fd that fired since the last call, restoring level-triggered reports.
    pub fn rearm(&mut self, registry: &Registry) {
        for fd in self.rearm.drain(..) {
            if let Some(i) = self.entries.get(&fd).and_then(FdEntry::interest) {
                // Errors mean the fd was closed under us; the next `set` sorts it out.
                let _ = registry.reregister(&mut SourceFd(&fd), Token(fd as usize), i);
            }
        }
    }

    pub fn has_rearm(&self) -> bool {
        !self.rearm.is_empty()
    }

    /// Forgets every registration (the loop is closing), returning the items.
    pub fn clear(&mut self, registry: &Registry) -> Vec<T> {
        let mut out = Vec::new();
        for (fd, e) in self.entries.drain() {
            let _ = registry.deregister(&mut SourceFd(&fd));
            out.extend(e.reader);
            out.extend(e.writer);
        }
        self.rearm.clear();
        out
    }

    /// Visits every item (for the garbage collector's traversal).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries
            .values()
            .flat_map(|e| e.reader.iter().chain(e.writer.iter()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::time::Duration;

    fn pipe() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        assert_eq!(rc, 0);
        (fds[0], fds[1])
    }

    fn write(fd: RawFd, data: &[u8]) {
        // SAFETY: `data` is a valid buffer of `data.len()` bytes.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        assert_eq!(n as usize, data.len());
    }

    fn close(fd: RawFd) {
        // SAFETY: closing an fd this test owns.
        unsafe { libc::close(fd) };
    }

    fn poll_once(poll: &mut Poll, map: &mut IoMap<u32>) -> Vec<u32> {
        map.rearm(poll.registry());
        let mut events = Events::with_capacity(16);
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        let mut got = vec![];
        for ev in events.iter() {
            map.dispatch(Ready::from_event(ev), |x| got.push(*x));
        }
        got.sort();
        got
    }

    #[test]
    fn reader_is_level_triggered() {
        let mut poll = Poll::new().unwrap();
        let mut map = IoMap::new();
        let (r, w) = pipe();
        map.set(poll.registry(), r, Side::Read, Some(7)).unwrap();
        assert_eq!(poll_once(&mut poll, &mut map), Vec::<u32>::new());
        write(w, b"x");
        assert_eq!(poll_once(&mut poll, &mut map), vec![7]);
        // Nobody read the byte: it is reported again.
        assert_eq!(poll_once(&mut poll, &mut map), vec![7]);
        assert_eq!(poll_once(&mut poll, &mut map), vec![7]);
        close(r);
        close(w);
    }

    #[test]
    fn reader_and_writer_share_an_fd_and_remove_cleanly() {
        let mut poll = Poll::new().unwrap();
        let mut map = IoMap::new();
        let (r, w) = pipe();
        map.set(poll.registry(), w, Side::Write, Some(1)).unwrap();
        assert_eq!(poll_once(&mut poll, &mut map), vec![1]);
        assert_eq!(
            map.set(poll.registry(), w, Side::Write, None).unwrap(),
            Some(1)
        );
        assert!(map.is_empty());
        assert_eq!(poll_once(&mut poll, &mut map), Vec::<u32>::new());
        close(r);
        close(w);
    }

    #[test]
    fn replacing_keeps_one_registration_and_returns_old() {
        let mut poll = Poll::new().unwrap();
        let mut map = IoMap::new();
        let (r, w) = pipe();
        map.set(poll.registry(), r, Side::Read, Some(1)).unwrap();
        assert_eq!(
            map.set(poll.registry(), r, Side::Read, Some(2)).unwrap(),
            Some(1)
        );
        write(w, b"x");
        assert_eq!(poll_once(&mut poll, &mut map), vec![2]);
        close(r);
        close(w);
    }

    #[test]
    fn fd_closed_and_reused_is_registered_again() {
        let mut poll = Poll::new().unwrap();
        let mut map = IoMap::new();
        let (r, w) = pipe();
        map.set(poll.registry(), r, Side::Read, Some(1)).unwrap();
        close(r); // leaves the epoll set without remove_reader
        close(w);
        let (r2, w2) = pipe();
        // Likely the same numbers; either way the new owner must get its events.
        map.set(poll.registry(), r2, Side::Read, Some(2)).unwrap();
        write(w2, b"x");
        assert_eq!(poll_once(&mut poll, &mut map), vec![2]);
        close(r2);
        close(w2);
    }

    #[test]
    fn native_interest_and_a_writer_share_the_registration() {
        let mut poll = Poll::new().unwrap();
        let mut map = IoMap::new();
        let (r, w) = pipe();
        // A native wait for reading, then a writer on the same fd (a pipe's read end is
        // never writable: only the native interest can fire).
        map.set_native(poll.registry(), r, Some(Interest::READABLE), false)
            .unwrap();
        map.set(poll.registry(), r, Side::Write, Some(1)).unwrap();
        assert_eq!(map.native(r), Some(Interest::READABLE));
        write(w, b"x");
        let mut events = Events::with_capacity(16);
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        // The readable event still arrives (under the fd's own token).
        assert!(events
            .iter()
            .any(|e| e.token() == Token(r as usize) && e.is_readable()));
        // Removing the writer keeps the native interest registered.
        assert_eq!(
            map.set(poll.registry(), r, Side::Write, None).unwrap(),
            Some(1)
        );
        assert!(!map.is_empty());
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        assert!(events.iter().any(|e| e.token() == Token(r as usize)));
        map.set_native(poll.registry(), r, None, false).unwrap();
        assert!(map.is_empty());
        close(r);
        close(w);
    }

    #[test]
    fn bad_fd_is_an_error_and_leaves_no_entry() {
        let poll = Poll::new().unwrap();
        let mut map: IoMap<u32> = IoMap::new();
        let err = map
            .set(poll.registry(), 10_000, Side::Read, Some(1))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        assert!(map.is_empty());
    }
}
