//! The compact form of an active introspection answer: what the cache keeps
//! and what the policy, the identity headers and `[identity.claims]` read.
//!
//! A full cache holds a million answers, and most of their members repeat from
//! token to token: one issuer, a few clients, audiences and scope sets. So an
//! [`Answer`] keeps inline only what is per token (`exp`, `iat`, `nbf`, `sub`),
//! and everything that repeats (`active`, `token_type`, `scope`, `client_id`,
//! `iss`, `aud`) in one [`Shared`] block that equal answers share through a
//! bounded [`Interner`]. The rare members (`username`, `jti`, members we do
//! not model) sit in a box that the common answer does not have. That is 64
//! bytes inline plus the subject string, against 272 bytes and eight heap
//! blocks for a parsed [`Introspection`] (BENCHMARKS.md, "Memory per cached
//! token").
//!
//! [`Introspection`] stays the parse type (the oauth2 client) and the fleet L2
//! wire format (`tg1:` JSON is unchanged); an [`Answer`] is made from it once,
//! when an answer enters the cache, and [`Answer::to_introspection`] gives the
//! same value back (the round trip is tested, and the claims view with it).

use crate::introspection::client::{claim_list_ambiguous_of, claim_text_of, Introspection};
use oauth2::basic::BasicTokenType;
use oauth2::{ClientId, Scope};
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

/// An inline `iat` / `nbf` that is absent. A real value equal to it (an AS
/// that sends `i64::MIN`) is kept in [`Rare`] instead, so nothing is lost.
const NO_TIME: i64 = i64::MIN;

/// The members that repeat across tokens, shared by equal answers.
#[derive(Debug, PartialEq, Eq)]
pub struct Shared {
    active: bool,
    token_type: Option<BasicTokenType>,
    scope: Option<Vec<Scope>>,
    client_id: Option<ClientId>,
    iss: Option<String>,
    aud: Option<Vec<String>>,
}

// `BasicTokenType` has no `Hash`; its text is what `Eq` compares.
impl Hash for Shared {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.active.hash(h);
        self.token_type.as_ref().map(AsRef::<str>::as_ref).hash(h);
        self.scope.hash(h);
        self.client_id.hash(h);
        self.iss.hash(h);
        self.aud.hash(h);
    }
}

impl Shared {
    /// Bytes of text held, to keep big (attacker-made) blocks out of the interner.
    fn text_len(&self) -> usize {
        let strs = |v: &Option<Vec<String>>| v.iter().flatten().map(String::len).sum::<usize>();
        self.scope.iter().flatten().map(|s| s.len()).sum::<usize>()
            + self.client_id.as_ref().map_or(0, |c| c.len())
            + self.iss.as_ref().map_or(0, String::len)
            + strs(&self.aud)
            + match &self.token_type {
                Some(BasicTokenType::Extension(t)) => t.len(),
                _ => 0,
            }
    }
}

/// Members few answers have.
#[derive(Debug, Clone, PartialEq, Default)]
struct Rare {
    username: Option<String>,
    jti: Option<String>,
    /// `iat` / `nbf` whose value is the inline "absent" marker ([`NO_TIME`]).
    iat: Option<i64>,
    nbf: Option<i64>,
    /// Every member we do not model (e.g. Hydra's `token_use`, Keycloak's `realm_access`).
    extra: serde_json::Map<String, serde_json::Value>,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.username.is_none()
            && self.jti.is_none()
            && self.iat.is_none()
            && self.nbf.is_none()
            && self.extra.is_empty()
    }
}

/// An introspection answer in its cached form. Built once per answer
/// ([`Answer::new`]); read-only after that, behind an `Arc` in the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `exp` in Unix seconds. A field, not a method: the request path reads it
    /// (tunnel deadline) like it read the parsed answer's.
    pub exp: Option<i64>,
    iat: i64,
    nbf: i64,
    shared: Arc<Shared>,
    sub: Option<Box<str>>,
    rare: Option<Box<Rare>>,
}

impl Answer {
    /// The compact form of `i`, its repeating members shared through `interner`.
    pub fn new(i: Introspection, interner: &Interner) -> Self {
        Self::build(i, |shared| interner.intern(shared))
    }

    fn build(i: Introspection, share: impl FnOnce(Shared) -> Arc<Shared>) -> Self {
        let inline = |t: Option<i64>| match t {
            Some(NO_TIME) => (NO_TIME, Some(NO_TIME)),
            Some(t) => (t, None),
            None => (NO_TIME, None),
        };
        let (iat, rare_iat) = inline(i.iat);
        let (nbf, rare_nbf) = inline(i.nbf);
        let rare = Rare {
            username: i.username,
            jti: i.jti,
            iat: rare_iat,
            nbf: rare_nbf,
            extra: i.extra,
        };
        Self {
            exp: i.exp,
            iat,
            nbf,
            shared: share(Shared {
                active: i.active,
                token_type: i.token_type,
                scope: i.scope,
                client_id: i.client_id,
                iss: i.iss,
                aud: i.aud,
            }),
            sub: i.sub.map(String::into_boxed_str),
            rare: (!rare.is_empty()).then(|| Box::new(rare)),
        }
    }

    /// The parsed answer this was made from (same members, same values).
    pub fn to_introspection(&self) -> Introspection {
        let s = &*self.shared;
        let rare = self.rare.as_deref();
        Introspection {
            active: s.active,
            scope: s.scope.clone(),
            client_id: s.client_id.clone(),
            username: rare.and_then(|r| r.username.clone()),
            token_type: s.token_type.clone(),
            exp: self.exp,
            iat: self.iat(),
            nbf: self.nbf(),
            sub: self.sub.as_deref().map(str::to_owned),
            aud: s.aud.clone(),
            iss: s.iss.clone(),
            jti: rare.and_then(|r| r.jti.clone()),
            extra: rare.map(|r| r.extra.clone()).unwrap_or_default(),
        }
    }

    pub fn active(&self) -> bool {
        self.shared.active
    }

    fn time(&self, inline: i64, rare: impl Fn(&Rare) -> Option<i64>) -> Option<i64> {
        if inline != NO_TIME {
            Some(inline)
        } else {
            self.rare.as_deref().and_then(rare)
        }
    }

    pub fn iat(&self) -> Option<i64> {
        self.time(self.iat, |r| r.iat)
    }

    pub fn nbf(&self) -> Option<i64> {
        self.time(self.nbf, |r| r.nbf)
    }

    /// `token_type` (or Keycloak's `typ`), lower-cased.
    pub fn token_type(&self) -> Option<&BasicTokenType> {
        self.shared.token_type.as_ref()
    }

    /// The scopes; empty when the answer has none.
    pub fn scopes(&self) -> &[Scope] {
        self.shared.scope.as_deref().unwrap_or_default()
    }

    pub fn client_id(&self) -> Option<&ClientId> {
        self.shared.client_id.as_ref()
    }

    pub fn iss(&self) -> Option<&str> {
        self.shared.iss.as_deref()
    }

    /// The audiences; empty when the answer has none.
    pub fn aud(&self) -> &[String] {
        self.shared.aud.as_deref().unwrap_or_default()
    }

    pub fn sub(&self) -> Option<&str> {
        self.sub.as_deref()
    }

    pub fn username(&self) -> Option<&str> {
        self.rare.as_deref()?.username.as_deref()
    }

    pub fn jti(&self) -> Option<&str> {
        self.rare.as_deref()?.jti.as_deref()
    }

    /// A member we do not model (e.g. `token_use`), as the AS sent it.
    pub fn extra(&self, name: &str) -> Option<&serde_json::Value> {
        self.rare.as_deref()?.extra.get(name)
    }

    /// A claim as header text, for `[identity.claims]`: strings as they are,
    /// numbers and booleans printed, arrays joined with spaces, objects as JSON.
    /// `a.b` walks into nested objects when there is no member literally named
    /// `a.b`. Names are the members as the AS sent them (after our parsing:
    /// `token_type`, `scope` as a list); exactly what the parsed answer's JSON
    /// view holds (tested against it).
    pub fn claim_text(&self, name: &str) -> Option<String> {
        claim_text_of(|n| self.member(n), name)
    }

    /// Whether [`Self::claim_text`] joins a list whose elements hold the
    /// separator (so the text cannot be split back into the same list).
    pub fn claim_list_is_ambiguous(&self, name: &str) -> bool {
        claim_list_ambiguous_of(|n| self.member(n), name)
    }

    /// One top-level member as JSON, as `serde_json::to_value` of the parsed
    /// answer would hold it (absent members are `None`).
    fn member(&self, name: &str) -> Option<serde_json::Value> {
        use serde_json::to_value;
        let s = &*self.shared;
        let typed = match name {
            "active" => to_value(s.active),
            "scope" => to_value(&s.scope),
            "client_id" => to_value(&s.client_id),
            "username" => to_value(self.username()),
            "token_type" => to_value(&s.token_type),
            "exp" => to_value(self.exp),
            "iat" => to_value(self.iat()),
            "nbf" => to_value(self.nbf()),
            "sub" => to_value(self.sub()),
            "aud" => to_value(&s.aud),
            "iss" => to_value(&s.iss),
            "jti" => to_value(self.jti()),
            _ => return self.extra(name).cloned(),
        };
        typed.ok().filter(|v| !v.is_null())
    }

    /// Space-separated scopes, as they go into the scope identity header.
    ///
    /// Built in one allocation (it runs on every request, cache hits
    /// included): the same text as collecting into a `Vec` and `join(" ")`.
    pub fn scope_string(&self) -> String {
        let scopes = self.scopes();
        let len = scopes.iter().map(|s| s.as_str().len() + 1).sum::<usize>();
        let mut out = String::with_capacity(len.saturating_sub(1));
        for (i, scope) in scopes.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(scope.as_str());
        }
        out
    }
}

/// Without an interner: the answer owns its [`Shared`] block (tests, benches).
impl From<Introspection> for Answer {
    fn from(i: Introspection) -> Self {
        Self::build(i, Arc::new)
    }
}

/// Distinct [`Shared`] blocks the interner keeps by default.
pub const INTERNER_CAPACITY: usize = 1024;

/// Text bytes above which a [`Shared`] block is not interned: such answers
/// are odd, so sharing gains little, and a bound per block bounds the
/// interner's memory (capacity × this), whatever the AS sends.
pub const MAX_INTERNED_TEXT: usize = 1024;

/// Hands out one `Arc<Shared>` per distinct value, for at most `capacity`
/// values. When it is full it forgets the blocks no cached answer uses any
/// more; when it is still full, or a block is bigger than
/// [`MAX_INTERNED_TEXT`], the answer gets its own block (as without
/// interning): an AS, or whoever picks the scopes it answers, cannot grow it
/// without limit. Used when an answer enters the cache (a miss), never on a hit.
pub struct Interner {
    set: Mutex<HashSet<Arc<Shared>>>,
    capacity: usize,
}

impl Default for Interner {
    fn default() -> Self {
        Self::new(INTERNER_CAPACITY)
    }
}

impl Interner {
    pub fn new(capacity: usize) -> Self {
        Self {
            set: Mutex::new(HashSet::new()),
            capacity,
        }
    }

    fn intern(&self, shared: Shared) -> Arc<Shared> {
        if shared.text_len() > MAX_INTERNED_TEXT {
            return Arc::new(shared);
        }
        // A panic while holding the lock cannot leave the set half-changed.
        let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = set.get(&shared) {
            return found.clone();
        }
        if set.len() >= self.capacity {
            // Only the set holds these: no cached answer uses them, and no one
            // can take a new reference without this lock.
            set.retain(|s| Arc::strong_count(s) > 1);
        }
        let shared = Arc::new(shared);
        if set.len() < self.capacity {
            set.insert(shared.clone());
        }
        shared
    }

    /// Distinct blocks held now.
    pub fn len(&self) -> usize {
        self.set.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Introspection {
        serde_json::from_str(json).unwrap()
    }

    const TYPICAL: &str = r#"{"active":true,"client_id":"bench-client","sub":"user-1","scope":"read write","token_type":"Bearer","iss":"https://auth.example.com","aud":"bench-api","iat":1700000000,"exp":1700003600}"#;

    /// The cached form stays small: this is what a cached token costs inline.
    #[test]
    fn answer_is_64_bytes() {
        assert_eq!(std::mem::size_of::<Answer>(), 64);
    }

    /// compact → parsed gives back exactly what was parsed, for every shape
    /// (more shapes in tests/props.rs).
    #[test]
    fn round_trip() {
        let interner = Interner::default();
        for json in [
            TYPICAL,
            r#"{"active":false}"#,
            r#"{"active":true,"exp":1485492229,"nbf":0,"typ":"Bearer","aud":"proxy","sub":"e891","client_id":"proxy","realm_access":{"roles":["uma_authorization"]},"allowed-origins":[]}"#,
            r#"{"active":true,"aud":["a","b"],"scope":"x y","token_use":"refresh_token","ext":{"k":1},"username":"u","jti":"j"}"#,
            r#"{"active":true,"iat":-9223372036854775808,"nbf":-9223372036854775808,"exp":-9223372036854775808}"#,
            r#"{"active":true,"token_type":"DPoP","scope":[],"aud":[]}"#,
        ] {
            let parsed = parse(json);
            assert_eq!(
                Answer::new(parsed.clone(), &interner).to_introspection(),
                parsed,
                "{json}"
            );
            assert_eq!(
                Answer::from(parsed.clone()).to_introspection(),
                parsed,
                "{json}"
            );
        }
        let min = Answer::from(parse(
            r#"{"active":true,"iat":-9223372036854775808,"nbf":-9223372036854775808}"#,
        ));
        assert_eq!(
            min.iat(),
            Some(i64::MIN),
            "the marker value itself survives"
        );
        assert_eq!(min.nbf(), Some(i64::MIN));
        assert!(
            Answer::from(parse(TYPICAL)).rare.is_none(),
            "typical: no box"
        );
    }

    /// `claim_text` must answer exactly what reading the whole parsed answer
    /// as JSON (`serde_json::to_value`) would.
    #[test]
    fn claim_text_matches_the_full_json_view() {
        let i = parse(
            r#"{"active":true,"scope":["a","b"],"client_id":7,"username":"u","typ":"Bearer","exp":100.5,"iat":"90","sub":"s","aud":"x","iss":"i","jti":"j","email":"e@x","n":3,"flag":false,"realm_access":{"roles":["r1","r2"]},"a.b":"literal","nil":null}"#,
        );
        let view = serde_json::to_value(&i).unwrap();
        let oracle = |name: &str| -> Option<String> {
            let v = view.get(name).or_else(|| {
                let mut parts = name.split('.');
                let first = view.get(parts.next()?)?;
                parts.try_fold(first, |v, p| v.get(p))
            })?;
            match v {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Array(items) => Some(
                    items
                        .iter()
                        .filter_map(|x| {
                            x.as_str()
                                .map(str::to_owned)
                                .or_else(|| Some(x.to_string()))
                        })
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                other => Some(other.to_string()),
            }
        };
        let a = Answer::new(i.clone(), &Interner::default());
        for name in [
            "active",
            "scope",
            "client_id",
            "username",
            "token_type",
            "typ",
            "exp",
            "iat",
            "nbf",
            "sub",
            "aud",
            "iss",
            "jti",
            "email",
            "n",
            "flag",
            "realm_access",
            "realm_access.roles",
            "realm_access.none",
            "a.b",
            "nil",
            "missing",
            "scope.x",
        ] {
            assert_eq!(a.claim_text(name), oracle(name), "{name}");
        }
        assert_eq!(a.claim_text("realm_access.roles").as_deref(), Some("r1 r2"));
        assert_eq!(a.claim_text("scope").as_deref(), Some("a b"));
        assert_eq!(a.scope_string(), "a b");
    }

    /// The one-allocation join prints what `join(" ")` prints, whatever the
    /// scope list looks like.
    #[test]
    fn scope_string_is_the_joined_list() {
        for json in [
            r#"{"active":true}"#,
            r#"{"active":true,"scope":""}"#,
            r#"{"active":true,"scope":"a"}"#,
            r#"{"active":true,"scope":"read  write admin:all"}"#,
            r#"{"active":true,"scope":" x "}"#,
        ] {
            let a = Answer::from(parse(json));
            let joined = a
                .scopes()
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            assert_eq!(a.scope_string(), joined, "{json}");
        }
        assert_eq!(Answer::from(parse(TYPICAL)).scope_string(), "read write");
    }

    #[test]
    fn equal_answers_share_one_block() {
        let interner = Interner::default();
        let a = Answer::new(parse(TYPICAL), &interner);
        let mut other = parse(TYPICAL);
        other.sub = Some("user-2".into());
        other.exp = Some(1);
        let b = Answer::new(other, &interner);
        assert!(Arc::ptr_eq(&a.shared, &b.shared));
        assert_eq!(interner.len(), 1);
        let mut different = parse(TYPICAL);
        different.scope = None;
        let c = Answer::new(different, &interner);
        assert!(!Arc::ptr_eq(&a.shared, &c.shared));
        assert_eq!(interner.len(), 2);
    }

    /// However many distinct blocks come in, the interner holds at most its
    /// capacity; blocks no answer uses are forgotten to make room; a block
    /// that does not fit, or is too big, is the answer's own (same values).
    #[test]
    fn interner_is_bounded() {
        let interner = Interner::new(4);
        let with_client = |n: usize| {
            let mut i = parse(TYPICAL);
            i.client_id = Some(ClientId::new(format!("client-{n}")));
            i
        };
        let kept: Vec<Answer> = (0..10)
            .map(|n| Answer::new(with_client(n), &interner))
            .collect();
        assert_eq!(interner.len(), 4, "full, and every block is in use");
        for (n, a) in kept.iter().enumerate() {
            assert_eq!(
                a.to_introspection(),
                with_client(n),
                "values intact past the bound"
            );
        }
        // A full interner still shares what it holds.
        let again = Answer::new(with_client(0), &interner);
        assert!(Arc::ptr_eq(&again.shared, &kept[0].shared));
        // Unused blocks make room: drop the answers that use blocks 0..4.
        drop(again);
        drop(kept);
        let fresh = Answer::new(with_client(100), &interner);
        assert_eq!(
            interner.len(),
            1,
            "unused blocks forgotten, the new one kept"
        );
        let shared_again = Answer::new(with_client(100), &interner);
        assert!(Arc::ptr_eq(&fresh.shared, &shared_again.shared));

        let mut huge = parse(TYPICAL);
        huge.iss = Some("i".repeat(MAX_INTERNED_TEXT + 1));
        let a = Answer::new(huge.clone(), &interner);
        let b = Answer::new(huge.clone(), &interner);
        assert!(
            !Arc::ptr_eq(&a.shared, &b.shared),
            "too big: never interned"
        );
        assert_eq!(interner.len(), 1);
        assert_eq!(a.to_introspection(), huge);
    }
}
