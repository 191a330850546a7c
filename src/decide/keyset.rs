//! Sets of verification keys. A key set is swapped atomically as a whole; every change bumps its
//! generation, which invalidates the tokens it verified before (see the token cache).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use jsonwebtoken::DecodingKeyKind;

use crate::keys::VerifyKey;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Default)]
pub struct KeySetState {
    pub keys: Vec<VerifyKey>,
    pub generation: u64,
    /// False until a remote JWKS has been fetched once.
    pub loaded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySetKind {
    Static,
    Remote,
}

/// Keys of one source (an inline JWKS, a SigningKey, or a JWKS URL).
#[derive(Debug)]
pub struct KeySet {
    id: u64,
    pub label: String,
    pub kind: KeySetKind,
    state: ArcSwap<KeySetState>,
}

impl KeySet {
    pub fn new_static(label: impl Into<String>, keys: Vec<VerifyKey>) -> Arc<Self> {
        Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            label: label.into(),
            kind: KeySetKind::Static,
            state: ArcSwap::from_pointee(KeySetState { keys, generation: 1, loaded: true }),
        })
    }

    /// A remote key set that has not been fetched yet.
    pub fn new_remote(label: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            label: label.into(),
            kind: KeySetKind::Remote,
            state: ArcSwap::from_pointee(KeySetState::default()),
        })
    }

    /// Unique for the life of the process, so cache entries can never be confused across sets.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn state(&self) -> arc_swap::Guard<Arc<KeySetState>> {
        self.state.load()
    }

    pub fn generation(&self) -> u64 {
        self.state.load().generation
    }

    /// Replaces the keys; returns whether anything changed. An empty set never replaces keys:
    /// the caller must treat it as a failed fetch.
    pub fn replace(&self, keys: Vec<VerifyKey>) -> bool {
        assert!(!keys.is_empty(), "a key set is never replaced with nothing");
        let current = self.state.load();
        if current.loaded && current.keys.len() == keys.len() && current.keys.iter().zip(&keys).all(|(a, b)| same_key(a, b)) {
            return false;
        }
        self.state.store(Arc::new(KeySetState { keys, generation: current.generation + 1, loaded: true }));
        true
    }
}

fn same_key(a: &VerifyKey, b: &VerifyKey) -> bool {
    a.kid == b.kid
        && a.alg == b.alg
        && a.family == b.family
        && match (a.decoding.kind(), b.decoding.kind()) {
            (DecodingKeyKind::SecretOrDer(x), DecodingKeyKind::SecretOrDer(y)) => x == y,
            (DecodingKeyKind::RsaModulusExponent { n: n1, e: e1 }, DecodingKeyKind::RsaModulusExponent { n: n2, e: e2 }) => {
                n1 == n2 && e1 == e2
            }
            _ => false,
        }
}
