//! Session cookies opened recently: the sealed value a client sends, mapped to the session id
//! it names and the time it expires.
//!
//! A client sends the same sealed value with every request, and opening it (base64, AES-256-GCM,
//! JSON) cost about 5,400 instructions per request under callgrind, the largest part of what
//! authorization added to a request. A hit here costs a hash of the value and one comparison.
//!
//! What is kept is exactly what opening the value says, and only for values that opened: a
//! lookup compares the whole value (never a hash of it alone), in constant time as for any
//! secret, and the expiry is checked on every hit, so a hit answers what opening would have
//! answered. The cookie key cannot change
//! while the process runs (`cookie_secret` is restart-only). Whether the session is still live
//! is not decided here: the caller looks the id up in the session cache as before.
//!
//! Bounded: [`SHARDS`] maps of at most `max_entries / SHARDS` values each (about 270 bytes an
//! entry); a full shard is emptied and refills from the next requests.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use hashbrown::{DefaultHashBuilder, Equivalent, HashMap};
use portcullis_auth::{Cipher, SessionCookie};

/// Lock shards, so that the threads of a busy proxy rarely wait for one another.
const SHARDS: usize = 16;

/// What a session cookie value says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub session_id: Arc<str>,
    pub expires_at: i64,
}

/// One lock's share of the values.
type Shard = HashMap<Sealed, Opened, DefaultHashBuilder>;

/// A kept sealed value. It and the [`Presented`] value a lookup carries hash the same bytes the
/// same way, and compare in constant time.
#[derive(PartialEq, Eq)]
struct Sealed(Box<[u8]>);

/// A sealed value as a request presents it.
struct Presented<'a>(&'a [u8]);

impl Hash for Sealed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.0);
    }
}

impl Hash for Presented<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

impl Equivalent<Sealed> for Presented<'_> {
    fn equivalent(&self, key: &Sealed) -> bool {
        constant_time_eq::constant_time_eq(self.0, &key.0)
    }
}

/// Recently opened session cookie values (see the module documentation).
pub struct OpenedCookies {
    shards: Box<[RwLock<Shard>]>,
    per_shard: usize,
}

impl OpenedCookies {
    /// Keeps at most about `max_entries` values.
    pub fn new(max_entries: usize) -> Self {
        let per_shard = (max_entries / SHARDS).max(1);
        OpenedCookies {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::default()))
                .collect(),
            per_shard,
        }
    }

    /// What the sealed `value` says, when it opens with `cipher` and has not expired at
    /// `now_unix`; the same answer as [`SessionCookie::open`].
    pub fn open(&self, cipher: &Cipher, value: &str, now_unix: i64) -> Option<Opened> {
        let shard = self.shard(value);
        let known = match shard.read() {
            Ok(map) => map.get(&Presented(value.as_bytes())).cloned(),
            Err(_) => None,
        };
        if let Some(opened) = known {
            return (now_unix < opened.expires_at).then_some(opened);
        }
        let cookie = SessionCookie::open(cipher, value, now_unix)?;
        let opened = Opened {
            session_id: cookie.session_id.into(),
            expires_at: cookie.expires_at,
        };
        if let Ok(mut map) = shard.write() {
            if map.len() >= self.per_shard {
                map.clear();
            }
            map.insert(Sealed(value.as_bytes().into()), opened.clone());
        }
        Some(opened)
    }

    /// How many values are kept now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shard by the value's last character: the end of the GCM tag, so spread evenly over
    /// the values that open (only those are kept).
    fn shard(&self, value: &str) -> &RwLock<Shard> {
        let last = value.as_bytes().last().copied().unwrap_or(0);
        &self.shards[usize::from(last) % SHARDS]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_auth::Secret;

    fn cipher(byte: u8) -> Cipher {
        Cipher::new(&Secret::from_bytes([byte; 32]))
    }

    fn seal(cipher: &Cipher, id: &str, expires_at: i64) -> String {
        SessionCookie {
            session_id: id.into(),
            issued_at: 0,
            expires_at,
        }
        .seal(cipher)
    }

    #[test]
    fn a_kept_value_answers_as_opening_it_would() {
        let c = cipher(1);
        let memo = OpenedCookies::new(1024);
        let value = seal(&c, "s1", 1_000);
        let first = memo.open(&c, &value, 10).expect("opens");
        assert_eq!(&*first.session_id, "s1");
        assert_eq!(memo.len(), 1);
        // Answered from the memo: a cipher that cannot open it gets the same answer...
        let other = cipher(2);
        assert_eq!(memo.open(&other, &value, 20), Some(first));
        // ...but never past the cookie's expiry.
        assert_eq!(memo.open(&c, &value, 1_000), None);
    }

    #[test]
    fn only_values_that_open_are_kept_and_the_whole_value_must_match() {
        let c = cipher(1);
        let memo = OpenedCookies::new(1024);
        let value = seal(&c, "s1", 1_000);
        assert!(memo.open(&c, &value, 10).is_some());
        // The same value with one character changed does not open and is not kept.
        let mut tampered = value.clone().into_bytes();
        tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ASCII");
        assert_eq!(memo.open(&c, &tampered, 10), None);
        assert_eq!(memo.open(&c, "garbage", 10), None);
        assert_eq!(memo.len(), 1);
        // Expired at sealing time: not kept either.
        assert_eq!(memo.open(&c, &seal(&c, "s2", 5), 10), None);
        assert_eq!(memo.len(), 1);
    }

    #[test]
    fn the_memo_stays_within_its_bound() {
        let c = cipher(1);
        let memo = OpenedCookies::new(64);
        for i in 0..2_000 {
            let value = seal(&c, &format!("s{i}"), 1_000);
            assert_eq!(
                memo.open(&c, &value, 10).map(|o| o.session_id.to_string()),
                Some(format!("s{i}"))
            );
            assert!(memo.len() <= 64, "{} values kept", memo.len());
        }
        assert!(memo.len() >= 16, "the memo keeps values: {}", memo.len());
    }
}
