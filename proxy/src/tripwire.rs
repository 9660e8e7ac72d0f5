//! A socket of a request in progress that another task may shut down.
//!
//! Pingora gives nothing outside a request a handle on it while it waits: not for the upstream's
//! response, not on an idle websocket. shutdown(2) on one of the request's sockets is what ends
//! such a wait (Pingora's read returns end of file), so a [`Tripwire`] holds a socket for a task
//! that may have to end one: the route's deadline ([`crate::deadline`]) or the re-check of a
//! live stream ([`crate::streams`]).
//!
//! It is only safe while the socket is the request's. The request arms the tripwire with a
//! descriptor it owns at that moment and disarms it before Pingora may close the connection or
//! return it to its pool; disarming and tripping take the same lock, so once `disarm` returns
//! nothing is shut down. Where Pingora closes a connection before any hook runs (some error
//! paths), the descriptor number may be handed out again by the kernel: the tripwire keeps the
//! socket's kernel cookie (`SO_COOKIE`, never reused while the kernel runs) and shuts the number
//! down only if it still names that socket.

use std::os::unix::io::RawFd;
use std::sync::Mutex;

use pingora::protocols::l4::ext::get_socket_cookie;
use tracing::debug;

/// A socket another task may shut down, while armed.
#[derive(Debug, Default)]
pub struct Tripwire {
    socket: Mutex<Option<Socket>>,
}

/// A socket by descriptor number and kernel cookie.
#[derive(Debug, Clone, Copy)]
struct Socket {
    fd: RawFd,
    cookie: u64,
}

// === impl Tripwire ===

impl Tripwire {
    /// Arms the tripwire with `fd`, which must be open and belong to the request now (it
    /// replaces any socket armed before). False when the socket cannot be identified; the
    /// tripwire is disarmed then.
    pub fn arm(&self, fd: RawFd) -> bool {
        let socket = match get_socket_cookie(fd) {
            Ok(cookie) => Some(Socket { fd, cookie }),
            Err(e) => {
                debug!(error = %e, fd, "tripwire: cannot read the socket cookie");
                None
            }
        };
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
