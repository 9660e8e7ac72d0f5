//! Request-path normalization, done before any route or policy sees the path.
//!
//! A path policy is only as good as the path it is given: `/admin` must not be reachable as
//! `//admin`, `/./admin`, `/x/../admin` or `/%61dmin`. [`normalize`] decodes percent-encoded
//! unreserved characters, collapses duplicate slashes and removes dot segments (RFC 3986
//! §5.2.4). Anything whose meaning upstreams disagree on — an encoded `/` or `\`, a literal
//! `\`, control characters, broken percent-encoding — is refused, and the request gets a 400.

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
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast path: most paths have nothing to decode, no `//`, and no dot segments.
    let mut simple = true;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' => simple = false,
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            b'/' if bytes.get(i + 1) == Some(&b'/') => simple = false,
            b'.' if bytes[i - 1] == b'/' && is_dot_segment(&bytes[i..]) => simple = false,
            _ => {}
        }
    }
    if simple {
        return Ok(Cow::Borrowed(path));
    }

    let decoded = decode_unreserved(bytes)?;
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = decoded.split('/').skip(1).peekable();
    let mut trailing_slash = false;
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "" => trailing_slash = last,
            "." => trailing_slash = last,
            ".." => {
                segments.pop();
                trailing_slash = last;
            }
            s => {
                segments.push(s);
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
    Ok(Cow::Owned(out))
}

/// Whether `rest` (starting at a segment's first byte, a `.`) is a `.` or `..` segment.
fn is_dot_segment(rest: &[u8]) -> bool {
    matches!(
        rest,
        [b'.'] | [b'.', b'/', ..] | [b'.', b'.'] | [b'.', b'.', b'/', ..]
    )
}

/// Decodes `%XX` when XX is an unreserved character; keeps other escapes (upper-cased).
fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            // Raw non-ASCII bytes cannot appear: the input is a &str and the http crate only
            // admits visible ASCII in paths; push as char of the original str to be safe.
            out.push(b as char);
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
                out.push(value as char)
            }
            _ => {
                out.push('%');
                out.push(hex[0].to_ascii_uppercase() as char);
                out.push(hex[1].to_ascii_uppercase() as char);
            }
        }
        i += 3;
    }
    Ok(out)
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
}
