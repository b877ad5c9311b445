//! Entity names as hash-map keys. A lookup by name probes the map, then compares the name it
//! finds with the one asked for; with a million streams that comparison is a cache miss when
//! the stored name lives behind a pointer. Names of up to [`INLINE_BYTES`] bytes (nearly every
//! key in practice) are kept in the map's slot itself, longer ones on the heap.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

/// Names up to this long are stored inline (the key is 32 bytes either way).
pub const INLINE_BYTES: usize = 30;

/// A name usable as a map key and looked up by `&[u8]` (it hashes and compares as its bytes).
#[derive(Clone)]
pub enum Key {
    Inline { len: u8, bytes: [u8; INLINE_BYTES] },
    Heap(Box<[u8]>),
}

impl Key {
    pub fn new(name: &[u8]) -> Key {
        if name.len() <= INLINE_BYTES {
            let mut bytes = [0; INLINE_BYTES];
            bytes[..name.len()].copy_from_slice(name);
            Key::Inline {
                len: name.len() as u8,
                bytes,
            }
        } else {
            Key::Heap(name.into())
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..*len as usize],
            Key::Heap(bytes) => bytes,
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Exactly as `[u8]` hashes, which `Borrow<[u8]>` lookups require.
        self.as_bytes().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn short_and_long_names_are_found_by_their_bytes() {
        assert_eq!(std::mem::size_of::<Key>(), 32);
        let names: Vec<Vec<u8>> = vec![
            vec![],
            b"s:1".to_vec(),
            vec![b'x'; INLINE_BYTES],
            vec![b'y'; INLINE_BYTES + 1],
            vec![0xff; 1000],
        ];
        let map: HashMap<Key, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (Key::new(n), i))
            .collect();
        for (i, name) in names.iter().enumerate() {
            assert_eq!(map.get(name.as_slice()), Some(&i));
            assert_eq!(Key::new(name).as_bytes(), name.as_slice());
        }
        assert_eq!(map.get(&b"s:2"[..]), None);
        assert_eq!(map.get(&vec![b'x'; INLINE_BYTES - 1][..]), None);
    }
}
