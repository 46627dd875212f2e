//! `get_rope_index` (spec 5.2): 3-D M-RoPE position ids (T, H, W) of a prefill and the rope delta.

use crate::{ProcessorError, SpecialIds};

/// Positions (3, L) as [T, H, W] and `rope_delta = max(all positions) + 1 - L` for the unpadded token
/// sequence `input_ids`. Each image occupies `t·h·w / merge²` consecutive `<|image_pad|>` tokens, consuming
/// `image_grids` in order; text tokens (including the vision start/end markers) count up by one.
pub fn get_rope_index(
    input_ids: &[u32],
    image_grids: &[[usize; 3]],
    ids: &SpecialIds,
    spatial_merge: usize,
) -> Result<([Vec<i64>; 3], i64), ProcessorError> {
    if spatial_merge == 0 {
        return Err(ProcessorError::RopeIndex("spatial_merge is 0".into()));
    }
    let n = input_ids.len();
    let mut pos: [Vec<i64>; 3] = [
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    ];
    let mut cur: i64 = 0;
    let mut next_grid = 0;
    let mut i = 0;
    while i < n {
        if input_ids[i] != ids.image_token_id {
            // 1. Text token: (cur, cur, cur).
            for p in pos.iter_mut() {
                p.push(cur);
            }
            cur += 1;
            i += 1;
            continue;
        }
        // 2. An image: the next grid's tokens, in row-major order over the merged (gh, gw) grid.
        let Some(&[t, h, w]) = image_grids.get(next_grid) else {
            return Err(ProcessorError::RopeIndex(format!(
                "image tokens at position {i} but only {} image grids were given",
                image_grids.len()
            )));
        };
        next_grid += 1;
        if h % spatial_merge != 0 || w % spatial_merge != 0 || t == 0 {
            return Err(ProcessorError::RopeIndex(format!(
                "image grid {t}x{h}x{w} is not divisible by spatial_merge {spatial_merge}"
            )));
        }
        let (gh, gw) = (h / spatial_merge, w / spatial_merge);
        let len = t * gh * gw;
        let run = input_ids[i..]
            .iter()
            .take_while(|&&x| x == ids.image_token_id)
            .count();
        if run < len {
            return Err(ProcessorError::RopeIndex(format!(
                "image {} (grid {t}x{h}x{w}) needs {len} image tokens at position {i}, found {run}",
                next_grid - 1
            )));
        }
        for tt in 0..t {
            for r in 0..gh {
                for c in 0..gw {
                    // time_interval is 1 per temporal group for images.
                    pos[0].push(cur + tt as i64);
                    pos[1].push(cur + r as i64);
                    pos[2].push(cur + c as i64);
                }
            }
        }
        // transformers 5.23: current_pos += max(h, w) // merge (not gh·gw).
        cur += gh.max(gw) as i64;
        i += len;
    }
    if next_grid != image_grids.len() {
        return Err(ProcessorError::RopeIndex(format!(
            "{} image grids were given but the tokens hold {next_grid} images",
            image_grids.len()
        )));
    }
    let max = pos
        .iter()
        .flat_map(|p| p.iter().copied())
        .max()
        .unwrap_or(-1);
    let delta = if n == 0 { 0 } else { max + 1 - n as i64 };
    Ok((pos, delta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_of_spec_5_2() {
        let ids = SpecialIds::default();
        let (t, vs, ve, img) = (
            100u32,
            ids.vision_start_token_id,
            ids.vision_end_token_id,
            ids.image_token_id,
        );
        let mut toks = vec![t, t, vs];
        toks.extend(std::iter::repeat_n(img, 15));
        toks.extend([ve, t, t, vs]);
        toks.extend(std::iter::repeat_n(img, 4));
        toks.extend([ve, t, t, t]);
        let (pos, delta) = get_rope_index(&toks, &[[1, 6, 10], [1, 4, 4]], &ids, 2).unwrap();
        let want_t: Vec<i64> = [
            vec![0, 1, 2],
            vec![3; 15],
            vec![8, 9, 10, 11],
            vec![12; 4],
            vec![14, 15, 16, 17],
        ]
        .concat();
        let want_h: Vec<i64> = [
            vec![0, 1, 2],
            vec![3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5],
            vec![8, 9, 10, 11],
            vec![12, 12, 13, 13],
            vec![14, 15, 16, 17],
        ]
        .concat();
        let want_w: Vec<i64> = [
            vec![0, 1, 2],
            vec![3, 4, 5, 6, 7, 3, 4, 5, 6, 7, 3, 4, 5, 6, 7],
            vec![8, 9, 10, 11],
            vec![12, 13, 12, 13],
            vec![14, 15, 16, 17],
        ]
        .concat();
        assert_eq!(pos[0], want_t);
        assert_eq!(pos[1], want_h);
        assert_eq!(pos[2], want_w);
        assert_eq!(delta, -12);
    }

    #[test]
    fn text_only_has_zero_delta() {
        let (pos, delta) = get_rope_index(&[1, 2, 3], &[], &SpecialIds::default(), 2).unwrap();
        assert_eq!(pos[1], vec![0, 1, 2]);
        assert_eq!(delta, 0);
    }

    #[test]
    fn grid_and_token_mismatches_are_errors() {
        let ids = SpecialIds::default();
        let img = ids.image_token_id;
        // 3 tokens for a grid needing 4.
        let e = get_rope_index(&[1, img, img, img, 2], &[[1, 4, 4]], &ids, 2).unwrap_err();
        assert!(e.to_string().contains("needs 4 image tokens"), "{e}");
        // Tokens but no grid.
        assert!(get_rope_index(&[img], &[], &ids, 2).is_err());
        // A grid but no tokens.
        let e = get_rope_index(&[1, 2], &[[1, 2, 2]], &ids, 2).unwrap_err();
        assert!(e.to_string().contains("1 image grids were given"), "{e}");
    }
}
