//! Verified tokens by their exact text, bounded by a byte budget.
//!
//! Sharded, each shard two generations: inserts go to the current one; when it holds half the
//! shard's budget it becomes the previous one and the old previous generation is dropped —
//! on a background thread, so no request pays for freeing thousands of entries, and no sweep or
//! rehash of the whole cache ever runs on the hot path (the new generation is allocated at the
//! size the last one reached). A hit in the previous generation moves the entry forward, so
//! tokens in use survive rotation. Total bytes never exceed the budget; forged tokens never get
//! here (only what verified is inserted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use foldhash::fast::RandomState;
use serde_json::Value;

use super::token::Verified;

const SHARDS: usize = 16;

type Generation = HashMap<Box<str>, (Arc<Verified>, usize), RandomState>;

#[derive(Default)]
struct Shard {
    current: Generation,
    current_bytes: usize,
    previous: Generation,
    previous_bytes: usize,
}

pub struct TokenCache {
    shards: Vec<Mutex<Shard>>,
    /// Per shard, per generation.
    generation_budget: usize,
    bytes: AtomicUsize,
    hasher: RandomState,
}

/// Frees dropped generations away from the request path.
fn dropper() -> &'static Mutex<mpsc::Sender<Generation>> {
    static TX: OnceLock<Mutex<mpsc::Sender<Generation>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Generation>();
        std::thread::Builder::new().name("token-cache-free".into()).spawn(move || rx.into_iter().for_each(drop)).expect("spawn a thread");
        Mutex::new(tx)
    })
}

/// What an entry costs: the token text, its claims as held in memory, and fixed overhead.
/// An estimate, but one that grows with everything a caller controls.
pub fn entry_bytes(token: &str, verified: &Verified) -> usize {
    fn value(v: &Value) -> usize {
        const NODE: usize = 32;
        match v {
            Value::String(s) => NODE + s.len(),
            Value::Array(a) => NODE + a.iter().map(value).sum::<usize>(),
            Value::Object(m) => NODE + m.iter().map(|(k, v)| 48 + k.len() + value(v)).sum::<usize>(),
            _ => NODE,
        }
    }
    let fixed = 256; // the Verified struct, Arc, map slot, key box
    fixed + token.len() + value(&verified.claims) + verified.iss.len() + verified.aud.iter().map(|a| 24 + a.len()).sum::<usize>()
}

impl TokenCache {
    /// A cache of at most `budget` bytes; 0 disables caching.
    pub fn new(budget: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            generation_budget: budget / SHARDS / 2,
            bytes: AtomicUsize::new(0),
            hasher: RandomState::default(),
        }
    }

    fn shard(&self, token: &str) -> &Mutex<Shard> {
        use std::hash::BuildHasher;
        &self.shards[self.hasher.hash_one(token) as usize % SHARDS]
    }

    pub fn get(&self, token: &str) -> Option<Arc<Verified>> {
        if self.generation_budget == 0 {
            return None;
        }
        let mut shard = self.shard(token).lock().expect("cache lock");
        if let Some((v, _)) = shard.current.get(token) {
            return Some(v.clone());
        }
        let (key, (v, size)) = shard.previous.remove_entry(token)?;
        shard.previous_bytes -= size;
        self.bytes.fetch_sub(size, Ordering::Relaxed);
        let hit = v.clone();
        let dropped = self.add(&mut shard, key, v, size);
        drop(shard);
        self.free(dropped);
        Some(hit)
    }

    pub fn insert(&self, token: &str, verified: Arc<Verified>) {
        let size = entry_bytes(token, &verified);
        if self.generation_budget == 0 || size > self.generation_budget {
            return;
        }
        let mut shard = self.shard(token).lock().expect("cache lock");
        if let Some((_, old)) = shard.current.remove(token) {
            shard.current_bytes -= old;
            self.bytes.fetch_sub(old, Ordering::Relaxed);
        }
        let dropped = self.add(&mut shard, token.into(), verified, size);
        drop(shard);
        self.free(dropped);
    }

    /// Adds to the current generation, rotating first when it would go over its budget;
    /// returns the generation to free.
    fn add(&self, shard: &mut Shard, key: Box<str>, v: Arc<Verified>, size: usize) -> Option<Generation> {
        let mut dropped = None;
        if shard.current_bytes + size > self.generation_budget {
            let fresh = HashMap::with_capacity_and_hasher(shard.current.len(), self.hasher.clone());
            let previous = std::mem::replace(&mut shard.previous, std::mem::replace(&mut shard.current, fresh));
            self.bytes.fetch_sub(shard.previous_bytes, Ordering::Relaxed);
            shard.previous_bytes = std::mem::take(&mut shard.current_bytes);
            dropped = Some(previous);
        }
        shard.current.insert(key, (v, size));
        shard.current_bytes += size;
        self.bytes.fetch_add(size, Ordering::Relaxed);
        dropped
    }

    fn free(&self, generation: Option<Generation>) {
        if let Some(g) = generation.filter(|g| !g.is_empty()) {
            // If the thread is gone, dropping here is still correct, only slower.
            let _ = dropper().lock().expect("dropper lock").send(g);
        }
    }

    /// Bytes held (the accounted estimate).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map_or(0, |s| s.current.len() + s.previous.len())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The budget's upper bound actually enforced (per-shard rounding included).
    pub fn budget(&self) -> usize {
        self.generation_budget * 2 * SHARDS
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::api::JwtAlgorithm;

    fn verified(claims_len: usize) -> Arc<Verified> {
        Arc::new(Verified {
            keyset: 1,
            generation: 1,
            alg: JwtAlgorithm::ES256,
            iss: "https://id".into(),
            aud: vec!["api".into()],
            exp: i64::MAX,
            nbf: None,
            claims: serde_json::json!({"sub": "x", "blob": "y".repeat(claims_len)}),
            minted: Default::default(),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Under churn of tokens of any size the bytes held never exceed the budget, the
        /// accounting matches the entries, and the last token inserted is always there.
        #[test]
        fn the_byte_budget_holds_under_churn(
            budget_kib in 1usize..512,
            sizes in proptest::collection::vec((1usize..20_000, 0usize..12_000), 1..400),
        ) {
            let cache = TokenCache::new(budget_kib * 1024);
            for (i, (token_len, claims_len)) in sizes.iter().enumerate() {
                let token = format!("{i}.{}", "t".repeat(*token_len));
                let v = verified(*claims_len);
                let fits = entry_bytes(&token, &v) <= cache.generation_budget;
                cache.insert(&token, v);
                prop_assert!(cache.bytes() <= cache.budget(), "{} > {}", cache.bytes(), cache.budget());
                prop_assert!(cache.budget() <= budget_kib * 1024);
                prop_assert_eq!(cache.get(&token).is_some(), fits);
                let held: usize = cache.shards.iter().map(|s| { let s = s.lock().unwrap(); s.current_bytes + s.previous_bytes }).sum();
                prop_assert_eq!(held, cache.bytes());
            }
        }
    }

    #[test]
    fn tokens_in_use_survive_rotation_and_a_zero_budget_caches_nothing() {
        let cache = TokenCache::new(SHARDS * 2 * 64 * 1024);
        cache.insert("hot", verified(10));
        for i in 0..20_000 {
            cache.insert(&format!("cold-{i}"), verified(100));
            // A token used all the time is moved forward and never falls out.
            assert!(cache.get("hot").is_some(), "lost after {i} inserts");
        }
        assert!(cache.get("cold-0").is_none(), "old entries went");
        let off = TokenCache::new(0);
        off.insert("a", verified(1));
        assert!(off.get("a").is_none() && off.is_empty());
    }
}
