//! An exponential moving average of the weights, kept beside the weights being trained
//! (Polyak averaging; Marian's `--exponential-smoothing`, fairseq's `--ema-decay`).
//!
//! After update `t` every averaged value moves toward the trained one:
//! `avg += (w - avg) * (1 - d)` with `d = min(decay, (1 + t) / (10 + t))`, so the first
//! updates are followed closely and the random start is soon forgotten. The arithmetic of
//! each element is fixed, so the average does not depend on the thread count.

use std::collections::HashMap;

use candle::{CpuStorage, DType, Storage, Tensor};
use rayon::prelude::*;

use crate::optim::Optimizer;
use crate::Result;
use gnmt_ops::adam::with_f32_mut;

/// Elements one parallel task of the update owns.
const CHUNK: usize = 1 << 15;

pub(crate) struct Ema {
    decay: f64,
    /// The averages, in the optimiser's (sorted) parameter order.
    averages: Vec<(String, Tensor)>,
}

impl Ema {
    /// An average that starts at the current weights.
    pub fn start(decay: f64, optimizer: &Optimizer) -> Result<Self> {
        let averages = optimizer
            .vars()
            .map(|(name, var)| Ok((name.to_string(), var.as_tensor().copy()?)))
            .collect::<Result<_>>()?;
        Ok(Self { decay, averages })
    }

    /// An average restored from saved `tensors` (a checkpoint's model weights), which must
    /// hold exactly the optimiser's parameters in their shapes.
    pub fn restore(
        decay: f64,
        optimizer: &Optimizer,
        mut tensors: HashMap<String, Tensor>,
    ) -> Result<Self> {
        let averages = optimizer
            .vars()
            .map(|(name, var)| {
                let t = tensors.remove(name).ok_or_else(|| {
                    crate::Error::Checkpoint(format!("the weight average lacks {name}"))
                })?;
                if t.dims() != var.dims() {
                    return Err(crate::Error::Checkpoint(format!(
                        "the weight average of {name} has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                Ok((name.to_string(), t.to_dtype(var.dtype())?.copy()?))
            })
            .collect::<Result<_>>()?;
        Ok(Self { decay, averages })
    }

    /// The decay applied after update `step` (counted from 1).
    pub fn decay_at(&self, step: u64) -> f64 {
        let t = step as f64;
        self.decay.min((1.0 + t) / (10.0 + t))
    }

    /// Moves the average toward the optimiser's weights after update `step`.
    pub fn update(&mut self, optimizer: &Optimizer, step: u64) -> Result<()> {
        let rate = 1.0 - self.decay_at(step);
        for ((_, avg), (_, var)) in self.averages.iter_mut().zip(optimizer.vars()) {
            let w = var.as_tensor();
            if w.dtype() == DType::F32 && w.device().is_cpu() {
                move_toward(avg, w, rate as f32)?;
            } else {
                *avg = (&*avg + ((w - &*avg)? * rate)?)?;
            }
        }
        Ok(())
    }

    /// The averaged weights by parameter name.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.averages.iter().cloned().collect()
    }
}

/// `avg += (w - avg) * rate`, in place, in parallel over fixed chunks.
fn move_toward(avg: &Tensor, w: &Tensor, rate: f32) -> Result<()> {
    let w = w.contiguous()?;
    let (storage, layout) = w.storage_and_layout();
    let w = match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(d)), Some((a, b))) => &d[a..b],
        _ => return Err(candle::Error::Msg("ema: f32 CPU weights only".into()).into()),
    };
    with_f32_mut(avg, |avg| {
        if avg.len() != w.len() {
            candle::bail!("ema: the average and the weight differ in size")
        }
        avg.par_chunks_mut(CHUNK)
            .zip(w.par_chunks(CHUNK))
            .for_each(|(a, w)| {
                for (a, &w) in a.iter_mut().zip(w) {
                    *a += (w - *a) * rate;
                }
            });
        Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::Device;
    use candle_nn::{Init, VarMap};

    fn weights(varmap: &VarMap) -> Vec<f32> {
        let data = varmap.data().lock().unwrap();
        let w = data["w"].to_dtype(DType::F32).unwrap();
        w.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The in-place f32 update against the formula in f64, over several updates with the
    /// early decay schedule; and the composite path (f64 weights) agrees.
    #[test]
    fn the_average_follows_the_formula() {
        for dtype in [DType::F32, DType::F64] {
            let varmap = VarMap::new();
            varmap
                .get(70_000, "w", Init::Const(0.0), dtype, &Device::Cpu)
                .unwrap();
            let optimizer = Optimizer::new(&varmap).unwrap();
            let w = optimizer.vars().next().unwrap().1.clone();
            let mut ema = Ema::start(0.9, &optimizer).unwrap();
            let mut want = 0.0f64;
            for step in 1..=5u64 {
                let value = step as f64;
                w.set(
                    &Tensor::full(value, 70_000, &Device::Cpu)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap(),
                )
                .unwrap();
                ema.update(&optimizer, step).unwrap();
                let d = 0.9f64.min((1.0 + step as f64) / (10.0 + step as f64));
                want = d * want + (1.0 - d) * value;
            }
            let got: Vec<f64> = ema.tensors()["w"]
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(
                got.iter().all(|&g| (g - want).abs() < 1e-5),
                "{dtype:?}: {} vs {want}",
                got[0]
            );
            // The trained weights are untouched.
            assert!(weights(&varmap).iter().all(|&x| x == 5.0));
        }
    }

    #[test]
    fn a_saved_average_must_fit_the_model() {
        let varmap = VarMap::new();
        varmap
            .get((2, 3), "w", Init::Const(1.0), DType::F32, &Device::Cpu)
            .unwrap();
        let optimizer = Optimizer::new(&varmap).unwrap();
        let wrong = HashMap::from([(
            "w".to_string(),
            Tensor::zeros(6, DType::F32, &Device::Cpu).unwrap(),
        )]);
        let err = Ema::restore(0.99, &optimizer, wrong)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("shape [6], expected [2, 3]"), "{err}");
        let err = Ema::restore(0.99, &optimizer, HashMap::new())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("lacks w"), "{err}");
    }
}
