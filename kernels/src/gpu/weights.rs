//! The content key engine weights are deduplicated by on the device: two weights with the
//! same bytes (a tied embedding, a bias shared by every shape bucket's program) are uploaded
//! once.
//!
//! The key is the byte length and two 64-bit SipHash-1-3 digests of the bytes under two
//! different prefixes (128 bits together), so a false match between distinct weights is as
//! likely as a 128-bit collision — for the few thousand weights of an engine, never. The
//! element type is not part of the key: device memory is untyped and `Program::validate`
//! already checks each buffer's type against its weight.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// Identifies a weight's bytes. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WeightKey {
    pub len: usize,
    pub h1: u64,
    pub h2: u64,
}

impl WeightKey {
    pub fn of(bytes: &[u8]) -> WeightKey {
        let digest = |prefix: u64| {
            // DefaultHasher::new() has fixed keys: the same bytes give the same digest for
            // the life of the process, which is all the store needs.
            let mut h = DefaultHasher::new();
            prefix.hash(&mut h);
            bytes.hash(&mut h);
            h.finish()
        };
        WeightKey {
            len: bytes.len(),
            h1: digest(0x5357_4954_4348_5944), // "SWITCHYD"
            h2: digest(0x5745_4947_4854_5321), // "WEIGHTS!"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_bytes_share_a_key_and_any_change_splits_it() {
        let a: Vec<u8> = (0..4096u32).map(|v| (v * 7) as u8).collect();
        let mut b = a.clone();
        assert_eq!(WeightKey::of(&a), WeightKey::of(&b));
        b[4095] ^= 1;
        assert_ne!(WeightKey::of(&a), WeightKey::of(&b));
        let k = WeightKey::of(&a);
        assert_ne!(k.h1, k.h2, "the two digests are independent");
        // A prefix of the same bytes differs (length and digests).
        assert_ne!(WeightKey::of(&a[..4000]), k);
        assert_eq!(WeightKey::of(&[]).len, 0);
    }
}
