//! The handle database: the table behind every `SaXxxHandleT`.
//!
//! An application holds a [`Handle`], never a pointer; each call looks the handle up and
//! gets a shared reference ([`Arc`]) to the object for the duration of the call. A handle
//! names both a slot and the *generation* that filled it, so a handle kept after
//! `finalize` (or a made-up one) gives [`SaError::BadHandle`] even when a newer object
//! has reused its slot. An object removed while another thread is still inside a call
//! on it lives until that call returns.

use std::sync::Arc;

use ais_proto::SaError;
use parking_lot::Mutex;
use slab::Slab;

/// An opaque handle: the slot index in the low 32 bits, its generation in the high 32.
/// Generation 0 is never given out, so `Handle(0)` is always bad.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Handle(pub u64);

impl Handle {
    fn new(generation: u32, index: u32) -> Handle {
        Handle(u64::from(generation) << 32 | u64::from(index))
    }

    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    fn index(self) -> usize {
        (self.0 & u64::from(u32::MAX)) as usize
    }
}

/// A thread-safe table of objects by [`Handle`].
pub struct HandleDb<T> {
    slots: Mutex<Slots<T>>,
}

struct Slots<T> {
    entries: Slab<Entry<T>>,
    next_generation: u32,
}

struct Entry<T> {
    generation: u32,
    object: Arc<T>,
}

impl<T> HandleDb<T> {
    /// An empty table; `const` so that a service's table can be a `static`.
    pub const fn new() -> HandleDb<T> {
        HandleDb {
            slots: Mutex::new(Slots {
                entries: Slab::new(),
                next_generation: 1,
            }),
        }
    }

    /// Stores `object` and returns its new handle. `NoResources` if the table already
    /// holds 2³² objects.
    pub fn insert(&self, object: T) -> Result<Handle, SaError> {
        let mut slots = self.slots.lock();
        let index = u32::try_from(slots.entries.vacant_key()).map_err(|_| SaError::NoResources)?;
        let generation = slots.next_generation;
        slots.next_generation = slots.next_generation.checked_add(1).unwrap_or(1);
        let object = Arc::new(object);
        slots.entries.insert(Entry { generation, object });
        Ok(Handle::new(generation, index))
    }

    /// The object `handle` names, or `BadHandle` if it was never given out or has been
    /// removed.
    pub fn get(&self, handle: Handle) -> Result<Arc<T>, SaError> {
        let slots = self.slots.lock();
        match slots.entries.get(handle.index()) {
            Some(e) if e.generation == handle.generation() => Ok(Arc::clone(&e.object)),
            _ => Err(SaError::BadHandle),
        }
    }

    /// Removes the object `handle` names and returns it; later lookups of `handle` give
    /// `BadHandle`, and so does removing it again.
    pub fn remove(&self, handle: Handle) -> Result<Arc<T>, SaError> {
        let mut slots = self.slots.lock();
        match slots.entries.get(handle.index()) {
            Some(e) if e.generation == handle.generation() => {
                Ok(slots.entries.remove(handle.index()).object)
            }
            _ => Err(SaError::BadHandle),
        }
    }

    /// How many objects the table holds.
    pub fn len(&self) -> usize {
        self.slots.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Default for HandleDb<T> {
    fn default() -> Self {
        HandleDb::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_finds_its_object_until_removed() {
        let db = HandleDb::new();
        let a = db.insert("a").unwrap();
        let b = db.insert("b").unwrap();
        assert_ne!(a, b);
        assert_eq!(*db.get(a).unwrap(), "a");
        assert_eq!(*db.get(b).unwrap(), "b");
        assert_eq!(db.len(), 2);
        assert_eq!(*db.remove(a).unwrap(), "a");
        assert_eq!(db.get(a).err(), Some(SaError::BadHandle));
        assert_eq!(db.remove(a).err(), Some(SaError::BadHandle));
        assert_eq!(*db.get(b).unwrap(), "b");
        assert_eq!(db.len(), 1);
    }

    #[test]
    fn a_stale_handle_does_not_reach_the_object_that_reuses_its_slot() {
        let db = HandleDb::new();
        let old = db.insert(1).unwrap();
        db.remove(old).unwrap();
        let new = db.insert(2).unwrap();
        assert_eq!(old.index(), new.index(), "the slot is reused");
        assert_eq!(db.get(old).err(), Some(SaError::BadHandle));
        assert_eq!(db.remove(old).err(), Some(SaError::BadHandle));
        assert_eq!(*db.get(new).unwrap(), 2);
    }

    #[test]
    fn made_up_handles_are_bad() {
        let db = HandleDb::new();
        let h = db.insert(()).unwrap();
        assert_eq!(db.get(Handle(0)).err(), Some(SaError::BadHandle));
        assert_eq!(db.get(Handle(u64::MAX)).err(), Some(SaError::BadHandle));
        assert_eq!(
            db.get(Handle(h.0 ^ (1 << 40))).err(),
            Some(SaError::BadHandle)
        );
    }

    #[test]
    fn a_removed_object_lives_while_a_caller_holds_it() {
        let db = HandleDb::new();
        let h = db.insert(vec![1, 2, 3]).unwrap();
        let held = db.get(h).unwrap();
        db.remove(h).unwrap();
        assert_eq!(*held, vec![1, 2, 3]);
    }

    #[test]
    fn usable_from_many_threads() {
        static DB: HandleDb<u64> = HandleDb::new();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let h = DB.insert(t * 1000 + i).unwrap();
                        assert_eq!(*DB.get(h).unwrap(), t * 1000 + i);
                        DB.remove(h).unwrap();
                        assert_eq!(DB.get(h).err(), Some(SaError::BadHandle));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(DB.is_empty());
    }
}
