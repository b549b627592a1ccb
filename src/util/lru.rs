//! The least-recently-used cache every per-shape plan cache uses (tract plans, GPU plans):
//! a few entries, looked up on every request, so a linear scan for the oldest is fine.

use std::collections::HashMap;
use std::hash::Hash;

/// At most `capacity` values by key; inserting past it evicts the least recently used.
pub(crate) struct Lru<K, V> {
    capacity: usize,
    tick: u64,
    entries: HashMap<K, (u64, V)>,
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    /// A cache of `capacity` entries (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Lru {
            capacity: capacity.max(1),
            tick: 0,
            entries: HashMap::new(),
        }
    }

    /// The value for `key`, now the most recently used.
    pub(crate) fn get<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|e| {
            e.0 = tick;
            e.1.clone()
        })
    }

    /// Stores `value` under `key` as the most recently used, evicting the oldest when full.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        self.tick += 1;
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (self.tick, value));
    }

    /// The keys held, in no order.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.keys()
    }

    /// Drops every entry.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn the_least_recently_used_entry_is_evicted() {
        let mut c = Lru::new(2);
        c.insert(1, "a");
        c.insert(2, "b");
        assert_eq!(c.get(&1), Some("a")); // 1 is now more recent than 2
        c.insert(3, "c");
        let mut keys: Vec<_> = c.keys().copied().collect();
        keys.sort();
        assert_eq!(keys, [1, 3]);
        c.insert(3, "d"); // replacing a key evicts nothing
        assert_eq!(c.get(&1), Some("a"));
        assert_eq!(c.get(&3), Some("d"));
    }
}
