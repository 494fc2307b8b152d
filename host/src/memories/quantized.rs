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
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let whole = n - n % 32;
    // |a|·(b·sign a) = a·b, and |a| is unsigned: vpmaddubsw then multiplies
    // 32 byte pairs and adds neighbours into i16 (at most 2·127·127, no
    // saturation: codes stay in -127..=127), vpmaddwd widens to i32.
    // SAFETY: AVX2 is enabled for this function; loads are unaligned ones
    // within the slices' first `whole` bytes.
    let sum = unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_si256();
        let mut i = 0;
        while i < whole {
            let x = _mm256_loadu_si256(a.as_ptr().add(i) as *const __m256i);
            let y = _mm256_loadu_si256(b.as_ptr().add(i) as *const __m256i);
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
            i += 32;
        }
        let half = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
        let half = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0b01_00_11_10));
        let half = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0b10_11_00_01));
        _mm_cvtsi128_si32(half)
    };
    sum + dot_i8_portable(&a[whole..n], &b[whole..n])
}

/// Words of sign bits per vector of `dims` dimensions.
pub const fn sign_words(dims: usize) -> usize {
    dims.div_ceil(64)
}

/// One bit per dimension, set where the component is positive: the
/// coarsest code, for a first pass over very large orgs (`index.rs`). The
/// Hamming distance between two such codes grows with the angle between
/// the vectors.
pub fn sign_bits(v: &[f32], out: &mut Vec<u64>) {
    for chunk in v.chunks(64) {
        let mut word = 0u64;
        for (j, x) in chunk.iter().enumerate() {
            if *x > 0.0 {
                word |= 1 << j;
            }
        }
        out.push(word);
    }
}

/// Differing bits between two sign codes.
#[inline]
pub fn hamming(a: &[u64], b: &[u64]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
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
        // the SIMD path (32 bytes at a time, then the tail) against the plain loop
        let a: Vec<i8> = (0..77).map(|i| ((i * 37) % 255 - 127) as i8).collect();
        let b: Vec<i8> = (0..77).map(|i| ((i * 91 + 13) % 255 - 127) as i8).collect();
        assert_eq!(dot_i8(&a, &b), dot_i8_portable(&a, &b));
        let extremes = vec![-127i8; 64];
        assert_eq!(dot_i8(&extremes, &extremes), 64 * 127 * 127);
        let mut bits = Vec::new();
        sign_bits(&vectors[0], &mut bits);
        assert_eq!(bits.len(), sign_words(d));
        let mut other = Vec::new();
        sign_bits(&vectors[0].iter().map(|x| -x).collect::<Vec<_>>(), &mut other);
        let zeros = vectors[0].iter().filter(|x| **x == 0.0).count() as u32;
        assert_eq!(hamming(&bits, &bits), 0);
        assert_eq!(hamming(&bits, &other), d as u32 - zeros);
        let mut zero = Vec::new();
        assert_eq!(quantize(&[0.0; 4], &mut zero), 0.0);
        assert_eq!(zero, vec![0; 4]);
    }
}
