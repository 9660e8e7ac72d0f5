//! Session cookies opened recently: a tag of the sealed value a client sends (and of the scope
//! it was presented for), mapped to the session id the value names, the time it expires, and
//! the cached session it led to last.
//!
//! A client sends the same sealed value with every request, and opening it (base64, AES-256-GCM,
//! JSON) is the largest part of what authorization adds to a request. A hit here costs one
//! SipHash of the value (about 150 ns for a 250-byte cookie) and one comparison.
//!
//! What is kept is exactly what opening the value says, and only for values that opened. The
//! key is a tag, not the value: SipHash-2-4 with its 128-bit output (a keyed PRF made for short
//! inputs), under a key drawn at start that never leaves the process, of the scope and the
//! value. A different value (or the same value on another host, or another port of the same
//! host) has the same tag only with the chance of guessing a 128-bit tag under an unknown key,
//! no better than forging the value's own AES-GCM tag; tags are compared in constant time. So a
//! hit answers what opening would have answered, and the memo holds no copy of the credential
//! (about 80 bytes a value, not the 200-odd of the value itself). The expiry is checked on every
//! hit. The cookie key cannot change while the process runs (`cookie_secret` is restart-only).
//!
//! Whether the session is still live is the session cache's to say. A kept value also points
//! (weakly) at the cached session its last lookup found, so that a steady client costs one
//! lookup per request, not two: the pointer is used only while the caller's test (the session
//! cache's [`SessionCache::is_current`](super::SessionCache::is_current)) says the session is
//! still what the cache would answer; otherwise the caller looks the id up as on a first visit
//! and [`OpenedCookies::attach`]es what it found. The pointer is weak, so the memo never keeps a
//! session's memory alive once the cache let it go.
//!
//! Bounded: [`SHARDS`] tables of at most `max_entries / SHARDS` values each; a full shard is
//! emptied and refills from the next requests.

use std::hash::Hasher as _;
use std::sync::{Arc, RwLock, Weak};

use hashbrown::HashTable;
use portcullis_auth::{Cipher, SessionCookie};
use siphasher::sip128::{Hasher128 as _, SipHasher24};

use super::CachedSession;

/// Lock shards, so that the threads of a busy proxy rarely wait for one another.
const SHARDS: usize = 16;

/// The bytes of a value's tag: 128 bits, as many as the AES-GCM tag that authenticates the
/// value itself.
const TAG_BYTES: usize = 16;

/// What a session cookie value says, and the tag it is kept by (for [`OpenedCookies::attach`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub session_id: Arc<str>,
    pub expires_at: i64,
    tag: Tag,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Known {
    /// The cached session the value led to before, still current by the caller's test.
    Session(Arc<CachedSession>),
    /// What the value says; the caller looks the session up.
    Cookie(Opened),
}

/// A kept value's tag (see the module documentation).
#[derive(Clone, Copy)]
struct Tag([u8; TAG_BYTES]);

impl PartialEq for Tag {
    fn eq(&self, other: &Tag) -> bool {
        self.matches(other)
    }
}

impl Eq for Tag {}

impl std::fmt::Debug for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tag(..)")
    }
}

impl Tag {
    /// The table's hash: the tag's first bytes, uniform and unknown outside the process.
    fn hash(&self) -> u64 {
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        u64::from_le_bytes([a, b, c, d, e, f, g, h])
    }

    /// The shard, by a byte the table's hash does not use.
    fn shard(&self) -> usize {
        usize::from(self.0[TAG_BYTES - 1]) % SHARDS
    }

    fn matches(&self, other: &Tag) -> bool {
        constant_time_eq::constant_time_eq_16(&self.0, &other.0)
    }
}

/// A kept value's entry.
struct Kept {
    opened: Opened,
    /// The cached session the last lookup of this value found.
    session: Weak<CachedSession>,
}

/// One lock's share of the values.
type Shard = HashTable<Kept>;

/// Recently opened session cookie values (see the module documentation).
pub struct OpenedCookies {
    /// Keyed at start; tags made with it mean nothing to anyone else.
    key: [u8; 16],
    shards: Box<[RwLock<Shard>]>,
    per_shard: usize,
}

impl OpenedCookies {
    /// Keeps at most about `max_entries` values.
    pub fn new(max_entries: usize) -> Self {
        let mut key = [0u8; 16];
        rand::Rng::fill(&mut rand::thread_rng(), &mut key[..]);
        let per_shard = (max_entries / SHARDS).max(1);
        OpenedCookies {
            key,
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
            per_shard,
        }
    }

    /// What the sealed `value` says, when it opens with `cipher` for `scope` and has not
    /// expired at `now_unix`: the same answer as [`SessionCookie::open`]. When the value led to
    /// a cached session before and `current` still accepts that session, the session itself.
    pub fn open(
        &self,
        cipher: &Cipher,
        value: &(impl AsRef<[u8]> + ?Sized),
        now_unix: i64,
        scope: &str,
        current: impl Fn(&CachedSession) -> bool,
    ) -> Option<Known> {
        // Tagged as bytes; decoded (UTF-8) only to be opened.
        let value = value.as_ref();
        let tag = self.tag(value, scope);
        let shard = &self.shards[tag.shard()];
        if let Ok(map) = shard.read() {
            if let Some(kept) = map.find(tag.hash(), |k| k.opened.tag.matches(&tag)) {
                if now_unix >= kept.opened.expires_at {
                    return None;
                }
                return Some(match kept.session.upgrade() {
                    Some(s) if current(&s) => Known::Session(s),
                    _ => Known::Cookie(kept.opened.clone()),
                });
            }
        }
        let cookie =
            SessionCookie::open(cipher, std::str::from_utf8(value).ok()?, now_unix, scope)?;
        let opened = Opened {
            session_id: cookie.session_id.into(),
            expires_at: cookie.expires_at,
            tag,
        };
        if let Ok(mut map) = shard.write() {
            if map.len() >= self.per_shard {
                map.clear();
            }
            let kept = Kept {
                opened: opened.clone(),
                session: Weak::new(),
            };
            // Two requests may both have opened the value: the second one's entry replaces.
            match map.find_entry(tag.hash(), |k| k.opened.tag.matches(&tag)) {
                Ok(mut found) => *found.get_mut() = kept,
                Err(_) => {
                    map.insert_unique(tag.hash(), kept, Kept::hash);
                }
            }
        }
        Some(Known::Cookie(opened))
    }

    /// Remembers that the value [`OpenedCookies::open`] answered `opened` for led to `session`
    /// (the session it names), for the value's next lookups. Does nothing when the value is no
    /// longer kept.
    pub fn attach(&self, opened: &Opened, session: &Arc<CachedSession>) {
        let tag = opened.tag;
        if let Ok(mut map) = self.shards[tag.shard()].write() {
            if let Some(kept) = map.find_mut(tag.hash(), |k| k.opened.tag.matches(&tag)) {
                if kept.opened.session_id == session.id {
                    // The cache's copy of the id, so that the memo holds none of its own.
                    kept.opened.session_id = Arc::clone(&session.id);
                    kept.session = Arc::downgrade(session);
                }
            }
        }
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

    /// The tag of `value` presented for `scope`. The scope's length comes first, so that no
    /// (scope, value) pair reads as another.
    fn tag(&self, value: &[u8], scope: &str) -> Tag {
        let mut mac = SipHasher24::new_with_key(&self.key);
        mac.write(&u64::try_from(scope.len()).unwrap_or(u64::MAX).to_le_bytes());
        mac.write(scope.as_bytes());
        mac.write(value);
        Tag(mac.finish128().as_bytes())
    }
}

impl Kept {
    fn hash(&self) -> u64 {
        self.opened.tag.hash()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_auth::Secret;

    fn cipher(byte: u8) -> Cipher {
        Cipher::new(&Secret::from_bytes([byte; 32]))
    }

    /// What a lookup that must not find a session says.
    fn said(found: Option<Known>) -> Option<Opened> {
        match found {
            None => None,
            Some(Known::Cookie(opened)) => Some(opened),
            Some(Known::Session(s)) => panic!("no session was attached, found {}", s.id),
        }
    }

    const SCOPE: &str = "app.localhost:443";

    fn seal(cipher: &Cipher, id: &str, expires_at: i64) -> String {
        SessionCookie {
            session_id: id.into(),
            scope: SCOPE.into(),
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
        let first = said(memo.open(&c, &value, 10, SCOPE, |_| true)).expect("opens");
        assert_eq!(&*first.session_id, "s1");
        assert_eq!(memo.len(), 1);
        // Answered from the memo: a cipher that cannot open it gets the same answer...
        let other = cipher(2);
        assert_eq!(
            said(memo.open(&other, &value, 20, SCOPE, |_| true)),
            Some(first)
        );
        // ...but never past the cookie's expiry.
        assert_eq!(said(memo.open(&c, &value, 1_000, SCOPE, |_| true)), None);
    }

    #[test]
    fn only_values_that_open_are_kept_and_the_whole_value_must_match() {
        let c = cipher(1);
        let memo = OpenedCookies::new(1024);
        let value = seal(&c, "s1", 1_000);
        assert!(said(memo.open(&c, &value, 10, SCOPE, |_| true)).is_some());
        // The same value with one character changed does not open and is not kept.
        let mut tampered = value.clone().into_bytes();
        tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ASCII");
        assert_eq!(said(memo.open(&c, &tampered, 10, SCOPE, |_| true)), None);
        assert_eq!(said(memo.open(&c, "garbage", 10, SCOPE, |_| true)), None);
        // Compared as bytes, but only text can open: bytes that are not UTF-8 are refused.
        assert_eq!(
            said(memo.open(&c, &b"\xff\xfe"[..], 10, SCOPE, |_| true)),
            None
        );
        assert_eq!(memo.len(), 1);
        // Expired at sealing time: not kept either.
        assert_eq!(
            said(memo.open(&c, &seal(&c, "s2", 5), 10, SCOPE, |_| true)),
            None
        );
        assert_eq!(memo.len(), 1);
    }

    /// A cached session with id `id`, valid until 1,000.
    fn cached_session(id: &str) -> Arc<CachedSession> {
        let mut session = crate::seed::random_session(&mut rand::thread_rng(), 0, 0, 1_000);
        session.id = id.into();
        Arc::new(CachedSession::new(session, 1))
    }

    #[test]
    fn a_kept_value_opens_only_for_its_scope() {
        let c = cipher(1);
        let memo = OpenedCookies::new(1024);
        let value = seal(&c, "s1", 1_000);
        let opened = said(memo.open(&c, &value, 10, SCOPE, |_| true)).expect("opens");
        let session = cached_session("s1");
        memo.attach(&opened, &session);
        assert!(matches!(
            memo.open(&c, &value, 10, SCOPE, |_| true),
            Some(Known::Session(_))
        ));
        // Kept for app.localhost:443, and with its session attached: on another host (or
        // another port of the same host) it is nothing, from the memo as from opening it.
        for other in ["admin.localhost:443", "app.localhost:8443", ""] {
            assert!(
                memo.open(&c, &value, 10, other, |_| true).is_none(),
                "{other}"
            );
        }
        assert_eq!(memo.len(), 1);
        // Still a session where it was issued.
        assert!(memo.open(&c, &value, 10, SCOPE, |_| true).is_some());
    }

    #[test]
    fn the_memo_stays_within_its_bound() {
        let c = cipher(1);
        let memo = OpenedCookies::new(64);
        for i in 0..2_000 {
            let value = seal(&c, &format!("s{i}"), 1_000);
            assert_eq!(
                said(memo.open(&c, &value, 10, SCOPE, |_| true)).map(|o| o.session_id.to_string()),
                Some(format!("s{i}"))
            );
            assert!(memo.len() <= 64, "{} values kept", memo.len());
        }
        assert!(memo.len() >= 16, "the memo keeps values: {}", memo.len());
    }

    #[test]
    fn an_attached_session_is_held_weakly() {
        let c = cipher(1);
        let memo = OpenedCookies::new(1024);
        let value = seal(&c, "s1", 1_000);
        let opened = said(memo.open(&c, &value, 10, SCOPE, |_| true)).expect("opens");
        let session = cached_session("s1");
        memo.attach(&opened, &session);
        match memo.open(&c, &value, 10, SCOPE, |_| true) {
            Some(Known::Session(s)) => assert!(Arc::ptr_eq(&s, &session)),
            other => panic!("the attached session, not {other:?}"),
        }
        // The caller's test decides: a session it rejects is not answered.
        assert!(said(memo.open(&c, &value, 10, SCOPE, |_| false)).is_some());
        // Once nothing else holds the session, the memo answers with the cookie alone.
        drop(session);
        assert_eq!(
            said(memo.open(&c, &value, 10, SCOPE, |_| true)).map(|o| o.session_id.to_string()),
            Some("s1".to_string())
        );
    }

    #[test]
    fn a_session_is_attached_only_to_the_value_that_names_it() {
        let c = cipher(1);
        let memo = OpenedCookies::new(1024);
        let value = seal(&c, "s1", 1_000);
        let opened = said(memo.open(&c, &value, 10, SCOPE, |_| true)).expect("opens");
        let mut rng = rand::thread_rng();
        let other = Arc::new(CachedSession::new(
            crate::seed::random_session(&mut rng, 0, 0, 1_000),
            1,
        ));
        memo.attach(&opened, &other);
        assert!(said(memo.open(&c, &value, 10, SCOPE, |_| true)).is_some());
    }
}
