//! int8 vectors for the in-process scan: each unit vector is kept as 384
//! signed bytes and one scale (`x ≈ code × scale`, the scale making the
//! largest component ±127). A scan reads a quarter of the memory a float
//! scan does and multiplies bytes with SIMD integer instructions; the error
//! on a cosine is about 1e-3, and the store rescores the best candidates
//! with the exact float vectors, so the top-k is the exact one.

/// The bytes and scale of one vector.
pub fn quantize(v: &[f32], codes: &mut Vec<i8>) -> f32 {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        codes.extend(std::iter::repeat_n(0i8, v.len()));
        return 0.0;
    }
    let scale = max / 127.0;
    codes.extend(v.iter().map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8));
    scale
}

/// Σ aᵢ·bᵢ over bytes, as an exact integer. Uses AVX2 when the CPU has it
/// (checked once), else whatever the baseline target vectorises to.
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static AVX2: OnceLock<bool> = OnceLock::new();
        if *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2")) {
            // SAFETY: the CPU was just checked to support AVX2.
            return unsafe { dot_i8_avx2(a, b) };
        }
    }
    dot_i8_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    // The same loop, compiled with AVX2 allowed: LLVM widens to 16-bit
    // lanes and uses vpmaddwd.
    dot_i8_portable(a, b)
}

#[inline(always)]
fn dot_i8_portable(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i16 as i32 * y as i16 as i32).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::embedding::{LocalEmbedder, dot};

    #[test]
    fn quantized_cosines_are_close() {
        let texts = ["green tea in the morning", "tea ceremony in Kyoto", "parking at the airport", "tea"];
        let vectors: Vec<Vec<f32>> = texts.iter().map(|t| LocalEmbedder::embed_one(t)).collect();
        let mut codes = Vec::new();
        let scales: Vec<f32> = vectors.iter().map(|v| quantize(v, &mut codes)).collect();
        let d = vectors[0].len();
        for i in 0..texts.len() {
            for j in 0..texts.len() {
                let exact = dot(&vectors[i], &vectors[j]);
                let approx =
                    dot_i8(&codes[i * d..(i + 1) * d], &codes[j * d..(j + 1) * d]) as f32 * scales[i] * scales[j];
                assert!((exact - approx).abs() < 0.01, "{i},{j}: {exact} vs {approx}");
            }
        }
        assert_eq!(dot_i8(&[127, -127, 3], &[127, 127, -2]), 127 * 127 - 127 * 127 - 6);
        let mut zero = Vec::new();
        assert_eq!(quantize(&[0.0; 4], &mut zero), 0.0);
        assert_eq!(zero, vec![0; 4]);
    }
}
