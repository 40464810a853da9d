//! Gradient statistics: the global norm used for clipping, non-finite detection, and the norm
//! reaching each layer (what makes residual connections visible).

use std::collections::BTreeMap;

use candle::backprop::GradStore;
use candle::{DType, Var};

use crate::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct GradStats {
    /// L2 norm over all parameters (NaN or infinite when any gradient is).
    pub total_norm: f64,
    /// L2 norm per layer group, e.g. `encoder.layer1`, `decoder.attention`.
    pub groups: BTreeMap<String, f64>,
}

impl GradStats {
    pub fn measure<'a>(
        grads: &GradStore,
        vars: impl Iterator<Item = (&'a str, &'a Var)>,
    ) -> Result<Self> {
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        for (name, var) in vars {
            if let Some(g) = grads.get(var) {
                let s = g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
                *sums.entry(layer_group(name)).or_insert(0.0) += s;
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
}
