//! The random values of a tensor, drawn as bf16.

use qwen3vl_kernels::scalar::bf16_from_f32 as f32_to_bf16;

use super::Init;
use crate::sampling::Rng;

/// `n` bf16 values (little-endian bytes) drawn from `init` into `buf` (cleared first).
pub(super) fn fill_bf16(rng: &mut Rng, init: Init, n: usize, buf: &mut Vec<u8>) {
    buf.clear();
    buf.reserve(n * 2);
    let Init::Uniform { mean, std } = init;
    // Uniform on [mean − a, mean + a) has std a/√3.
    let a = std * 3f32.sqrt();
    let scale = 2.0 * a / (1u32 << 24) as f32;
    let mut push = |bits: u32| {
        let x = mean - a + (bits >> 8) as f32 * scale;
        buf.extend_from_slice(&f32_to_bf16(x).to_le_bytes());
    };
    for _ in 0..n / 2 {
        let r = rng.next_u64();
        push(r as u32);
        push((r >> 32) as u32);
    }
    if n % 2 == 1 {
        push(rng.next_u64() as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_values_have_requested_moments() {
        let mut rng = Rng::new(3);
        let mut buf = Vec::new();
        fill_bf16(
            &mut rng,
            Init::Uniform {
                mean: 1.0,
                std: 0.5,
            },
            100_001,
            &mut buf,
        );
        assert_eq!(buf.len(), 200_002);
        let xs: Vec<f64> = buf
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) as f64)
            .collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.01, "{}", var.sqrt());
        let lim = 1.0 + 0.5 * 3f64.sqrt() + 0.01;
        assert!(xs
            .iter()
            .all(|&x| x.is_finite() && (2.0 - lim..=lim).contains(&x)));
    }

    #[test]
    fn bf16_rounding() {
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        assert_eq!(f32_to_bf16(-2.0), 0xC000);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3F80);
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3F82);
    }
}
