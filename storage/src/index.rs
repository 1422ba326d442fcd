//! The in-memory index: key → where its newest record lives.
//!
//! Each entry is 16 bytes, `{ hash, segment slot, offset }`, whatever the key's length: keys are
//! not copied into memory but compared by reading them from the mapping. The table is
//! `hashbrown`'s SwissTable (one control byte per bucket, at most 7/8 full), so a table holding
//! `n` keys uses `17 * buckets` bytes with `buckets` the power of two at or above `8n/7`:
//! 17.8 to 35.6 bytes per key depending on where `n` falls between two powers of two.
//!
//! Hashes come from `foldhash` seeded randomly per process, so clients cannot choose keys that
//! collide (hash flooding).
//!
//! Growth: when the table is full, `hashbrown` allocates one twice as large and moves every entry
//! (using the stored hash, without touching the mapping). That is one pause proportional to the
//! number of keys, about 10-20 ns per key (~0.2 s at 10M keys) and, for a moment, 1.5x the
//! memory. [`Options::index_capacity`](crate::Options::index_capacity) reserves room up front
//! for servers that know their size.

use std::hash::BuildHasher;

use hashbrown::HashTable;

/// One index entry: the key's hash and its record's location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Hash of the key.
    pub hash: u64,
    /// Slot of the segment in the store's segment table.
    pub seg: u32,
    /// Offset of the record in that segment.
    pub off: u32,
}

const _: () = assert!(size_of::<Slot>() == 16);

/// The hash table plus its hasher.
pub(crate) struct Index {
    table: HashTable<Slot>,
    hasher: foldhash::fast::RandomState,
}

impl Index {
    /// An empty index with room for `capacity` keys before the first growth.
    pub fn with_capacity(capacity: usize) -> Index {
        Index { table: HashTable::with_capacity(capacity), hasher: foldhash::fast::RandomState::default() }
    }

    /// The hash of `key`.
    #[inline]
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Bytes allocated by the table.
    pub fn allocation_bytes(&self) -> usize {
        self.table.allocation_size()
    }

    /// The entry with this hash for which `eq` holds.
    #[inline]
    pub fn find(&self, hash: u64, eq: impl FnMut(&Slot) -> bool) -> Option<&Slot> {
        self.table.find(hash, eq)
    }

    /// Mutable access to the entry with this hash for which `eq` holds.
    #[inline]
    pub fn find_mut(&mut self, hash: u64, eq: impl FnMut(&Slot) -> bool) -> Option<&mut Slot> {
        self.table.find_mut(hash, eq)
    }

    /// Adds an entry known not to be present.
    #[inline]
    pub fn insert_new(&mut self, slot: Slot) {
        self.table.insert_unique(slot.hash, slot, |s| s.hash);
    }

    /// Removes and returns the entry with this hash for which `eq` holds.
    #[inline]
    pub fn remove(&mut self, hash: u64, eq: impl FnMut(&Slot) -> bool) -> Option<Slot> {
        match self.table.find_entry(hash, eq) {
            Ok(entry) => Some(entry.remove().0),
            Err(_) => None,
        }
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Slot> + '_ {
        self.table.iter()
    }
}
