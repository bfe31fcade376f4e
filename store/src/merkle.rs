//! The Merkle tree of a partition log, in the shape of RFC 6962 / RFC 9162 with blake3 as the
//! hash, over the same leaves as the chain (each record's leaf hash, in log order).
//!
//! ```text
//! leaf node     = blake3(0x00 ‖ leaf hash)
//! interior node = blake3(0x01 ‖ left ‖ right)
//! MTH({})       = blake3("")
//! MTH(D[n])     = interior(MTH(D[0:k]), MTH(D[k:n])),  k = the largest power of two < n
//! ```
//!
//! The 0x00/0x01 prefixes keep a node from ever being presented as a leaf. A [`Frontier`]
//! (the roots of the perfect subtrees that make up the tree, largest first) lets appends cost
//! O(log n) and survives restarts in the file footer; proofs are generated from the leaves
//! and verified with the RFC 9162 algorithms (§2.1.3.2, §2.1.4.2), which need nothing else.

use crate::chain::{from_hex, to_hex};

pub type Hash = [u8; 32];

/// The hash of a leaf node.
pub fn leaf_node(leaf: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0]).update(leaf);
    *h.finalize().as_bytes()
}

/// The hash of an interior node.
pub fn interior(left: &Hash, right: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[1]).update(left).update(right);
    *h.finalize().as_bytes()
}

/// The root of the empty tree.
pub(crate) fn empty_root() -> Hash {
    *blake3::hash(b"").as_bytes()
}

/// The largest power of two smaller than `n` (`n` ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The root of a tree over the given leaf nodes (not leaf hashes): O(n).
pub fn root_of(nodes: &[Hash]) -> Hash {
    match nodes.len() {
        0 => empty_root(),
        1 => nodes[0],
        n => {
            let k = split(n as u64) as usize;
            interior(&root_of(&nodes[..k]), &root_of(&nodes[k..]))
        }
    }
}

/// The right edge of a tree: enough to append to it and to compute its root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Roots of the perfect subtrees of `size`'s binary decomposition, largest first: one per
    /// set bit of `size`.
    nodes: Vec<Hash>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed Merkle frontier: {0}")]
pub struct FrontierError(&'static str);

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Append a record's leaf hash.
    pub fn append(&mut self, leaf: &Hash) {
        let mut node = leaf_node(leaf);
        let mut size = self.size;
        while size & 1 == 1 {
            let left = self
                .nodes
                .pop()
                .expect("a frontier holds one node per set bit of its size");
            node = interior(&left, &node);
            size >>= 1;
        }
        self.nodes.push(node);
        self.size += 1;
        debug_assert_eq!(self.nodes.len(), self.size.count_ones() as usize);
    }

    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(last) = nodes.next() else {
            return empty_root();
        };
        nodes.fold(*last, |right, left| interior(left, &right))
    }

    /// `SIZE` or `SIZE:HEX,HEX,…` (one 64-character hash per set bit of SIZE).
    pub fn encode(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(to_hex).collect();
        if nodes.is_empty() {
            self.size.to_string()
        } else {
            format!("{}:{}", self.size, nodes.join(","))
        }
    }

    pub fn decode(s: &str) -> Result<Frontier, FrontierError> {
        let (size, nodes) = s.split_once(':').unwrap_or((s, ""));
        let size: u64 = size.parse().map_err(|_| FrontierError("size"))?;
        let nodes: Vec<Hash> = if nodes.is_empty() {
            Vec::new()
        } else {
            nodes
                .split(',')
                .map(|h| from_hex(h).ok_or(FrontierError("hash")))
                .collect::<Result<_, _>>()?
        };
        if nodes.len() != size.count_ones() as usize {
            return Err(FrontierError("node count does not match the size"));
        }
        Ok(Frontier { size, nodes })
    }
}

/// The inclusion proof of leaf `index` in the tree over `nodes` (leaf nodes), RFC 9162 §2.1.3.1.
pub fn inclusion_proof(nodes: &[Hash], index: u64) -> Option<Vec<Hash>> {
    if index >= nodes.len() as u64 {
        return None;
    }
    let mut proof = Vec::new();
    path(index as usize, nodes, &mut proof);
    Some(proof)
}

fn path(m: usize, nodes: &[Hash], out: &mut Vec<Hash>) {
    let n = nodes.len();
    if n <= 1 {
        return;
    }
    let k = split(n as u64) as usize;
    if m < k {
        path(m, &nodes[..k], out);
        out.push(root_of(&nodes[k..]));
    } else {
        path(m - k, &nodes[k..], out);
        out.push(root_of(&nodes[..k]));
    }
}

/// Check that `leaf` (a record's leaf hash) is at `index` in the tree of `size` with `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = leaf_node(leaf);
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = interior(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = interior(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && &r == root
}

/// The consistency proof between the tree of size `old` and the tree over `nodes`
/// (RFC 9162 §2.1.4.1). `None` unless 0 < old ≤ n.
pub fn consistency_proof(nodes: &[Hash], old: u64) -> Option<Vec<Hash>> {
    if old == 0 || old > nodes.len() as u64 {
        return None;
    }
    let mut proof = Vec::new();
    subproof(old as usize, nodes, true, &mut proof);
    Some(proof)
}

fn subproof(m: usize, nodes: &[Hash], whole: bool, out: &mut Vec<Hash>) {
    let n = nodes.len();
    if m == n {
        if !whole {
            out.push(root_of(nodes));
        }
        return;
    }
    let k = split(n as u64) as usize;
    if m <= k {
        subproof(m, &nodes[..k], whole, out);
        out.push(root_of(&nodes[k..]));
    } else {
        subproof(m - k, &nodes[k..], false, out);
        out.push(root_of(&nodes[..k]));
    }
}

/// Check that the tree of size `old` with root `old_root` is a prefix of the tree of size
/// `new` with root `new_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    proof: &[Hash],
    old_root: &Hash,
    new_root: &Hash,
) -> bool {
    if old == 0 || old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = interior(c, &fr);
            sr = interior(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = interior(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && &fr == old_root && &sr == new_root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n as u64)
            .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
            .collect()
    }

    /// MTH straight from the definition.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => *blake3::hash(b"").as_bytes(),
            1 => {
                let mut v = vec![0u8];
                v.extend_from_slice(&leaves[0]);
                *blake3::hash(&v).as_bytes()
            }
            n => {
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                let mut v = vec![1u8];
                v.extend_from_slice(&mth(&leaves[..k]));
                v.extend_from_slice(&mth(&leaves[k..]));
                *blake3::hash(&v).as_bytes()
            }
        }
    }

    fn nodes(leaves: &[Hash]) -> Vec<Hash> {
        leaves.iter().map(leaf_node).collect()
    }

    #[test]
    fn frontier_roots_match_the_definition_and_survive_encoding() {
        let ls = leaves(130);
        let mut f = Frontier::default();
        assert_eq!(f.root(), mth(&[]));
        for n in 1..=ls.len() {
            f.append(&ls[n - 1]);
            assert_eq!(f.size(), n as u64);
            assert_eq!(f.root(), mth(&ls[..n]), "size {n}");
            assert_eq!(root_of(&nodes(&ls[..n])), mth(&ls[..n]));
            let back = Frontier::decode(&f.encode()).unwrap();
            assert_eq!(back, f);
        }
        assert_eq!(Frontier::decode("0").unwrap(), Frontier::default());
        for bad in [
            "",
            "x",
            "3",
            "1:zz",
            &format!("2:{},{}", "0".repeat(64), "0".repeat(64)),
        ] {
            assert!(Frontier::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pinned_root() {
        // Three leaves: interior(interior(L0, L1), L2). Changing it is a format change.
        let ls = leaves(3);
        let mut f = Frontier::default();
        ls.iter().for_each(|l| f.append(l));
        // Checked independently with Python's blake3 package.
        assert_eq!(
            hex::encode(f.root()),
            "e8b472ae7ed44c63711e96d2e57b5f5196b6a2bdbe83df454ba431c012a50cce"
        );
        assert_eq!(f.encode().split(':').next(), Some("3"));
    }

    #[test]
    fn every_inclusion_proof_verifies_and_every_mutation_fails() {
        let ls = leaves(40);
        for n in 1..=ls.len() {
            let ns = nodes(&ls[..n]);
            let root = mth(&ls[..n]);
            let size = n as u64;
            for i in 0..size {
                let p = inclusion_proof(&ns, i).unwrap();
                let leaf = &ls[i as usize];
                assert!(verify_inclusion(i, size, leaf, &p, &root), "n={n} i={i}");
                // Index off by one, wrong size, wrong root, wrong leaf.
                assert!(!verify_inclusion(i + 1, size, leaf, &p, &root));
                if i > 0 {
                    assert!(!verify_inclusion(i - 1, size, leaf, &p, &root));
                }
                // A wrong size: the signed (size, root) pairs bind the shape, so the test uses
                // the root that really has that size. (The RFC algorithm alone cannot tell a
                // size from its successor against an unsigned root.)
                if n < ls.len() {
                    let bigger = mth(&ls[..n + 1]);
                    assert!(
                        !verify_inclusion(i, size + 1, leaf, &p, &bigger),
                        "n={n} i={i}"
                    );
                }
                if size > 1 && size - 1 > i {
                    let smaller = mth(&ls[..n - 1]);
                    assert!(!verify_inclusion(i, size - 1, leaf, &p, &smaller));
                }
                assert!(!verify_inclusion(
                    i,
                    size,
                    &ls[(i as usize + 1) % 40],
                    &p,
                    &root
                ));
                let mut other = root;
                other[0] ^= 1;
                assert!(!verify_inclusion(i, size, leaf, &p, &other));
                // Flipped, extra, missing hash.
                for j in 0..p.len() {
                    let mut q = p.clone();
                    q[j][7] ^= 0x10;
                    assert!(!verify_inclusion(i, size, leaf, &q, &root));
                }
                let mut q = p.clone();
                q.push(root);
                assert!(!verify_inclusion(i, size, leaf, &q, &root));
                if !p.is_empty() {
                    assert!(!verify_inclusion(i, size, leaf, &p[..p.len() - 1], &root));
                }
            }
            assert!(inclusion_proof(&ns, size).is_none());
        }
    }

    #[test]
    fn a_node_cannot_be_presented_as_a_leaf() {
        let ls = leaves(4);
        let ns = nodes(&ls);
        let root = mth(&ls);
        let left = interior(&ns[0], &ns[1]);
        let right = interior(&ns[2], &ns[3]);
        // The tree of four leaves seen as a tree of two "leaves" (its interior nodes).
        assert!(!verify_inclusion(0, 2, &left, &[right], &root));
        assert!(!verify_inclusion(1, 2, &right, &[left], &root));
    }

    #[test]
    fn every_consistency_proof_verifies_and_every_mutation_fails() {
        let ls = leaves(33);
        for n in 1..=ls.len() {
            let ns = nodes(&ls[..n]);
            let new_root = mth(&ls[..n]);
            for m in 1..=n {
                let old_root = mth(&ls[..m]);
                let p = consistency_proof(&ns, m as u64).unwrap();
                let (m, n) = (m as u64, n as u64);
                assert!(
                    verify_consistency(m, n, &p, &old_root, &new_root),
                    "{m}->{n}"
                );
                if m == n {
                    continue;
                }
                assert!(!verify_consistency(m, n, &p, &new_root, &new_root));
                assert!(!verify_consistency(m, n, &p, &old_root, &old_root));
                if m + 1 < n {
                    let next_old = mth(&ls[..m as usize + 1]);
                    assert!(!verify_consistency(m + 1, n, &p, &next_old, &new_root));
                }
                if (n as usize) < ls.len() {
                    let bigger = mth(&ls[..n as usize + 1]);
                    assert!(
                        !verify_consistency(m, n + 1, &p, &old_root, &bigger),
                        "{m}->{n}+1"
                    );
                }
                for j in 0..p.len() {
                    let mut q = p.clone();
                    q[j][3] ^= 0x01;
                    assert!(
                        !verify_consistency(m, n, &q, &old_root, &new_root),
                        "{m}->{n} flip {j}"
                    );
                }
                let mut q = p.clone();
                q.push(old_root);
                assert!(!verify_consistency(m, n, &q, &old_root, &new_root));
                assert!(!verify_consistency(
                    m,
                    n,
                    &p[..p.len() - 1],
                    &old_root,
                    &new_root
                ));
            }
            assert!(consistency_proof(&ns, 0).is_none());
            assert!(consistency_proof(&ns, n as u64 + 1).is_none());
        }
    }
}
