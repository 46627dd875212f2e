//! Normalization and patch layout (spec 6.2 step 4, 6.4).

/// Per-channel lookup table u8 -> f32 of torchvision's fused rescale+normalize:
/// `(u - mean·(1/rescale)) / (std·(1/rescale))` in f32, the mean and std products rounded from f64 to f32.
pub fn normalize_table(mean: [f64; 3], std: [f64; 3], rescale_factor: f64) -> [[f32; 256]; 3] {
    let mut t = [[0f32; 256]; 3];
    for c in 0..3 {
        let m = (mean[c] * (1.0 / rescale_factor)) as f32;
        let s = (std[c] * (1.0 / rescale_factor)) as f32;
        for (u, v) in t[c].iter_mut().enumerate() {
            *v = (u as f32 - m) / s;
        }
    }
    t
}

/// Patchify one picture for a single image (frame duplicated in time).
/// img: (h, w, 3) uint8 with h, w multiples of patch·merge -> (gh·gw, 3·temporal·patch²) f32 rows in the order
/// (block_row, block_col, in_row, in_col), each row ordered (c, t, py, px):
/// `row[c·T·P² + t·P² + py·P + px] = norm[c][A[(2·br + ir)·P + py, (2·bc + ic)·P + px, c]]`.
pub fn patchify(
    img: &[u8],
    h: usize,
    w: usize,
    patch: usize,
    merge: usize,
    temporal: usize,
    norm: &[[f32; 256]; 3],
) -> Vec<f32> {
    let (gh, gw) = (h / patch, w / patch);
    let pp = patch * patch;
    // Written strictly in output order (no zero fill, no second pass): one patch of one channel is
    // gathered into `tile`, then appended once per frame.
    let mut out = crate::alloc::big_vec(gh * gw * 3 * temporal * pp);
    let mut tile = vec![0f32; pp];
    for br in 0..gh / merge {
        for bc in 0..gw / merge {
            for ir in 0..merge {
                for ic in 0..merge {
                    let (y0, x0) = ((br * merge + ir) * patch, (bc * merge + ic) * patch);
                    for (c, table) in norm.iter().enumerate() {
                        for (py, trow) in tile.chunks_exact_mut(patch).enumerate() {
                            let start = ((y0 + py) * w + x0) * 3;
                            let src = &img[start..start + patch * 3];
                            for (d, px) in trow.iter_mut().zip(src.chunks_exact(3)) {
                                *d = table[px[c] as usize];
                            }
                        }
                        for _ in 0..temporal {
                            out.extend_from_slice(&tile);
                        }
                    }
                }
            }
        }
    }
    out
}
