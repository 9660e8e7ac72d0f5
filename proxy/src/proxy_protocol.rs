//! The PROXY protocol (HAProxy's, version 1 in text and version 2 in binary) on the listener,
//! with `use_proxy_protocol`: a load balancer in front opens each connection with a header
//! naming the client's address, before any TLS or HTTP byte. The header is parsed by the `ppp`
//! crate; what this module does is read it off the connection within the head deadline and
//! put back whatever came after it.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::io::AsRawFd as _;

use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest as _, SocketDigest};
use ppp::v1;
use ppp::v2;
use ppp::{HeaderResult, PartialResult as _};
use tokio::io::AsyncReadExt as _;
use tokio::time::{timeout_at, Instant};

/// The largest header: a version 2 header with the largest payload its length field allows.
const MAX_HEADER_BYTES: usize = 16 + u16::MAX as usize;

/// A PROXY header read off a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection was proxied for this client.
    Proxied(SocketAddr),
    /// No client address: a version 2 `LOCAL` command (the proxy in front checking on this
    /// one), a version 1 `UNKNOWN`, or an address family other than IPv4 and IPv6. The
    /// connection's own address stands.
    Local,
}

/// Reads the PROXY header that must open `stream`, by `deadline`; the bytes read after it are
/// put back, to be read again by the TLS handshake or the first request head. `None` when no
/// valid header arrived in time (or the connection ended first): the connection is closed.
pub async fn read_header(stream: &mut L4Stream, deadline: Instant) -> Option<Header> {
    // Most headers arrive in one read: v1's longest is 107 bytes, v2's with IPv6 addresses 52.
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    loop {
        match timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
        let parsed = HeaderResult::parse(&buf);
        if parsed.is_incomplete() {
            if buf.len() >= MAX_HEADER_BYTES {
                return None;
            }
            continue;
        }
        let (len, header) = header_of(parsed)?;
        if let Some(rest) = buf.get(len..).filter(|rest| !rest.is_empty()) {
            stream.rewind(rest);
        }
        return Some(header);
    }
}

/// The address of the connection's other end, as Pingora reports it.
pub fn peer_ip(stream: &L4Stream) -> Option<IpAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
}

/// Makes `client` the connection's peer address as Pingora reports it (`Session::client_addr`),
/// where the request stage reads the client's address from.
pub fn set_client(stream: &mut L4Stream, client: SocketAddr) {
    let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
    // A new digest's address is unset: this cannot fail.
    let _ = digest.peer_addr.set(Some(client.into()));
    stream.set_socket_digest(digest);
}

/// The length and meaning of a complete parse; `None` for an invalid header.
fn header_of(parsed: HeaderResult<'_>) -> Option<(usize, Header)> {
    match parsed {
        HeaderResult::V1(Ok(h)) => {
            let header = match h.addresses {
                v1::Addresses::Tcp4(a) => {
                    Header::Proxied(SocketAddr::from((a.source_address, a.source_port)))
                }
                v1::Addresses::Tcp6(a) => {
                    Header::Proxied(SocketAddr::from((a.source_address, a.source_port)))
                }
                v1::Addresses::Unknown => Header::Local,
            };
            Some((h.header.len(), header))
        }
        HeaderResult::V2(Ok(h)) => {
            let header = match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Header::Proxied(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Header::Proxied(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => Header::Local,
            };
            Some((h.len(), header))
        }
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Option<(usize, Header)> {
        let parsed = HeaderResult::parse(bytes);
        assert!(parsed.is_complete(), "{bytes:?} is incomplete");
        header_of(parsed)
    }

    #[test]
    fn version_1_headers() {
        let proxied = |a: &str| Header::Proxied(a.parse().unwrap());
        let text = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\nGET /";
        assert_eq!(parse(text), Some((44, proxied("203.0.113.7:40000"))));
        let text = b"PROXY TCP6 2001:db8::7 ::1 40000 443\r\n";
        assert_eq!(
            parse(text),
            Some((text.len(), proxied("[2001:db8::7]:40000")))
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Some((15, Header::Local)));
        for bad in [
            &b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\n\r\n"[..],
            b"PROXY TCP4 203.0.113.999 127.0.0.1 40000 443\r\n",
            b"PROXY TCP9 203.0.113.7 127.0.0.1 40000 443\r\n",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert!(HeaderResult::parse(b"PROXY TCP4 203.0.113.7 127.0").is_incomplete());
    }

    #[test]
    fn version_2_headers() {
        use ppp::v2::{Builder, Command, Protocol, Version};
        let source: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let destination: SocketAddr = "127.0.0.1:443".parse().unwrap();
        let proxy = Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            (source, destination),
        )
        .build()
        .unwrap();
        assert_eq!(proxy.len(), 28);
        let mut with_more = proxy.clone();
        with_more.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(parse(&with_more), Some((28, Header::Proxied(source))));
        let local = Builder::with_addresses(
            Version::Two | Command::Local,
            Protocol::Stream,
            (source, destination),
        )
        .build()
        .unwrap();
        assert_eq!(parse(&local), Some((28, Header::Local)));
        assert!(HeaderResult::parse(&proxy[..20]).is_incomplete());
    }
}
