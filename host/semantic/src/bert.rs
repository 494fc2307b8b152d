//! The BERT encoder forward pass (Hugging Face `BertModel`, absolute
//! positions, no padding: each text is its own sequence, so no attention
//! mask is needed) and the pooling that makes one vector of a text.
//!
//! All texts of a pass are stacked into one `[tokens × hidden]` matrix, so
//! every dense layer is one matrix product whatever the batch; attention runs
//! per text and head on strided views of the same buffers.

use serde::Deserialize;

use crate::weights::Weights;
use crate::{ModelError, Pooling, format_err};

#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "eps")]
    pub layer_norm_eps: f32,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn two() -> usize {
    2
}
fn eps() -> f32 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    /// `x·Φ(x)` with the exact normal CDF (BERT's "gelu").
    GeluErf,
    /// The tanh approximation ("gelu_new", "gelu_pytorch_tanh").
    GeluTanh,
}

struct Linear {
    /// `[out × in]`, row-major, as PyTorch stores it.
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

struct Layer {
    /// Query, key and value fused: one product gives all three.
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

pub struct Bert {
    config: BertConfig,
    activation: Activation,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl Bert {
    pub fn new(config: BertConfig, mut w: Weights) -> Result<Bert, ModelError> {
        let h = config.hidden_size;
        if h == 0 || config.num_attention_heads == 0 || !h.is_multiple_of(config.num_attention_heads) {
            return Err(format_err(format!(
                "hidden_size {h} is not a multiple of num_attention_heads {}",
                config.num_attention_heads
            )));
        }
        if let Some(kind) = config.position_embedding_type.as_deref().filter(|k| *k != "absolute") {
            return Err(format_err(format!("position_embedding_type `{kind}` is not supported")));
        }
        let activation = match config.hidden_act.as_str() {
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            other => return Err(format_err(format!("hidden_act `{other}` is not supported"))),
        };
        let i = config.intermediate_size;
        let norm = |w: &mut Weights, p: &str| -> Result<LayerNorm, ModelError> {
            Ok(LayerNorm { weight: w.take(&format!("{p}.weight"), &[h])?, bias: w.take(&format!("{p}.bias"), &[h])? })
        };
        let linear = |w: &mut Weights, p: &str, inputs: usize, outputs: usize| -> Result<Linear, ModelError> {
            Ok(Linear {
                weight: w.take(&format!("{p}.weight"), &[outputs, inputs])?,
                bias: w.take(&format!("{p}.bias"), &[outputs])?,
                inputs,
                outputs,
            })
        };
        let word = w.take("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let position = w.take("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?;
        let token_type = w.take("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h])?;
        let embedding_norm = norm(&mut w, "embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let q = linear(&mut w, &format!("{p}.attention.self.query"), h, h)?;
            let k = linear(&mut w, &format!("{p}.attention.self.key"), h, h)?;
            let v = linear(&mut w, &format!("{p}.attention.self.value"), h, h)?;
            let qkv = Linear {
                weight: [q.weight, k.weight, v.weight].concat(),
                bias: [q.bias, k.bias, v.bias].concat(),
                inputs: h,
                outputs: 3 * h,
            };
            layers.push(Layer {
                qkv,
                attention_out: linear(&mut w, &format!("{p}.attention.output.dense"), h, h)?,
                attention_norm: norm(&mut w, &format!("{p}.attention.output.LayerNorm"))?,
                intermediate: linear(&mut w, &format!("{p}.intermediate.dense"), h, i)?,
                output: linear(&mut w, &format!("{p}.output.dense"), i, h)?,
                output_norm: norm(&mut w, &format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(Bert { config, activation, word, position, token_type, embedding_norm, layers })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// One unit vector per sequence of token ids (each already `[CLS] … [SEP]`
    /// and no longer than the model's positions).
    pub fn sentence_vectors(&self, sequences: &[Vec<u32>], pooling: Pooling) -> Vec<Vec<f32>> {
        let h = self.config.hidden_size;
        let states = self.encode(sequences);
        let mut offset = 0;
        sequences
            .iter()
            .map(|ids| {
                let n = ids.len();
                let rows = &states[offset * h..(offset + n) * h];
                offset += n;
                let mut v = match pooling {
                    Pooling::Cls => rows[..h].to_vec(),
                    Pooling::Mean => {
                        let mut sum = vec![0f32; h];
                        for row in rows.chunks_exact(h) {
                            sum.iter_mut().zip(row).for_each(|(s, x)| *s += x);
                        }
                        sum.iter_mut().for_each(|s| *s /= n.max(1) as f32);
                        sum
                    }
                };
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                v
            })
            .collect()
    }

    /// The last hidden states of all tokens, sequences stacked: `[tokens × hidden]`.
    fn encode(&self, sequences: &[Vec<u32>]) -> Vec<f32> {
        let h = self.config.hidden_size;
        let tokens: usize = sequences.iter().map(Vec::len).sum();
        let mut x = Vec::with_capacity(tokens * h);
        for ids in sequences {
            for (pos, &id) in ids.iter().enumerate() {
                let id = (id as usize).min(self.config.vocab_size - 1);
                let pos = pos.min(self.config.max_position_embeddings - 1);
                let (w, p, t) = (&self.word[id * h..][..h], &self.position[pos * h..][..h], &self.token_type[..h]);
                x.extend((0..h).map(|j| w[j] + p[j] + t[j]));
            }
        }
        layer_norm(&mut x, &self.embedding_norm, self.config.layer_norm_eps);
        let heads = self.config.num_attention_heads;
        let head = h / heads;
        let scale = 1.0 / (head as f32).sqrt();
        let mut qkv = Vec::new();
        let mut context = vec![0f32; tokens * h];
        let mut scores = Vec::new();
        let mut hidden = Vec::new();
        let mut out = Vec::new();
        for layer in &self.layers {
            layer.qkv.apply(&x, tokens, &mut qkv);
            let mut offset = 0;
            for ids in sequences {
                let n = ids.len();
                scores.resize(n * n, 0.0);
                let base = offset * 3 * h;
                for hd in 0..heads {
                    // scores = Q_h · K_hᵀ / √d, a row per query token
                    gemm(
                        n,
                        head,
                        n,
                        scale,
                        (&qkv[base + hd * head..], 3 * h, 1),
                        (&qkv[base + h + hd * head..], 1, 3 * h),
                        0.0,
                        (&mut scores, n, 1),
                    );
                    for row in scores.chunks_exact_mut(n) {
                        softmax(row);
                    }
                    // context_h = softmax(scores) · V_h
                    gemm(
                        n,
                        n,
                        head,
                        1.0,
                        (&scores, n, 1),
                        (&qkv[base + 2 * h + hd * head..], 3 * h, 1),
                        0.0,
                        (&mut context[offset * h + hd * head..], h, 1),
                    );
                }
                offset += n;
            }
            layer.attention_out.apply(&context, tokens, &mut out);
            add_assign(&mut out, &x);
            layer_norm(&mut out, &layer.attention_norm, self.config.layer_norm_eps);
            std::mem::swap(&mut x, &mut out);
            layer.intermediate.apply(&x, tokens, &mut hidden);
            match self.activation {
                Activation::GeluErf => hidden.iter_mut().for_each(|v| *v = gelu_erf(*v)),
                Activation::GeluTanh => hidden.iter_mut().for_each(|v| *v = gelu_tanh(*v)),
            }
            layer.output.apply(&hidden, tokens, &mut out);
            add_assign(&mut out, &x);
            layer_norm(&mut out, &layer.output_norm, self.config.layer_norm_eps);
            std::mem::swap(&mut x, &mut out);
        }
        x
    }
}

impl Linear {
    /// `out = x · Wᵀ + b` for `rows` rows of `x`.
    fn apply(&self, x: &[f32], rows: usize, out: &mut Vec<f32>) {
        out.clear();
        for _ in 0..rows {
            out.extend_from_slice(&self.bias);
        }
        gemm(
            rows,
            self.inputs,
            self.outputs,
            1.0,
            (x, self.inputs, 1),
            (&self.weight, 1, self.inputs),
            1.0,
            (out, self.outputs, 1),
        );
    }
}

/// `c = alpha · a · b + beta · c` on strided views `(slice, row stride,
/// column stride)`; `a` is `m × k`, `b` is `k × n`, `c` is `m × n`. Checks
/// every view lies inside its slice, so the unsafe kernel cannot stray.
#[allow(clippy::too_many_arguments)]
fn gemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
    beta: f32,
    c: (&mut [f32], usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    if k > 0 {
        assert!(last(m, k, a.1, a.2) < a.0.len() && last(k, n, b.1, b.2) < b.0.len(), "gemm input view out of range");
    }
    assert!(last(m, n, c.1, c.2) < c.0.len(), "gemm output view out of range");
    // SAFETY: the views were checked to lie inside their slices above; `c`
    // is borrowed mutably and cannot alias `a` or `b`.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.0.as_ptr(),
            a.1 as isize,
            a.2 as isize,
            b.0.as_ptr(),
            b.1 as isize,
            b.2 as isize,
            beta,
            c.0.as_mut_ptr(),
            c.1 as isize,
            c.2 as isize,
        );
    }
}

fn add_assign(out: &mut [f32], x: &[f32]) {
    out.iter_mut().zip(x).for_each(|(o, v)| *o += v);
}

fn layer_norm(x: &mut [f32], norm: &LayerNorm, eps: f32) {
    let h = norm.weight.len();
    for row in x.chunks_exact_mut(h) {
        let mean = row.iter().sum::<f32>() / h as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&norm.weight).zip(&norm.bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    row.iter_mut().for_each(|v| *v /= sum);
}

fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2))
}

fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // √(2/π)
    0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
}

/// erf to ~1e-7 (Abramowitz and Stegun 7.1.26 is 1.5e-7; this uses the
/// same form in f64), enough for f32 activations.
fn erf(x: f32) -> f32 {
    let x = x as f64;
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let y = 1.0 - poly * (-x * x).exp();
    (if x >= 0.0 { y } else { -y }) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_close() {
        for (x, want) in [(0.0, 0.0), (0.5, 0.520_499_9), (1.0, 0.842_700_8), (-2.0, -0.995_322_3), (3.0, 0.999_977_9)]
        {
            assert!((erf(x) - want).abs() < 2e-7, "erf({x}) = {} want {want}", erf(x));
        }
    }

    #[test]
    fn gemm_on_strided_views() {
        // a = [[1,2],[3,4]], bᵀ given as rows [[5,6],[7,8]] → a·b = [[17,23],[39,53]]
        let a = [1.0, 2.0, 3.0, 4.0];
        let bt = [5.0, 6.0, 7.0, 8.0];
        let mut c = [0.0; 4];
        gemm(2, 2, 2, 1.0, (&a, 2, 1), (&bt, 1, 2), 0.0, (&mut c, 2, 1));
        assert_eq!(c, [17.0, 23.0, 39.0, 53.0]);
    }
}
