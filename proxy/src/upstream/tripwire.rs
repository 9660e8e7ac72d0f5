//! A socket of a request in progress that another task may shut down.
//!
//! Pingora gives nothing outside a request a handle on it while it waits: not for the upstream's
//! response, not on an idle websocket. shutdown(2) on one of the request's sockets is what ends
//! such a wait (Pingora's read returns end of file), so a [`Tripwire`] holds a socket for a task
//! that may have to end one: the route's deadline ([`crate::upstream::deadline`]) or the re-check of a
//! live stream ([`crate::upstream::streams`]).
//!
//! It is only safe while the socket is the request's. The request arms the tripwire with a
//! descriptor it owns at that moment and disarms it before Pingora may close the connection or
//! return it to its pool; disarming and tripping take the same lock, so once `disarm` returns
//! nothing is shut down. Where Pingora closes a connection before any hook runs (some error
//! paths), the descriptor number may be handed out again by the kernel: the tripwire keeps the
//! socket's kernel cookie (`SO_COOKIE`, never reused while the kernel runs) and shuts the number
//! down only if it still names that socket.
//!
//! Reading the cookie is a system call. An upstream connection serves request after request,
//! so [`upstream_socket`] reads it once per connection: it keeps each connection's cookie by
//! the socket digest Pingora makes when it opens the connection (one per socket, for the
//! socket's whole life).

use std::cell::RefCell;
use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex, Weak};

use pingora::protocols::l4::ext::get_socket_cookie;
use pingora::protocols::SocketDigest;
use tracing::debug;

/// A socket another task may shut down, while armed.
#[derive(Debug, Default)]
pub struct Tripwire {
    socket: Mutex<Option<Socket>>,
}

/// A socket by descriptor number and kernel cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Socket {
    fd: RawFd,
    cookie: u64,
}

impl Socket {
    /// The socket `fd` names now; `None` when its cookie cannot be read.
    pub fn of(fd: RawFd) -> Option<Socket> {
        match get_socket_cookie(fd) {
            Ok(cookie) => Some(Socket { fd, cookie }),
            Err(e) => {
                debug!(error = %e, fd, "tripwire: cannot read the socket cookie");
                None
            }
        }
    }
}

/// An upstream connection this thread has seen, by its socket digest. The `Weak` keeps the
/// digest's allocation, so no other digest can take its address while the entry exists: an
/// entry whose address matches is that very digest's.
struct Known {
    digest: Weak<SocketDigest>,
    socket: Socket,
}

thread_local! {
    /// By descriptor number: the last upstream connection this thread saw under that number
    /// (one entry per number, so the table is as long as the highest number seen).
    static KNOWN: RefCell<Vec<Option<Known>>> = const { RefCell::new(Vec::new()) };
}

/// The upstream socket `fd`, which must be open and this request's now, with `digest` its
/// Pingora socket digest when known. The cookie is read from the kernel the first time this
/// thread sees the connection, then taken from memory while the connection lives.
pub fn upstream_socket(fd: RawFd, digest: Option<&Arc<SocketDigest>>) -> Option<Socket> {
    let (Some(digest), Ok(slot)) = (digest, usize::try_from(fd)) else {
        return Socket::of(fd);
    };
    KNOWN.with_borrow_mut(|known| {
        if let Some(Some(k)) = known.get(slot) {
            if Weak::as_ptr(&k.digest) == Arc::as_ptr(digest) {
                return Some(k.socket);
            }
        }
        let socket = Socket::of(fd)?;
        if known.len() <= slot {
            known.resize_with(slot + 1, || None);
        }
        if let Some(entry) = known.get_mut(slot) {
            *entry = Some(Known {
                digest: Arc::downgrade(digest),
                socket,
            });
        }
        Some(socket)
    })
}

// === impl Tripwire ===

impl Tripwire {
    /// Arms the tripwire with `fd`, which must be open and belong to the request now (it
    /// replaces any socket armed before). False when the socket cannot be identified; the
    /// tripwire is disarmed then.
    pub fn arm(&self, fd: RawFd) -> bool {
        self.arm_socket(Socket::of(fd))
    }

    /// Arms the tripwire with `socket` (see [`Tripwire::arm`]); `None` disarms it.
    pub fn arm_socket(&self, socket: Option<Socket>) -> bool {
        let armed = socket.is_some();
        *self.lock() = socket;
        armed
    }

    /// Whether a socket is armed (until `disarm` or `trip`).
    pub fn is_armed(&self) -> bool {
        self.lock().is_some()
    }

    /// From when this returns, nothing is shut down.
    pub fn disarm(&self) {
        self.lock().take();
    }

    /// Shuts the armed socket down (both directions) and disarms. Whether a socket was shut
    /// down.
    pub fn trip(&self) -> bool {
        let mut socket = self.lock();
        let Some(s) = socket.take() else {
            return false;
        };
        match get_socket_cookie(s.fd) {
            Ok(cookie) if cookie == s.cookie => {
                match nix::sys::socket::shutdown(s.fd, nix::sys::socket::Shutdown::Both) {
                    Ok(()) => true,
                    Err(e) => {
                        debug!(error = %e, "tripwire: shutdown failed");
                        false
                    }
                }
            }
            _ => {
                debug!(fd = s.fd, "tripwire: the socket is gone already");
                false
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Socket>> {
        self.socket.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::io::AsRawFd as _;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn works(a: &TcpStream, b: &TcpStream) -> bool {
        let mut buf = [0u8; 1];
        let mut b = b;
        let mut a = a;
        a.write_all(b"x").is_ok() && b.read_exact(&mut buf).is_ok() && &buf == b"x"
    }

    #[test]
    fn tripping_shuts_the_socket_down() {
        let (client, mut server) = pair();
        let wire = Tripwire::default();
        assert!(wire.arm(client.as_raw_fd()));
        assert!(wire.trip());
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).unwrap(), 0, "the peer sees the close");
        assert!(!wire.trip(), "once");
    }

    #[test]
    fn a_disarmed_tripwire_shuts_nothing_down() {
        let (client, server) = pair();
        let wire = Tripwire::default();
        assert!(!wire.trip(), "never armed");
        assert!(wire.arm(client.as_raw_fd()));
        wire.disarm();
        assert!(!wire.trip());
        assert!(works(&client, &server) && works(&server, &client));
    }

    #[test]
    fn an_upstream_connection_s_cookie_is_read_once() {
        let (client, _server) = pair();
        let fd = client.as_raw_fd();
        let digest = Arc::new(SocketDigest::from_raw_fd(fd));
        let first = upstream_socket(fd, Some(&digest)).unwrap();
        assert_eq!(Some(first), Socket::of(fd));
        assert_eq!(upstream_socket(fd, None), Some(first), "no digest: read");
        // Another socket under the same number and the same digest (Pingora never does this:
        // a digest is made with its socket) gets the remembered cookie: it was not read again.
        drop(client);
        let (other, _other_peer) = pair();
        if other.as_raw_fd() == fd {
            let now = Socket::of(fd).unwrap();
            assert_ne!(now, first);
            assert_eq!(upstream_socket(fd, Some(&digest)), Some(first));
            // The new socket's own digest reads the new cookie.
            let fresh = Arc::new(SocketDigest::from_raw_fd(fd));
            assert_eq!(upstream_socket(fd, Some(&fresh)), Some(now));
        }
        // A digest for another number is not taken for this one.
        let (third, _third_peer) = pair();
        assert_eq!(
            upstream_socket(third.as_raw_fd(), Some(&digest)),
            Socket::of(third.as_raw_fd())
        );
    }

    #[test]
    fn one_entry_per_descriptor_number() {
        let mut highest = 0;
        for _ in 0..300 {
            let (client, _server) = pair();
            let digest = Arc::new(SocketDigest::from_raw_fd(client.as_raw_fd()));
            assert!(upstream_socket(client.as_raw_fd(), Some(&digest)).is_some());
            highest = highest.max(client.as_raw_fd() as usize);
        }
        let kept = KNOWN.with_borrow(|known| known.iter().flatten().count());
        assert!(
            kept <= highest + 1,
            "{kept} entries for numbers up to {highest}"
        );
        assert!(kept < 100, "{kept} entries kept for 300 connections");
    }

    #[test]
    fn a_descriptor_number_handed_out_again_is_left_alone() {
        let (client, _server) = pair();
        let wire = Tripwire::default();
        assert!(wire.arm(client.as_raw_fd()));
        drop(client);
        // The kernel hands out the lowest free number, so one of these likely reuses it.
        let (other, other_peer) = pair();
        assert!(!wire.trip());
        assert!(works(&other, &other_peer) && works(&other_peer, &other));
    }
}
