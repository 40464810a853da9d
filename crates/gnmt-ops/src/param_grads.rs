//! Parameter gradients delivered beside candle's backward pass.
//!
//! candle's `Tensor::backward` starts every gradient it stores as a fresh zero tensor and adds
//! the first contribution into it (`GradStore::or_insert`, then `add`): for a parameter, a
//! zero fill and an add of the whole matrix, on the calling thread, although almost every
//! parameter receives exactly one contribution. The embedding tables paid it twice more (candle
//! builds an index-select gradient by copying a zero table). In a two-thread `small` training
//! step this serial work left the other core idle for several percent of the step.
//!
//! [`backward`] opens a collector for the duration of `loss.backward()`; the fused ops of this
//! crate hand the gradients of their parameter arguments (candle variables) to it through
//! [`deliver`] instead of returning them to candle, and [`backward`] then stores each as is
//! (summing, in delivery order, only when one parameter receives several). Without an open
//! collector, `deliver` gives the gradient back and the op returns it to candle as before: a
//! plain `loss.backward()` still sees every gradient. The two give the same bits when each
//! parameter's contributions all come one way, as in this crate's model (zero plus a value is
//! that value, and delivered contributions are summed in the order candle would add them); a
//! parameter that also reaches the loss through candle's own ops has its delivered part added
//! last, a different rounding order.

use std::cell::RefCell;

use candle::backprop::GradStore;
use candle::{Result, Tensor};

thread_local! {
    /// The open collector of this thread: parameter, gradient, in delivery order.
    static COLLECTOR: RefCell<Option<Vec<(Tensor, Tensor)>>> = const { RefCell::new(None) };
}

/// `loss.backward()`, with the parameter gradients of this crate's fused ops stored directly.
/// Returns the same gradients as `loss.backward()`.
pub fn backward(loss: &Tensor) -> Result<GradStore> {
    /// Closes the collector however the backward pass ends (an error, a panic).
    struct Open;
    impl Drop for Open {
        fn drop(&mut self) {
            COLLECTOR.with(|c| c.borrow_mut().take());
        }
    }
    let already_open = COLLECTOR.with(|c| c.borrow().is_some());
    if already_open {
        candle::bail!("param_grads::backward: called from inside a backward pass")
    }
    let open = Open;
    COLLECTOR.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let mut grads = loss.backward()?;
    let delivered = COLLECTOR
        .with(|c| c.borrow_mut().take())
        .unwrap_or_default();
    drop(open);
    for (param, grad) in delivered {
        let sum = match grads.remove(&param) {
            Some(earlier) => (earlier + grad)?,
            None => grad,
        };
        grads.insert(&param, sum);
    }
    Ok(grads)
}

/// Called by a fused op's backward with the gradient of one of its arguments: a parameter's
/// (a candle variable's) goes to the open collector and `None` comes back, for the op to return
/// to candle; anything else, or with no collector open, comes back as it went in.
pub(crate) fn deliver(arg: &Tensor, grad: Tensor) -> Option<Tensor> {
    if !arg.is_variable() {
        return Some(grad);
    }
    COLLECTOR.with(|c| match c.borrow_mut().as_mut() {
        Some(delivered) => {
            delivered.push((arg.clone(), grad));
            None
        }
        None => Some(grad),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{CpuStorage, CustomOp1, Device, Layout, Shape, Var};

    /// `x -> 3x` whose backward delivers its argument's gradient.
    struct Triple;
    impl CustomOp1 for Triple {
        fn name(&self) -> &'static str {
            "triple"
        }
        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
            let CpuStorage::F32(d) = s else {
                candle::bail!("f32 only")
            };
            let d = crate::storage::contiguous_slice(d, l, "triple")?;
            Ok((
                CpuStorage::F32(d.iter().map(|x| 3.0 * x).collect()),
                l.shape().clone(),
            ))
        }
        fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
            Ok(deliver(arg, (grad * 3.0)?))
        }
    }

    /// An op whose backward fails.
    struct Broken;
    impl CustomOp1 for Broken {
        fn name(&self) -> &'static str {
            "broken"
        }
        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
            Ok((s.clone(), l.shape().clone()))
        }
        fn bwd(&self, _arg: &Tensor, _res: &Tensor, _grad: &Tensor) -> Result<Option<Tensor>> {
            candle::bail!("broken backward")
        }
    }

    #[test]
    fn collected_gradients_equal_candles_own() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::new(&[0.5f32, -1.25, 2.0], &dev)?;
        let x = Tensor::new(&[1.5f32, 0.25, -3.0], &dev)?;
        // `w` reaches the loss through the op, through candle's scaling then the op, and through
        // candle's own product. Every value is a short binary fraction: sums are exact in any
        // order, so the bits agree although the delivered part is added last.
        let y = w.as_tensor().apply_op1(Triple)?;
        let z = (w.as_tensor() * 7.0)?.apply_op1(Triple)?;
        let loss = ((&y * &x)?.sum_all()?
            + (&z * &x)?.sqr()?.sum_all()?
            + (w.as_tensor() * &x)?.sum_all()?)?;
        let plain = loss.backward()?;
        let collected = backward(&loss)?;
        let a = plain.get(&w).expect("plain gradient").to_vec1::<f32>()?;
        let b = collected
            .get(&w)
            .expect("collected gradient")
            .to_vec1::<f32>()?;
        assert_eq!(a, b);
        // 3x + (7 * 3 * 2 * (21 w x) x) + x
        for ((g, x), w) in a.iter().zip([1.5f32, 0.25, -3.0]).zip([0.5f32, -1.25, 2.0]) {
            let expected = 3.0 * x + 2.0 * 21.0 * 21.0 * w * x * x + x;
            assert!(
                (g - expected).abs() <= 1e-4 * expected.abs().max(1.0),
                "{g} vs {expected}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_plain_backward_still_sees_every_gradient_and_the_collector_closes() -> Result<()> {
        let w = Var::new(&[2.0f32], &Device::Cpu)?;
        let loss = w.as_tensor().apply_op1(Triple)?.sum_all()?;
        assert!(backward(&loss)?.get(&w).is_some());
        // Closed again: the op returns the gradient to candle.
        assert!(COLLECTOR.with(|c| c.borrow().is_none()));
        assert_eq!(loss.backward()?.get(&w).unwrap().to_vec1::<f32>()?, [3.0]);
        Ok(())
    }

    #[test]
    fn a_failed_backward_closes_the_collector_and_nesting_is_refused() -> Result<()> {
        let w = Var::new(&[2.0f32], &Device::Cpu)?;
        let loss = w
            .as_tensor()
            .apply_op1(Triple)?
            .apply_op1(Broken)?
            .sum_all()?;
        let err = backward(&loss).unwrap_err().to_string();
        assert!(err.contains("broken backward"), "{err}");
        assert!(COLLECTOR.with(|c| c.borrow().is_none()));
        // As if called from an op's backward while a collector is open.
        COLLECTOR.with(|c| *c.borrow_mut() = Some(Vec::new()));
        let loss = w.as_tensor().apply_op1(Triple)?.sum_all()?;
        let nested = backward(&loss).map(|_| ()).unwrap_err().to_string();
        COLLECTOR.with(|c| c.borrow_mut().take());
        assert!(nested.contains("inside a backward pass"), "{nested}");
        Ok(())
    }
}
