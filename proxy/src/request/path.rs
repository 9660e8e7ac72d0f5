//! Request-path normalization, done before any route or policy sees the path.
//!
//! A path policy is only as good as the path it is given: `/admin` must not be reachable as
//! `//admin`, `/./admin`, `/x/../admin`, `/%61dmin` or `/x/..;/admin`. [`normalize`] decodes
//! percent-encoded unreserved characters, collapses duplicate slashes and removes dot segments
//! (RFC 3986 §5.2.4). Anything whose meaning upstreams disagree on — an encoded `/` or `\`, a
//! literal `\`, control characters, broken percent-encoding — is refused, and the request gets
//! a 400.
//!
//! Two readings that upstreams disagree on are settled towards the stricter one:
//!
//! - Path parameters. Tomcat, Jetty and Spring cut a segment at its first `;` before they
//!   resolve dot segments, so to them `..;x` is `..`. Here a segment whose part before the
//!   first `;` (or `%3B`, for servers that decode first) is `.` or `..` counts as that dot
//!   segment, and goes with its parameters; no such segment is ever forwarded.
//! - Bytes outside ASCII. They are percent-encoded (`%C3%A9` for a raw `é`), byte for byte,
//!   never decoded into characters: the upstream receives exactly the octets the client sent,
//!   in the one spelling that routes and policies are matched against.
//!
//! Percent-escapes that stay escaped get upper-case hex digits (RFC 3986 §6.2.2.1), so that
//! `%c3%a9` and `%C3%A9` reach routes, policies and the upstream as the same path.
//!
//! [`normalize_target`] applies this to a whole request target as Pingora holds it and gives
//! the target to forward when it differs.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not an origin-form path (must start with `/`).
    NotAbsolute,
    /// `%` not followed by two hex digits.
    BadPercentEncoding,
    /// `%2F` or `%5C`: the upstream may or may not treat it as a separator.
    EncodedSeparator,
    /// A literal `\`, which some servers treat as `/`.
    Backslash,
    /// Control characters (raw or encoded), including NUL.
    ControlCharacter,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path must start with /",
            PathError::BadPercentEncoding => "the path has invalid percent-encoding",
            PathError::EncodedSeparator => "the path has an encoded slash or backslash",
            PathError::Backslash => "the path has a backslash",
            PathError::ControlCharacter => "the path has a control character",
        })
    }
}

/// The normalized form of `path` (no query), borrowed when it was already normal.
///
/// The result starts with `/`, is ASCII, has no empty segment but a trailing one, and no
/// segment that counts as `.` or `..`; normalizing it again changes nothing.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    Ok(match normalize_path(path.as_bytes())? {
        Some(normalized) => Cow::Owned(normalized),
        None => Cow::Borrowed(path),
    })
}

/// The request target to forward in place of the one received, or `None` when it is already
/// normal and goes on as it came.
///
/// `raw` is the target's bytes as the client sent them (Pingora's
/// `RequestHeader::raw_path()`); `parsed` is its path and query as Pingora parsed them
/// (`uri.path_and_query()`), whose path alone is used when `raw` is not in origin form.
/// Only the path is normalized: the query goes on byte for byte. A target not in origin form
/// (absolute form, or something Pingora could not place, such as `foo:/admin`) always
/// becomes the origin-form path that was judged, so that an upstream never reads a different
/// path out of it than the one routes and policies saw.
pub fn normalize_target(raw: &[u8], parsed: &str) -> Result<Option<Vec<u8>>, PathError> {
    if raw.first() == Some(&b'/') {
        let (path, query) = split_query(raw);
        return Ok(normalize_path(path)?.map(|p| join_query(p, query)));
    }
    let (path, query) = split_query(parsed.as_bytes());
    let path = match normalize_path(path)? {
        Some(p) => p,
        // Normal, so ASCII: `normalize_path` rewrites every byte outside ASCII.
        None => String::from_utf8_lossy(path).into_owned(),
    };
    Ok(Some(join_query(path, query)))
}

/// `target` cut at its first `?`: the path and, when there is one, the query (without `?`).
fn split_query(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    }
}

fn join_query(path: String, query: Option<&[u8]>) -> Vec<u8> {
    let mut target = path.into_bytes();
    if let Some(query) = query {
        target.reserve(1 + query.len());
        target.push(b'?');
        target.extend_from_slice(query);
    }
    target
}

/// The normalized form of `path`, or `None` when it is already normal.
fn normalize_path(bytes: &[u8]) -> Result<Option<String>, PathError> {
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast path: most paths have nothing to decode or encode, no `//`, and no dot segments.
    let mut simple = true;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | 0x80..=0xff => simple = false,
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            b'/' if bytes.get(i + 1) == Some(&b'/') => simple = false,
            b'.' if bytes[i - 1] == b'/' && is_dot_segment(&bytes[i..]) => simple = false,
            _ => {}
        }
    }
    if simple {
        return Ok(None);
    }

    let decoded = decode_unreserved(bytes)?;
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = decoded.split('/').skip(1).peekable();
    let mut trailing_slash = false;
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        if segment.is_empty() {
            trailing_slash = last;
            continue;
        }
        match dot_segment(segment) {
            Some(Dot::Current) => trailing_slash = last,
            Some(Dot::Parent) => {
                segments.pop();
                trailing_slash = last;
            }
            None => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    // Escapes alone send a path down here; one already in normal form is kept as it came.
    Ok((out.as_bytes() != bytes).then_some(out))
}

/// A segment that counts as `.` or `..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dot {
    Current,
    Parent,
}

/// Whether a decoded segment counts as a dot segment: its part before the first path
/// parameter (`;`, or `%3B` as decoding upstreams read it) is `.` or `..`.
fn dot_segment(segment: &str) -> Option<Dot> {
    let end = [segment.find(';'), segment.find("%3B")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(segment.len());
    match &segment[..end] {
        "." => Some(Dot::Current),
        ".." => Some(Dot::Parent),
        _ => None,
    }
}

/// Whether `rest` (starting at a segment's first byte, a `.`) is a `.` or `..` segment, with
/// or without parameters (`.;x`, `..;x`).
fn is_dot_segment(rest: &[u8]) -> bool {
    let rest = rest.strip_prefix(b"..").or_else(|| rest.strip_prefix(b"."));
    matches!(rest, Some([] | [b'/' | b';', ..]))
}

/// Decodes `%XX` when XX is an unreserved character; keeps other escapes (upper-cased) and
/// percent-encodes every byte outside ASCII as it is.
fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len() + bytes.len() / 2);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            if b.is_ascii() {
                out.push(char::from(b));
            } else {
                push_escape(&mut out, b);
            }
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 1..i + 3)
            .ok_or(PathError::BadPercentEncoding)?;
        let value = match (hex_value(hex[0]), hex_value(hex[1])) {
            (Some(h), Some(l)) => h << 4 | l,
            _ => return Err(PathError::BadPercentEncoding),
        };
        match value {
            b'/' | b'\\' => return Err(PathError::EncodedSeparator),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(value))
            }
            _ => push_escape(&mut out, value),
        }
        i += 3;
    }
    Ok(out)
}

/// Appends `%XX` for `byte`, upper-case hex.
fn push_escape(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0xf)]));
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/a", "/a/b/", "/a.b/c..d", "/a/.well-known/x"] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn bypass_attempts_collapse_to_the_same_path() {
        for p in [
            "//admin",
            "/./admin",
            "/x/../admin",
            "/%61dmin",
            "/%2e/admin",
            "/%2E%2E/admin",
            "/x/%2e%2e/admin",
            "///admin",
            "/../admin",
            "/../../admin",
            "/admin/.",
            "/ADMIN/../admin",
        ] {
            let n = normalize(p).unwrap();
            assert!(n == "/admin" || n == "/admin/", "{p} -> {n}");
        }
    }

    #[test]
    fn dot_segments_and_trailing_slashes() {
        assert_eq!(normalize("/a/b/..").unwrap(), "/a/");
        assert_eq!(normalize("/a/b/../").unwrap(), "/a/");
        assert_eq!(normalize("/a//").unwrap(), "/a/");
        assert_eq!(normalize("/..").unwrap(), "/");
        assert_eq!(normalize("/a/./b").unwrap(), "/a/b");
        assert_eq!(normalize("/a/%7euser").unwrap(), "/a/~user");
        assert_eq!(normalize("/a%20b").unwrap(), "/a%20b");
        assert_eq!(normalize("/a%c3%a9").unwrap(), "/a%C3%A9");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(normalize("/admin%2fx"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/admin%2F"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a%5cadmin"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a\\admin"), Err(PathError::Backslash));
        assert_eq!(normalize("/a%00"), Err(PathError::ControlCharacter));
        assert_eq!(normalize("/a%0a"), Err(PathError::ControlCharacter));
        assert_eq!(normalize("/a%"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize("a"), Err(PathError::NotAbsolute));
        assert_eq!(normalize(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn path_parameters_on_dot_segments_count_as_dot_segments() {
        for (p, want) in [
            ("/open/..;/secret", "/secret"),
            ("/open/..;x/secret", "/secret"),
            ("/open/..;jsessionid=1;a=b/secret", "/secret"),
            ("/open/.;x/secret", "/open/secret"),
            ("/open/.;/secret", "/open/secret"),
            ("/open/%2e%2e;/secret", "/secret"),
            ("/open/%2E.;x/secret", "/secret"),
            ("/open/..%3b/secret", "/secret"),
            ("/open/..%3Bx/secret", "/secret"),
            ("/open/%2e%2e%3b/secret", "/secret"),
            ("/open/.%3b/secret", "/open/secret"),
            ("/open/a/..;/..;/secret", "/secret"),
            ("/open/..;", "/"),
            ("/open/x/..;x", "/open/"),
            ("/..;/..;/secret", "/secret"),
        ] {
            assert_eq!(normalize(p).unwrap(), want, "{p}");
        }
        // Only the part before the first parameter decides: these are ordinary names.
        for p in [
            "/a/b;c/d",
            "/a/...;x/b",
            "/a/..x;/b",
            "/a/x..;/b",
            "/a/;../b",
            "/a/;x",
        ] {
            assert_eq!(normalize(p).unwrap(), p, "{p}");
        }
        assert_eq!(normalize("/a/..x%3b/b").unwrap(), "/a/..x%3B/b");
    }

    #[test]
    fn bytes_outside_ascii_are_percent_encoded_as_they_came() {
        let raw = "/caf\u{e9}//x/../y";
        assert_eq!(normalize(raw).unwrap(), "/caf%C3%A9/y");
        assert_eq!(normalize("/caf\u{e9}").unwrap(), "/caf%C3%A9");
        assert_eq!(normalize("/\u{1F600}").unwrap(), "/%F0%9F%98%80");
        // Escapes the client sent stay the same octets (hex digits upper-cased).
        assert_eq!(normalize("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert!(matches!(
            normalize("/caf%C3%A9"),
            Ok(Cow::Borrowed("/caf%C3%A9"))
        ));
        // Bytes that are not UTF-8 at all are kept too.
        assert_eq!(
            normalize_target(b"/caf\xe9/../x\xff", "").unwrap().unwrap(),
            b"/x%FF"
        );
    }

    #[test]
    fn targets_keep_their_query_and_come_back_only_when_changed() {
        let target = |raw: &[u8], parsed: &str| normalize_target(raw, parsed).unwrap();
        assert_eq!(target(b"/a/b?x=1", "/a/b?x=1"), None);
        assert_eq!(target(b"/", "/"), None);
        assert_eq!(
            target(b"/caf\xc3\xa9//x/../y?q=caf\xc3\xa9&r=/../", "unused"),
            Some(b"/caf%C3%A9/y?q=caf\xc3\xa9&r=/../".to_vec())
        );
        assert_eq!(
            target(b"/open/..;/secret?a", "unused"),
            Some(b"/secret?a".to_vec())
        );
        assert_eq!(target(b"/a?", "/a?"), None);
        assert_eq!(target(b"/a//?", "/a//?"), Some(b"/a/?".to_vec()));
        assert_eq!(
            normalize_target(b"/a%2f", "/a%2f"),
            Err(PathError::EncodedSeparator)
        );
    }

    #[test]
    fn targets_not_in_origin_form_become_the_path_that_was_judged() {
        let target = |raw: &[u8], parsed: &str| normalize_target(raw, parsed).unwrap();
        assert_eq!(
            target(
                b"http://app.localhost/open/..;/secret?q",
                "/open/..;/secret?q"
            ),
            Some(b"/secret?q".to_vec())
        );
        assert_eq!(
            target(b"http://app.localhost/a/b", "/a/b"),
            Some(b"/a/b".to_vec())
        );
        // Pingora cannot place a path in `foo:/admin` and judges it as `/`: so is it sent.
        assert_eq!(target(b"foo:/admin", "/"), Some(b"/".to_vec()));
        assert_eq!(normalize_target(b"*", "*"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn normal_forms_are_fixed_points() {
        for p in [
            "/a/./b/../c//d/",
            "/open/..;/secret",
            "/caf\u{e9}/%c3%a9/%7e/..%3b/x",
            "/a/.;/b/..;x/c;d/%2E%2e%3Bq/e",
            "/%41%42/..",
            "/x/;/../y",
        ] {
            let once = normalize(p).unwrap().into_owned();
            assert!(once.starts_with('/') && once.is_ascii(), "{p} -> {once}");
            assert!(
                once.split('/').all(|s| dot_segment(s).is_none()),
                "{p} -> {once}"
            );
            assert!(
                matches!(normalize(&once), Ok(Cow::Borrowed(_))),
                "{p} -> {once}"
            );
        }
    }
}
