//! The whole-file BLAKE3 of an upload, computed from per-chunk chaining values instead of
//! re-reading the file.
//!
//! BLAKE3 is a tree hash. When every chunk but the last has the same power-of-two length (at
//! least 1 KiB) and starts at a multiple of it, each chunk is a complete subtree of the file's
//! tree: its chaining value (CV) can be computed on its own when it arrives
//! ([`chunk_cv`]), and the file's root hash is the merge of those CVs ([`combine`]). This makes
//! CompleteUpload cost O(chunks), not O(bytes), and lets a deduplicated re-upload finish
//! without touching the data. Uploads with other chunk shapes fall back to hashing the bytes.

use blake3::hazmat::{HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};

/// Chaining value of a chunk that starts `offset` bytes into its file, or `None` when a chunk
/// of this shape cannot be a subtree of the file's BLAKE3 tree there.
pub fn chunk_cv(offset: u64, data: &[u8]) -> Option<[u8; 32]> {
    if !is_subtree(offset, data.len() as u64) {
        return None;
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(offset);
    hasher.update(data);
    Some(hasher.finalize_non_root())
}

/// Both the chunk id (root hash at offset 0) and the CV at offset 0 come from one pass.
pub fn id_and_cv_at_zero(data: &[u8]) -> ([u8; 32], [u8; 32]) {
    let mut hasher = blake3::Hasher::new();
    hasher.update(data);
    (*hasher.finalize().as_bytes(), hasher.finalize_non_root())
}

fn is_subtree(offset: u64, len: u64) -> bool {
    let chunk = blake3::CHUNK_LEN as u64;
    if !offset.is_multiple_of(chunk) || len == 0 {
        return false;
    }
    match blake3::hazmat::max_subtree_len(offset) {
        None => true,
        Some(max) => len <= max,
    }
}

/// A chunk of the file as the combiner sees it.
#[derive(Debug, Clone, Copy)]
pub struct Piece {
    pub offset: u64,
    pub len: u64,
    pub cv: Option<[u8; 32]>,
}

/// The root hash of a file made of `pieces` (in offset order, contiguous from 0), or `None` when
/// the pieces do not have the uniform power-of-two shape or a CV is missing; the caller then
/// hashes the bytes. A single-piece file is its chunk: its hash is the chunk id, which the
/// caller already has, so this returns `None` for it too.
pub fn combine(pieces: &[Piece]) -> Option<[u8; 32]> {
    if pieces.len() < 2 {
        return None;
    }
    let unit = pieces[0].len;
    if !unit.is_power_of_two() || unit < blake3::CHUNK_LEN as u64 {
        return None;
    }
    for (i, p) in pieces.iter().enumerate() {
        let last = i == pieces.len() - 1;
        if p.offset != i as u64 * unit || (!last && p.len != unit) || p.len > unit || p.cv.is_none()
        {
            return None;
        }
    }
    let total = pieces.iter().map(|p| p.len).sum::<u64>();
    let (left, right) = split(pieces, total, unit);
    Some(*merge_subtrees_root(&subtree(left, unit), &subtree(right, unit), Mode::Hash).as_bytes())
}

/// Splits a run of pieces the way BLAKE3 splits its input: the left subtree holds the largest
/// power-of-two number of bytes that leaves at least one byte on the right.
fn split(pieces: &[Piece], total: u64, unit: u64) -> (&[Piece], &[Piece]) {
    let left_len = blake3::hazmat::left_subtree_len(total);
    pieces.split_at((left_len / unit) as usize)
}

fn subtree(pieces: &[Piece], unit: u64) -> [u8; 32] {
    if pieces.len() == 1 {
        return pieces[0].cv.unwrap_or_default();
    }
    let total = pieces.iter().map(|p| p.len).sum::<u64>();
    let (left, right) = split(pieces, total, unit);
    merge_subtrees_non_root(&subtree(left, unit), &subtree(right, unit), Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pieces_of(data: &[u8], unit: usize) -> Vec<Piece> {
        data.chunks(unit)
            .enumerate()
            .map(|(i, c)| {
                let offset = (i * unit) as u64;
                Piece {
                    offset,
                    len: c.len() as u64,
                    cv: chunk_cv(offset, c),
                }
            })
            .collect()
    }

    #[test]
    fn matches_plain_blake3_on_edge_sizes() {
        let unit = 4096;
        for len in [
            unit + 1,
            2 * unit,
            2 * unit + 1,
            3 * unit,
            5 * unit - 1,
            8 * unit,
            9 * unit + 7,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let got = combine(&pieces_of(&data, unit)).expect("uniform shape combines");
            assert_eq!(got, *blake3::hash(&data).as_bytes(), "len {len}");
        }
    }

    #[test]
    fn offset_zero_cv_matches_separate_pass() {
        let data = vec![7u8; 10_000];
        let (id, cv) = id_and_cv_at_zero(&data);
        assert_eq!(id, *blake3::hash(&data).as_bytes());
        assert_eq!(Some(cv), chunk_cv(0, &data));
    }

    #[test]
    fn irregular_shapes_are_refused() {
        let data = vec![1u8; 10_000];
        // 3000 is not a power of two.
        assert!(combine(&pieces_of(&data, 3000)).is_none());
        // A missing CV.
        let mut p = pieces_of(&data, 2048);
        p[1].cv = None;
        assert!(combine(&p).is_none());
        // One piece: the caller uses the chunk id.
        assert!(combine(&pieces_of(&data[..100], 2048)).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn combine_equals_blake3(len in 1usize..40_000, shift in 10u32..14) {
            let unit = 1usize << shift;
            let data: Vec<u8> = (0..len).map(|i| (i as u32).wrapping_mul(2654435761) as u8).collect();
            let pieces = pieces_of(&data, unit);
            match combine(&pieces) {
                Some(h) => prop_assert_eq!(h, *blake3::hash(&data).as_bytes()),
                None => prop_assert!(pieces.len() < 2),
            }
        }
    }
}
