//! Gradient statistics: the global norm used for clipping, non-finite detection, and the norm
//! reaching each layer (what makes residual connections visible).

use std::collections::BTreeMap;

use candle::backprop::GradStore;
use candle::{CpuStorage, Storage, Tensor, Var};
use rayon::prelude::*;

use crate::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct GradStats {
    /// L2 norm over all parameters (NaN or infinite when any gradient is).
    pub total_norm: f64,
    /// L2 norm per layer group, e.g. `encoder.layer1`, `decoder.attention`.
    pub groups: BTreeMap<String, f64>,
}

/// The sum of the squares of a gradient's elements, in f64. CPU tensors are read in place,
/// in parallel over fixed chunks whose sums are added in order: the same bits for any thread
/// count (candle's `sqr` and `sum_all` made a copy and ran on the calling thread alone, a
/// serial stretch of every training step). Other devices go through candle.
fn sum_of_squares(g: &Tensor) -> Result<f64> {
    fn chunked<T: Copy + Into<f64> + Sync>(data: &[T]) -> f64 {
        const CHUNK: usize = 1 << 14;
        // Eight independent lanes, combined in order: a single running f64 sum is a chain of
        // dependent adds the compiler may not reorder.
        const LANES: usize = 8;
        let chunk_sum = |c: &[T]| {
            let mut lanes = [0f64; LANES];
            let mut exact = c.chunks_exact(LANES);
            for group in &mut exact {
                for (l, &x) in lanes.iter_mut().zip(group) {
                    let x: f64 = x.into();
                    *l += x * x;
                }
            }
            for (l, &x) in lanes.iter_mut().zip(exact.remainder()) {
                let x: f64 = x.into();
                *l += x * x;
            }
            lanes.iter().sum::<f64>()
        };
        let sums: Vec<f64> = data.par_chunks(CHUNK).map(chunk_sum).collect();
        sums.iter().sum()
    }
    let g = g.contiguous()?;
    let (storage, layout) = g.storage_and_layout();
    let range = layout.contiguous_offsets();
    Ok(match (&*storage, range) {
        (Storage::Cpu(CpuStorage::F32(d)), Some((a, b))) => chunked(&d[a..b]),
        (Storage::Cpu(CpuStorage::F64(d)), Some((a, b))) => chunked(&d[a..b]),
        _ => {
            drop(storage);
            g.to_dtype(candle::DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?
        }
    })
}

impl GradStats {
    pub fn measure<'a>(
        grads: &GradStore,
        vars: impl Iterator<Item = (&'a str, &'a Var)>,
    ) -> Result<Self> {
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        for (name, var) in vars {
            if let Some(g) = grads.get(var) {
                *sums.entry(layer_group(name)).or_insert(0.0) += sum_of_squares(g)?;
            }
        }
        let total = sums.values().sum::<f64>().sqrt();
        Ok(Self {
            total_norm: total,
            groups: sums.into_iter().map(|(k, v)| (k, v.sqrt())).collect(),
        })
    }

    pub fn is_finite(&self) -> bool {
        self.total_norm.is_finite()
    }

    /// Per-layer norms of one stack in layer order (`encoder` or `decoder`).
    pub fn stack(&self, stack: &str) -> Vec<f64> {
        let mut layers: Vec<(usize, f64)> = self
            .groups
            .iter()
            .filter_map(|(k, &v)| {
                k.strip_prefix(stack)?
                    .strip_prefix(".layer")?
                    .parse()
                    .ok()
                    .map(|n| (n, v))
            })
            .collect();
        layers.sort_by_key(|(n, _)| *n);
        layers.into_iter().map(|(_, v)| v).collect()
    }
}

/// The layer a parameter belongs to: LSTM weights `{stack}.lstm.*_l{k}[_reverse]` belong to
/// `{stack}.layer{k+1}`; everything else to its module (`encoder.embedding`, ...).
pub fn layer_group(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() == 3 && parts[1] == "lstm" {
        let base = parts[2].strip_suffix("_reverse").unwrap_or(parts[2]);
        if let Some(k) = base
            .rsplit_once("_l")
            .and_then(|(_, k)| k.parse::<usize>().ok())
        {
            return format!("{}.layer{}", parts[0], k + 1);
        }
    }
    parts.iter().take(2).copied().collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups() {
        assert_eq!(
            layer_group("encoder.lstm.weight_ih_l0_reverse"),
            "encoder.layer1"
        );
        assert_eq!(layer_group("encoder.lstm.bias_hh_l7"), "encoder.layer8");
        assert_eq!(layer_group("decoder.lstm.weight_hh_l2"), "decoder.layer3");
        assert_eq!(
            layer_group("decoder.attention.query.weight"),
            "decoder.attention"
        );
        assert_eq!(layer_group("encoder.embedding.weight"), "encoder.embedding");
    }

    /// The squares are summed in f64 over the whole gradient (several chunks here), strided
    /// views and f64 included; a NaN anywhere makes the sum NaN; the pool size changes nothing.
    #[test]
    fn sums_of_squares_are_exact_and_see_every_element() {
        let n = 50_000usize;
        let values: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
        let want: f64 = values.iter().map(|&x| (x as f64).powi(2)).sum();
        let g = Tensor::from_vec(values.clone(), (n / 2, 2), &candle::Device::Cpu).unwrap();
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            assert_eq!(pool.install(|| sum_of_squares(&g).unwrap()), want);
        }
        assert_eq!(sum_of_squares(&g.t().unwrap()).unwrap(), want);
        let g64 = g.to_dtype(candle::DType::F64).unwrap();
        assert_eq!(sum_of_squares(&g64).unwrap(), want);
        let mut with_nan = values;
        with_nan[n - 1] = f32::NAN;
        let g = Tensor::from_vec(with_nan, n, &candle::Device::Cpu).unwrap();
        assert!(sum_of_squares(&g).unwrap().is_nan());
    }
}
