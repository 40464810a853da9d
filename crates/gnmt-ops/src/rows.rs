//! Row gathers, scatters and column sums as ops: the pieces backward passes are made of when
//! they work on the real (unpadded) rows of a batch only. None has a backward pass of its own.

use std::sync::Arc;

use candle::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use gnmt_kernels::buffers::{column_sums, gather_rows, scatter_rows};

use crate::dispatch::{self, Float, Kernel};

/// Rows `rows` of `t [N, W]`, in that order: `[rows.len(), W]`.
pub(crate) fn gather(t: &Tensor, rows: &Arc<Vec<usize>>) -> Result<Tensor> {
    t.contiguous()?.apply_op1_no_bwd(&Rows {
        rows: rows.clone(),
        scatter_into: None,
    })
}

/// `t [rows.len(), W]` written into rows `rows` of an `[n, W]` zero tensor.
pub(crate) fn scatter(t: &Tensor, rows: &Arc<Vec<usize>>, n: usize) -> Result<Tensor> {
    t.contiguous()?.apply_op1_no_bwd(&Rows {
        rows: rows.clone(),
        scatter_into: Some(n),
    })
}

/// The sums of the columns of `t [N, W]`, each in row order: `[W]`.
pub(crate) fn column_sum(t: &Tensor) -> Result<Tensor> {
    t.contiguous()?.apply_op1_no_bwd(&ColumnSums)
}

struct Rows {
    rows: Arc<Vec<usize>>,
    /// Scatter into this many rows; gather when `None`.
    scatter_into: Option<usize>,
}

impl Kernel<1> for Rows {
    const NAME: &'static str = "rows";

    fn run<T: Float>(&self, [(t, shape)]: [(&[T], &Shape); 1]) -> Result<(Vec<T>, Shape)> {
        let (n, w) = shape.dims2()?;
        let rows = &self.rows[..];
        Ok(match self.scatter_into {
            None => {
                if rows.iter().any(|&r| r >= n) {
                    candle::bail!("rows: gathering beyond the {n} rows of {shape:?}")
                }
                (gather_rows(t, w, rows), Shape::from((rows.len(), w)))
            }
            Some(total) => {
                if n != rows.len() || rows.iter().any(|&r| r >= total) {
                    candle::bail!("rows: scattering {shape:?} into {total} rows")
                }
                (scatter_rows(t, w, rows, total), Shape::from((total, w)))
            }
        })
    }
}

impl CustomOp1 for Rows {
    fn name(&self) -> &'static str {
        "rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch::run(self, [(s, l)])
    }
}

struct ColumnSums;

impl Kernel<1> for ColumnSums {
    const NAME: &'static str = "column sums";

    fn run<T: Float>(&self, [(t, shape)]: [(&[T], &Shape); 1]) -> Result<(Vec<T>, Shape)> {
        let w = shape.dims2()?.1;
        Ok((column_sums(t, w), Shape::from(w)))
    }
}

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "column-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch::run(self, [(s, l)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::Device;

    #[test]
    fn gather_scatter_and_column_sums() -> Result<()> {
        let t = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &Device::Cpu)?;
        let rows = Arc::new(vec![2, 0]);
        let picked = gather(&t, &rows)?;
        assert_eq!(picked.to_vec2::<f32>()?, [[5., 6.], [1., 2.]]);
        let back = scatter(&picked, &rows, 4)?;
        assert_eq!(
            back.to_vec2::<f32>()?,
            [[1., 2.], [0., 0.], [5., 6.], [0., 0.]]
        );
        assert_eq!(column_sum(&t)?.to_vec1::<f32>()?, [9., 12.]);
        assert!(gather(&t, &Arc::new(vec![3])).is_err());
        assert!(scatter(&picked, &rows, 2).is_err());
        Ok(())
    }
}
