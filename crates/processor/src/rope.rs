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
    get_rope_index_media(input_ids, image_grids, &[], ids, spatial_merge)
}

/// [`get_rope_index`] with videos: each video grid (t, h, w) is split into t grids (1, h, w), one per frame
/// group, consumed in order by the runs of `<|video_pad|>` (every group has its own
/// `<|vision_start|>…<|vision_end|>` after its timestamp text, transformers 5.23).
pub fn get_rope_index_media(
    input_ids: &[u32],
    image_grids: &[[usize; 3]],
    video_grids: &[[usize; 3]],
    ids: &SpecialIds,
    spatial_merge: usize,
) -> Result<([Vec<i64>; 3], i64), ProcessorError> {
    if spatial_merge == 0 {
        return Err(ProcessorError::RopeIndex("spatial_merge is 0".into()));
    }
    let video_frames: Vec<[usize; 3]> = video_grids
        .iter()
        .flat_map(|&[t, h, w]| std::iter::repeat_n([1, h, w], t))
        .collect();
    let n = input_ids.len();
    let mut pos: [Vec<i64>; 3] = [
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    ];
    let mut cur: i64 = 0;
    let mut next = [0usize; 2];
    let mut i = 0;
    while i < n {
        let kind = if input_ids[i] == ids.image_token_id {
            0
        } else if input_ids[i] == ids.video_token_id {
            1
        } else {
            // 1. Text token: (cur, cur, cur).
            for p in pos.iter_mut() {
                p.push(cur);
            }
            cur += 1;
            i += 1;
            continue;
        };
        let (what, grids, token) = if kind == 0 {
            ("image", image_grids, ids.image_token_id)
        } else {
            ("video frame group", &video_frames[..], ids.video_token_id)
        };
        // 2. An image or a video frame group: the next grid's tokens, row-major over the merged (gh, gw) grid.
        let Some(&[t, h, w]) = grids.get(next[kind]) else {
            return Err(ProcessorError::RopeIndex(format!(
                "{what} tokens at position {i} but only {} {what} grids were given",
                grids.len()
            )));
        };
        next[kind] += 1;
        if h % spatial_merge != 0 || w % spatial_merge != 0 || t == 0 {
            return Err(ProcessorError::RopeIndex(format!(
                "{what} grid {t}x{h}x{w} is not divisible by spatial_merge {spatial_merge}"
            )));
        }
        let (gh, gw) = (h / spatial_merge, w / spatial_merge);
        let len = t * gh * gw;
        let run = input_ids[i..].iter().take_while(|&&x| x == token).count();
        if run < len {
            return Err(ProcessorError::RopeIndex(format!(
                "{what} {} (grid {t}x{h}x{w}) needs {len} {what} tokens at position {i}, found {run}",
                next[kind] - 1
            )));
        }
        for tt in 0..t {
            for r in 0..gh {
                for c in 0..gw {
                    // time_interval is 1 per temporal group.
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
    if next[0] != image_grids.len() {
        return Err(ProcessorError::RopeIndex(format!(
            "{} image grids were given but the tokens hold {} images",
            image_grids.len(),
            next[0]
        )));
    }
    if next[1] != video_frames.len() {
        return Err(ProcessorError::RopeIndex(format!(
            "{} video frame groups were given but the tokens hold {}",
            video_frames.len(),
            next[1]
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

    #[test]
    fn video_groups_are_positioned_one_frame_group_at_a_time() {
        let ids = SpecialIds::default();
        let (t, vs, ve, vid) = (
            100u32,
            ids.vision_start_token_id,
            ids.vision_end_token_id,
            ids.video_token_id,
        );
        // A video of grid (2, 4, 6): two groups of 2x3 = 6 tokens, each wrapped and after a timestamp token.
        let mut toks = vec![t, vs];
        for _ in 0..2 {
            toks.extend([t, vs]);
            toks.extend(std::iter::repeat_n(vid, 6));
            toks.push(ve);
        }
        toks.extend([ve, t]);
        let (pos, delta) = get_rope_index_media(&toks, &[], &[[2, 4, 6]], &ids, 2).unwrap();
        let want_t: Vec<i64> = [
            vec![0, 1, 2, 3],
            vec![4; 6],
            vec![7, 8, 9],
            vec![10; 6],
            vec![13, 14, 15],
        ]
        .concat();
        let want_w: Vec<i64> = [
            vec![0, 1, 2, 3],
            vec![4, 5, 6, 4, 5, 6],
            vec![7, 8, 9],
            vec![10, 11, 12, 10, 11, 12],
            vec![13, 14, 15],
        ]
        .concat();
        assert_eq!(pos[0], want_t);
        assert_eq!(pos[2], want_w);
        assert_eq!(pos[1][4..10], [4, 4, 4, 5, 5, 5]);
        assert_eq!(delta, 16 - toks.len() as i64);
        // One group's tokens missing.
        let e = get_rope_index_media(&toks[..12], &[], &[[2, 4, 6]], &ids, 2).unwrap_err();
        assert!(e.to_string().contains("2 video frame groups"), "{e}");
    }
}
