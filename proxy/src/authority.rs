//! A request's authority is its host **and** port. One rule decides which ports a configured
//! URL (a route's `from`, the authenticate URL) serves, and every place that reasons about
//! hosts asks it: route matching, Portcullis's own endpoints, signed return URLs, the
//! programmatic redirect and the handoff.

use url::Url;

/// The listener requests arrive on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// It speaks TLS.
    pub tls: bool,
    /// Its own port.
    pub port: u16,
}

impl Listener {
    /// The default port of the listener's scheme (443 with TLS, else 80): the port of a request
    /// whose `Host` names none.
    pub fn default_port(&self) -> u16 {
        if self.tls {
            443
        } else {
            80
        }
    }

    /// The port a request for `url` arrives on: its own, or its scheme's default.
    pub fn port_of(&self, url: &Url) -> u16 {
        url.port_or_known_default().unwrap_or(self.default_port())
    }

    /// Whether a configured URL with port `configured` (`None`: it names none) serves a request
    /// on `port`: a named port only itself; no port, the scheme's default port and the
    /// listener's own.
    pub fn serves(&self, configured: Option<u16>, port: u16) -> bool {
        match configured {
            Some(p) => p == port,
            None => port == self.default_port() || port == self.port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_port_serves_only_itself() {
        let l = Listener {
            tls: false,
            port: 8000,
        };
        assert!(l.serves(Some(9000), 9000));
        assert!(!l.serves(Some(9000), 8000));
        assert!(!l.serves(Some(9000), 80));
    }

    #[test]
    fn no_port_serves_the_default_and_the_listeners_port() {
        let plain = Listener {
            tls: false,
            port: 8000,
        };
        assert!(plain.serves(None, 80));
        assert!(plain.serves(None, 8000));
        assert!(!plain.serves(None, 443));
        assert!(!plain.serves(None, 1));
        let tls = Listener {
            tls: true,
            port: 8443,
        };
        assert!(tls.serves(None, 443));
        assert!(tls.serves(None, 8443));
        assert!(!tls.serves(None, 80));
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(plain.port_of(&url("http://a.test/")), 80);
        assert_eq!(plain.port_of(&url("http://a.test:1/")), 1);
        // A URL's scheme decides its default port: `https://a.test/` is never served by a
        // plain listener on another port.
        assert_eq!(plain.port_of(&url("https://a.test/")), 443);
        assert!(!plain.serves(None, plain.port_of(&url("https://a.test/"))));
        assert_eq!(tls.port_of(&url("https://a.test/")), 443);
    }
}
