//! Reads `model.safetensors`: an 8-byte little-endian header length, a JSON
//! header naming each tensor's dtype, shape and byte range, then the raw
//! little-endian data. Tensors are converted to `f32` on load.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::{ModelError, format_err, read_file};

pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

impl Weights {
    pub fn read(path: &Path) -> Result<Weights, ModelError> {
        let bytes = read_file(path)?;
        Weights::parse(&bytes).map_err(|e| format_err(format!("{}: {e}", path.display())))
    }

    pub fn parse(bytes: &[u8]) -> Result<Weights, String> {
        let header_len = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
            .ok_or("not a safetensors file (shorter than its header)")?;
        let body_start =
            8usize.checked_add(header_len).filter(|&s| s <= bytes.len()).ok_or("header length past the end")?;
        let header: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..body_start]).map_err(|e| format!("bad header: {e}"))?;
        let body = &bytes[body_start..];
        let mut tensors = HashMap::new();
        for (name, value) in header {
            if name == "__metadata__" {
                continue;
            }
            let entry: Entry = serde_json::from_value(value).map_err(|e| format!("tensor {name}: {e}"))?;
            let [from, to] = entry.data_offsets;
            let raw = body.get(from..to).filter(|_| from <= to).ok_or(format!("tensor {name}: data out of range"))?;
            let count: usize = entry.shape.iter().product();
            let data = match entry.dtype.as_str() {
                "F32" => convert(raw, 4, count, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                "F16" => convert(raw, 2, count, |b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
                "BF16" => convert(raw, 2, count, |b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)),
                // Integer tensors (e.g. `position_ids`) are not weights.
                _ => continue,
            }
            .ok_or(format!("tensor {name}: {} bytes do not hold {count} {}", raw.len(), entry.dtype))?;
            tensors.insert(name, Tensor { shape: entry.shape, data });
        }
        Ok(Weights { tensors })
    }

    /// Removes and returns a tensor, checking its shape. Names are tried as
    /// given and with a `bert.` prefix (checkpoints saved from a task model).
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let tensor = self
            .tensors
            .remove(name)
            .or_else(|| self.tensors.remove(&format!("bert.{name}")))
            .ok_or_else(|| format_err(format!("model.safetensors has no tensor `{name}`")))?;
        if tensor.shape != shape {
            return Err(format_err(format!("tensor `{name}` has shape {:?}, expected {shape:?}", tensor.shape)));
        }
        Ok(tensor.data)
    }
}

fn convert(raw: &[u8], width: usize, count: usize, f: impl Fn(&[u8]) -> f32) -> Option<Vec<f32>> {
    (raw.len() == width * count).then(|| raw.chunks_exact(width).map(f).collect())
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if frac == 0 => sign,
        0 => {
            // Subnormal: normalise the fraction.
            let mut e = 127 - 15 + 1;
            let mut f = frac;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        0x1f => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_f32_f16_and_skips_integers() {
        let header = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},"ids":{"dtype":"I64","shape":[1],"data_offsets":[12,20]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&1.5f32.to_le_bytes());
        bytes.extend_from_slice(&(-2.0f32).to_le_bytes());
        bytes.extend_from_slice(&0x3c00u16.to_le_bytes()); // 1.0
        bytes.extend_from_slice(&0xc100u16.to_le_bytes()); // -2.5
        bytes.extend_from_slice(&7i64.to_le_bytes());
        let mut w = Weights::parse(&bytes).unwrap();
        assert_eq!(w.take("a", &[2]).unwrap(), vec![1.5, -2.0]);
        assert_eq!(w.take("b", &[2]).unwrap(), vec![1.0, -2.5]);
        assert!(w.take("ids", &[1]).is_err());
        assert!(Weights::parse(&bytes[..20]).is_err());
    }
}
