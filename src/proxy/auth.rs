//! Client-key checks, in constant time per key so a wrong guess learns nothing
//! from how long the answer took.

use subtle::{Choice, ConstantTimeEq};

/// Whether any of the `presented` credentials opens a provider that accepts
/// the `global` keys plus its `own`. With no keys configured, access is open.
pub fn accepts_any(presented: &[Option<&[u8]>], global: &[Box<[u8]>], own: &[Box<[u8]>]) -> bool {
    if global.is_empty() && own.is_empty() {
        return true;
    }
    // Every credential is compared, so timing does not tell which one matched.
    presented.iter().fold(false, |found, key| accepts(*key, global, own) | found)
}

/// Which key (its index in `global` then `own`) one of the `presented`
/// credentials matches, every key compared in constant time; `None` when
/// none does or access is open.
pub fn which(presented: &[Option<&[u8]>], global: &[Box<[u8]>], own: &[Box<[u8]>]) -> Option<usize> {
    use subtle::ConditionallySelectable;
    for credential in presented.iter().flatten() {
        let (mut matched, mut index) = (Choice::from(0), 0u32);
        for (i, key) in global.iter().chain(own).enumerate() {
            let equal = key.as_ref().ct_eq(credential);
            index = u32::conditional_select(&index, &(i as u32), equal);
            matched |= equal;
        }
        if bool::from(matched) {
            return Some(index as usize);
        }
    }
    None
}

/// Whether `presented` opens a provider that accepts the `global` keys plus its
/// `own`. With no keys configured at all, access is open.
pub fn accepts(presented: Option<&[u8]>, global: &[Box<[u8]>], own: &[Box<[u8]>]) -> bool {
    if global.is_empty() && own.is_empty() {
        return true;
    }
    let Some(presented) = presented else {
        return false;
    };
    // Every key is compared, match or not, so timing does not tell which matched.
    let mut matched = Choice::from(0);
    for key in global.iter().chain(own) {
        matched |= key.as_ref().ct_eq(presented);
    }
    matched.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Vec<Box<[u8]>> {
        list.iter().map(|k| k.as_bytes().into()).collect()
    }

    #[test]
    fn open_when_nothing_configured() {
        assert!(accepts(None, &[], &[]));
        assert!(accepts(Some(b"any"), &[], &[]));
    }

    #[test]
    fn global_and_own_keys_both_open() {
        let global = keys(&["g1", "g2"]);
        let own = keys(&["p1"]);
        assert!(accepts(Some(b"g2"), &global, &own));
        assert!(accepts(Some(b"p1"), &global, &own));
        assert!(accepts(Some(b"p1"), &[], &own));
        assert!(!accepts(Some(b"p"), &global, &own));
        assert!(!accepts(Some(b"g1x"), &global, &own));
        assert!(!accepts(None, &global, &own));
        assert!(!accepts(Some(b"g1"), &[], &own));
    }
}
