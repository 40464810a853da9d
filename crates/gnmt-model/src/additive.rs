//! The additive attention scorer as one fused operation:
//! `scores[b, t, s] = sum_a v[a] * tanh(q[b, t, a] + k[b, s, a])`.
//!
//! Composed from candle ops this materialises several `[B, T, S, A]` tensors (the broadcast
//! sum, its tanh, their gradients): 16.7 million elements per tensor for a batch of 64
//! sentences of 32 tokens with 256 attention units. The fused form reads `q` and `k` once,
//! writes `[B, T, S]`, and recomputes the tanh in the backward pass instead of storing it.
//! [`reference_scores`] is the composite form the tests compare against, values and gradients.
//!
//! Work is split over the batch dimension only, and every sum runs in a fixed order, so the
//! results do not depend on the number of threads.

use candle::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use gnmt_kernels::attention::{additive_row, additive_row_backward};
use gnmt_kernels::Real;

use crate::storage::tensor_slice;

/// Fused `sum_a v_a tanh(q + k)`: `q [B, T, A]`, `k [B, S, A]`, `v [A]` -> `[B, T, S]`.
pub fn additive_scores(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    q.apply_op3(&k, &v, AdditiveScores)
}

/// The same computation from candle ops (the reference).
pub fn reference_scores(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let hidden = q.unsqueeze(2)?.broadcast_add(&k.unsqueeze(1)?)?.tanh()?; // [B, T, S, A]
    hidden.broadcast_mul(v)?.sum(D::Minus1)
}

struct AdditiveScores;

struct Dims {
    b: usize,
    t: usize,
    s: usize,
    a: usize,
}

fn dims(q: &Layout, k: &Layout, v: &Layout) -> Result<Dims> {
    let (b, t, a) = q.shape().dims3()?;
    let (bk, s, ak) = k.shape().dims3()?;
    let av = v.shape().dims1()?;
    if b != bk || a != ak || a != av {
        candle::bail!(
            "additive scores: q {:?}, k {:?}, v {:?} do not fit",
            q.shape(),
            k.shape(),
            v.shape()
        )
    }
    for l in [q, k, v] {
        if !l.is_contiguous() {
            candle::bail!("additive scores: inputs must be contiguous")
        }
    }
    Ok(Dims { b, t, s, a })
}

fn forward<T: Real>(q: &[T], k: &[T], v: &[T], d: &Dims) -> Vec<T> {
    let mut out = vec![T::default(); d.b * d.t * d.s];
    out.par_chunks_mut(d.t * d.s)
        .enumerate()
        .for_each(|(b, out_b)| {
            let keys = &k[b * d.s * d.a..][..d.s * d.a];
            for t in 0..d.t {
                let qr = &q[(b * d.t + t) * d.a..][..d.a];
                additive_row(qr, keys, v, &mut out_b[t * d.s..][..d.s]);
            }
        });
    out
}

/// Gradients of `sum(g * scores)` with respect to `q`, `k` and `v`.
fn backward<T: Real>(q: &[T], k: &[T], v: &[T], g: &[T], d: &Dims) -> (Vec<T>, Vec<T>, Vec<T>) {
    let per_batch: Vec<(Vec<T>, Vec<T>, Vec<T>)> = (0..d.b)
        .into_par_iter()
        .map(|b| {
            let mut dq = vec![T::default(); d.t * d.a];
            let mut dk = vec![T::default(); d.s * d.a];
            let mut dv = vec![T::default(); d.a];
            for t in 0..d.t {
                let qr = &q[(b * d.t + t) * d.a..][..d.a];
                for s in 0..d.s {
                    let gg = g[(b * d.t + t) * d.s + s];
                    if gg == T::default() {
                        continue; // padded source positions: exactly zero weight, zero gradient
                    }
                    let kr = &k[(b * d.s + s) * d.a..][..d.a];
                    let (dqr, dkr) = (&mut dq[t * d.a..][..d.a], &mut dk[s * d.a..][..d.a]);
                    additive_row_backward(qr, kr, v, gg, dqr, dkr, &mut dv);
                }
            }
            (dq, dk, dv)
        })
        .collect();
    let mut dq = Vec::with_capacity(d.b * d.t * d.a);
    let mut dk = Vec::with_capacity(d.b * d.s * d.a);
    let mut dv = vec![T::default(); d.a];
    for (q_b, k_b, v_b) in per_batch {
        dq.extend(q_b);
        dk.extend(k_b);
        for (acc, x) in dv.iter_mut().zip(v_b) {
            *acc += x;
        }
    }
    (dq, dk, dv)
}

fn slice<'a, T>(data: &'a [T], l: &Layout) -> &'a [T] {
    let (start, end) = l.contiguous_offsets().expect("checked contiguous");
    &data[start..end]
}

impl CustomOp3 for AdditiveScores {
    fn name(&self) -> &'static str {
        "additive-scores"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = dims(l1, l2, l3)?;
        let shape = Shape::from((d.b, d.t, d.s));
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                CpuStorage::F32(forward(slice(q, l1), slice(k, l2), slice(v, l3), &d))
            }
            (CpuStorage::F64(q), CpuStorage::F64(k), CpuStorage::F64(v)) => {
                CpuStorage::F64(forward(slice(q, l1), slice(k, l2), slice(v, l3), &d))
            }
            _ => candle::bail!("additive scores: f32 or f64 inputs of one dtype only"),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t, a) = q.dims3()?;
        let s = k.dims()[1];
        let d = Dims { b, t, s, a };
        let device = q.device();
        let (q, k, v, g) = (
            q.contiguous()?,
            k.contiguous()?,
            v.contiguous()?,
            grad.contiguous()?,
        );
        // Read in place: copying the inputs out was serial work on the calling thread.
        let (qs, ks, vs, gs) = (
            q.storage_and_layout(),
            k.storage_and_layout(),
            v.storage_and_layout(),
            g.storage_and_layout(),
        );
        macro_rules! grads {
            ($t:ty) => {{
                let name = "additive scores";
                let (dq, dk, dv) = backward::<$t>(
                    tensor_slice(&qs.0, qs.1, name)?,
                    tensor_slice(&ks.0, ks.1, name)?,
                    tensor_slice(&vs.0, vs.1, name)?,
                    tensor_slice(&gs.0, gs.1, name)?,
                    &d,
                );
                (
                    Tensor::from_vec(dq, (b, t, a), device)?,
                    Tensor::from_vec(dk, (b, s, a), device)?,
                    Tensor::from_vec(dv, a, device)?,
                )
            }};
        }
        let (dq, dk, dv) = match q.dtype() {
            DType::F32 => grads!(f32),
            DType::F64 => grads!(f64),
            other => candle::bail!("additive scores: no backward for {other:?}"),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{Device, Var};

    fn rand(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|i| {
                ((((i as u64 + 7) * 2654435761 * (seed + 1)) % 2000) as f64 / 1000.0 - 1.0) * 1.5
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    #[test]
    fn fused_matches_reference_values_and_gradients() {
        for dtype in [DType::F32, DType::F64] {
            let (q, k, v) = (
                rand(&[3, 4, 6], 1, dtype),
                rand(&[3, 5, 6], 2, dtype),
                rand(&[6], 3, dtype),
            );
            let (qv, kv, vv) = (
                Var::from_tensor(&q).unwrap(),
                Var::from_tensor(&k).unwrap(),
                Var::from_tensor(&v).unwrap(),
            );
            let weights = rand(&[3, 4, 5], 4, dtype); // an arbitrary upstream gradient
            let run = |f: fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>| {
                let out = f(qv.as_tensor(), kv.as_tensor(), vv.as_tensor()).unwrap();
                let grads = (&out * &weights)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let g = |x: &Var| {
                    grads
                        .get(x)
                        .unwrap()
                        .to_dtype(DType::F64)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap()
                };
                (
                    out.to_dtype(DType::F64)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap(),
                    g(&qv),
                    g(&kv),
                    g(&vv),
                )
            };
            let fused = run(additive_scores);
            let reference = run(reference_scores);
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
            let close = |a: &[f64], b: &[f64]| {
                a.iter()
                    .zip(b)
                    .all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
            };
            assert!(close(&fused.0, &reference.0), "{dtype:?} values");
            assert!(close(&fused.1, &reference.1), "{dtype:?} dq");
            assert!(close(&fused.2, &reference.2), "{dtype:?} dk");
            assert!(close(&fused.3, &reference.3), "{dtype:?} dv");
        }
    }
}
