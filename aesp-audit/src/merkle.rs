//! RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification, and the layout in
//! which a log stores its interior hashes (the "stored hash" order of Go's `sumdb/tlog`:
//! after leaf `n` come the roots of the perfect subtrees that leaf completes).

use aesp_core::{Error, ErrorCode, Result};
use sha2::{Digest as _, Sha256};

/// A SHA-256 hash: a leaf hash, an interior node or a tree root.
pub type Hash = [u8; 32];

/// The largest tree size this crate handles (2^62 leaves), so index arithmetic never overflows.
pub const MAX_TREE_SIZE: u64 = 1 << 62;

/// The hash of a leaf: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(data);
    hasher.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The root of the tree whose leaf hashes are `leaves`, computed directly (reference code).
pub fn root_of(leaves: &[Hash]) -> Hash {
    let mut edge = RightEdge::default();
    for leaf in leaves {
        edge.push(*leaf, |_| {});
    }
    edge.root()
}

/// The right edge of a tree being built leaf by leaf: the roots of the perfect subtrees of its
/// binary decomposition, largest first. Appending a leaf costs one hash per subtree it completes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RightEdge {
    size: u64,
    stack: Vec<Hash>,
}

impl RightEdge {
    /// The edge of a tree of `size` leaves whose perfect subtrees (largest first) are `stack`.
    pub(crate) fn from_parts(size: u64, stack: Vec<Hash>) -> Option<Self> {
        (usize::try_from(size.count_ones()).ok() == Some(stack.len())).then_some(Self { size, stack })
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; `stored` receives the leaf hash and then each completed subtree
    /// root, in stored-hash order.
    pub(crate) fn push(&mut self, leaf: Hash, mut stored: impl FnMut(&Hash)) {
        stored(&leaf);
        let mut hash = leaf;
        let mut n = self.size;
        while n & 1 == 1 {
            let Some(left) = self.stack.pop() else { break };
            hash = node_hash(&left, &hash);
            stored(&hash);
            n >>= 1;
        }
        self.stack.push(hash);
        self.size = self.size.saturating_add(1);
    }

    /// The root of the tree so far.
    pub(crate) fn root(&self) -> Hash {
        let mut iter = self.stack.iter().rev();
        let Some(last) = iter.next() else { return empty_root() };
        iter.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

/// Where the root of the perfect subtree of height `level` and position `n` (covering leaves
/// `n * 2^level .. (n + 1) * 2^level`) sits in the stored-hash order.
pub(crate) fn stored_hash_index(level: u32, n: u64) -> u64 {
    let mut n = n;
    for _ in 0..level {
        n = n.saturating_mul(2).saturating_add(1);
    }
    let mut index = 0u64;
    let mut m = n;
    while m > 0 {
        index = index.saturating_add(m);
        m >>= 1;
    }
    index.saturating_add(u64::from(level))
}

/// How many hashes a tree of `size` leaves stores: `2 * size - popcount(size)`.
pub(crate) fn stored_hash_count(size: u64) -> u64 {
    size.saturating_mul(2).saturating_sub(u64::from(size.count_ones()))
}

/// The perfect subtrees `(level, n)` whose stored roots make up the leaves `lo..hi`, largest
/// first; folding their hashes from the right gives the RFC 6962 hash of the range when the
/// range is one of the ranges the proof algorithms use.
pub(crate) fn range_subtrees(lo: u64, hi: u64) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let mut lo = lo;
    while lo < hi {
        let width = hi - lo;
        let mut level = 63 - width.leading_zeros();
        while level > 0 && lo & ((1u64 << level) - 1) != 0 {
            level -= 1;
        }
        out.push((level, lo >> level));
        lo += 1u64 << level;
    }
    out
}

/// Folds the roots of [`range_subtrees`] into the range's hash.
pub(crate) fn fold_range(hashes: &[Hash]) -> Hash {
    let mut iter = hashes.iter().rev();
    let Some(last) = iter.next() else { return empty_root() };
    iter.fold(*last, |acc, left| node_hash(left, &acc))
}

/// The largest power of two smaller than `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The leaf ranges whose hashes form the inclusion proof of leaf `index` in a tree of `size`
/// leaves (RFC 9162 2.1.3.1), in proof order.
pub(crate) fn inclusion_ranges(index: u64, size: u64) -> Result<Vec<(u64, u64)>> {
    check_sizes(index.saturating_add(1), size, "leaf index")?;
    let mut out = Vec::new();
    let (mut lo, mut hi) = (0u64, size);
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if index - lo < k {
            out.push((lo + k, hi));
            hi = lo + k;
        } else {
            out.push((lo, lo + k));
            lo += k;
        }
    }
    out.reverse();
    Ok(out)
}

/// The leaf ranges whose hashes form the consistency proof between trees of `old` and `new`
/// leaves (RFC 9162 2.1.4.1), in proof order.
pub(crate) fn consistency_ranges(old: u64, new: u64) -> Result<Vec<(u64, u64)>> {
    check_sizes(old, new, "old tree size")?;
    let mut out = Vec::new();
    if old == 0 || old == new {
        return Ok(out);
    }
    let (mut lo, mut hi, mut m, mut complete) = (0u64, new, old, true);
    loop {
        let n = hi - lo;
        if m == n {
            if !complete {
                out.push((lo, hi));
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            out.push((lo + k, hi));
            hi = lo + k;
        } else {
            out.push((lo, lo + k));
            lo += k;
            m -= k;
            complete = false;
        }
    }
    out.reverse();
    Ok(out)
}

fn check_sizes(small: u64, size: u64, what: &str) -> Result<()> {
    if size > MAX_TREE_SIZE {
        return Err(Error::invalid_argument(format!("tree size {size} is larger than {MAX_TREE_SIZE}")));
    }
    if small > size {
        return Err(Error::invalid_argument(format!("{what} is beyond the tree size {size}")));
    }
    Ok(())
}

fn proof_failed(what: &str) -> Error {
    Error::new(ErrorCode::ValidationFailed, format!("{what} proof does not verify"))
}

/// The root that an inclusion proof leads to, or an error if its shape is wrong.
fn inclusion_root(index: u64, size: u64, leaf: &Hash, proof: &[Hash]) -> Result<Hash> {
    if size > MAX_TREE_SIZE || index >= size {
        return Err(Error::invalid_argument(format!("leaf index {index} is not in a tree of size {size}")));
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(proof_failed("inclusion (too long)"));
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(proof_failed("inclusion (too short)"));
    }
    Ok(r)
}

/// Verifies that `leaf` (a leaf hash) is at `index` in the tree of `size` leaves with `root`
/// (RFC 9162 2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> Result<()> {
    if inclusion_root(index, size, leaf, proof)? == *root { Ok(()) } else { Err(proof_failed("inclusion")) }
}

/// Verifies that the tree of `old_size` leaves with `old_root` is a prefix of the tree of
/// `new_size` leaves with `new_root` (RFC 9162 2.1.4.2).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<()> {
    if new_size > MAX_TREE_SIZE || old_size > new_size {
        return Err(Error::invalid_argument(format!(
            "tree size {old_size} cannot be a prefix of tree size {new_size}"
        )));
    }
    if old_size == new_size {
        return if proof.is_empty() && old_root == new_root {
            Ok(())
        } else {
            Err(proof_failed("consistency (same size)"))
        };
    }
    if old_size == 0 {
        return if proof.is_empty() { Ok(()) } else { Err(proof_failed("consistency (empty tree)")) };
    }
    let mut path = proof.iter();
    let seed = if old_size.is_power_of_two() {
        *old_root
    } else {
        *path.next().ok_or_else(|| proof_failed("consistency (empty)"))?
    };
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (seed, seed);
    for c in path {
        if s == 0 {
            return Err(proof_failed("consistency (too long)"));
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s == 0 && fr == *old_root && sr == *new_root { Ok(()) } else { Err(proof_failed("consistency")) }
}

/// Proofs over leaf hashes held in memory (reference code for tests and small logs).
pub fn inclusion_proof_of(leaves: &[Hash], index: u64) -> Result<Vec<Hash>> {
    let size = u64::try_from(leaves.len()).unwrap_or(u64::MAX);
    inclusion_ranges(index, size)?.into_iter().map(|(lo, hi)| slice_root(leaves, lo, hi)).collect()
}

/// The consistency proof between the first `old_size` leaves and all of `leaves`, in memory.
pub fn consistency_proof_of(leaves: &[Hash], old_size: u64) -> Result<Vec<Hash>> {
    let size = u64::try_from(leaves.len()).unwrap_or(u64::MAX);
    consistency_ranges(old_size, size)?.into_iter().map(|(lo, hi)| slice_root(leaves, lo, hi)).collect()
}

fn slice_root(leaves: &[Hash], lo: u64, hi: u64) -> Result<Hash> {
    let lo = usize::try_from(lo).map_err(|_| Error::invalid_argument("range too large"))?;
    let hi = usize::try_from(hi).map_err(|_| Error::invalid_argument("range too large"))?;
    leaves.get(lo..hi).map(root_of).ok_or_else(|| Error::invalid_argument("range beyond the leaves"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962 MTH by its recursive definition.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect()
    }

    #[test]
    fn known_answers() {
        // The empty tree and a one-leaf tree of the empty string (RFC 6962 test vectors).
        assert_eq!(
            empty_root(),
            *b"\xe3\xb0\xc4\x42\x98\xfc\x1c\x14\x9a\xfb\xf4\xc8\x99\x6f\xb9\x24\x27\xae\x41\xe4\x64\x9b\x93\x4c\xa4\x95\x99\x1b\x78\x52\xb8\x55"
        );
        assert_eq!(
            leaf_hash(b""),
            *b"\x6e\x34\x0b\x9c\xff\xb3\x7a\x98\x9c\xa5\x44\xe6\xbb\x78\x0a\x2c\x78\x90\x1d\x3f\xb3\x37\x38\x76\x85\x11\xa3\x06\x17\xaf\xa0\x1d"
        );
    }

    /// The roots of the RFC 6962 reference tree (the eight leaves of the Certificate
    /// Transparency test data), for sizes 1 to 8.
    #[test]
    fn certificate_transparency_reference_roots() {
        let leaves: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let hashes: Vec<Hash> = leaves.iter().map(|l| leaf_hash(l)).collect();
        for (n, want) in roots.iter().enumerate() {
            let got: String = root_of(&hashes[..=n]).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(got, *want, "size {}", n + 1);
        }
    }

    #[test]
    fn right_edge_matches_the_recursive_definition_and_stored_order() {
        let all = leaves(70);
        let mut edge = RightEdge::default();
        let mut stored = Vec::new();
        for (i, leaf) in all.iter().enumerate() {
            edge.push(*leaf, |h| stored.push(*h));
            assert_eq!(edge.root(), mth(&all[..=i]));
            assert_eq!(stored.len() as u64, stored_hash_count(i as u64 + 1));
        }
        for level in 0..6u32 {
            for n in 0..(70u64 >> level) {
                let lo = (n << level) as usize;
                let hi = ((n + 1) << level) as usize;
                assert_eq!(stored[stored_hash_index(level, n) as usize], mth(&all[lo..hi]), "{level} {n}");
            }
        }
    }

    #[test]
    fn every_proof_for_small_trees_verifies_and_wrong_ones_do_not() {
        let all = leaves(33);
        for size in 1..=33u64 {
            let tree = &all[..size as usize];
            let root = mth(tree);
            for index in 0..size {
                let proof = inclusion_proof_of(tree, index).unwrap();
                verify_inclusion(index, size, &tree[index as usize], &proof, &root).unwrap();
                assert!(verify_inclusion(index, size, &leaf_hash(b"x"), &proof, &root).is_err());
                if size > 1 {
                    assert!(
                        verify_inclusion((index + 1) % size, size, &tree[index as usize], &proof, &root)
                            .is_err()
                    );
                }
            }
            for old in 0..=size {
                let proof = consistency_proof_of(tree, old).unwrap();
                let old_root = mth(&tree[..old as usize]);
                verify_consistency(old, size, &old_root, &root, &proof).unwrap();
                if old > 0 && old < size {
                    assert!(verify_consistency(old, size, &leaf_hash(b"x"), &root, &proof).is_err());
                    assert!(verify_consistency(old, size, &old_root, &leaf_hash(b"x"), &proof).is_err());
                }
            }
        }
    }

    #[test]
    fn out_of_range_sizes_are_errors_not_panics() {
        let h = leaf_hash(b"");
        assert!(verify_inclusion(u64::MAX, u64::MAX, &h, &[h], &h).is_err());
        assert!(verify_inclusion(5, 3, &h, &[], &h).is_err());
        assert!(verify_consistency(u64::MAX - 1, u64::MAX, &h, &h, &[h]).is_err());
        assert!(verify_consistency(9, 3, &h, &h, &[]).is_err());
        assert!(inclusion_ranges(3, 3).is_err());
        assert!(consistency_ranges(4, 3).is_err());
    }
}
