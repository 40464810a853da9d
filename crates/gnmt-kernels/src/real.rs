//! The float types the kernels run on, and the vectorisable exp and tanh of f32.

/// What the kernels need from a float type.
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialEq
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
{
    const ONE: Self;
    fn tanh_(self) -> Self;
    fn sigmoid(self) -> Self;
    fn exp_(self) -> Self;
    fn ln_(self) -> Self;
    fn max_(self, other: Self) -> Self;
    fn from_f64(x: f64) -> Self;
}

impl Real for f32 {
    const ONE: Self = 1.0;
    #[inline(always)]
    fn tanh_(self) -> Self {
        fast_tanh(self)
    }
    /// `(1 + tanh(x / 2)) / 2`: the rational tanh vectorises, a libm `expf` call does not.
    #[inline(always)]
    fn sigmoid(self) -> Self {
        0.5 * fast_tanh(0.5 * self) + 0.5
    }
    #[inline(always)]
    fn exp_(self) -> Self {
        fast_exp(self)
    }
    fn ln_(self) -> Self {
        self.ln()
    }
    #[inline(always)]
    fn max_(self, other: Self) -> Self {
        self.max(other)
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

/// f64 is the precision of the gradient checks: exact library functions.
impl Real for f64 {
    const ONE: Self = 1.0;
    #[inline(always)]
    fn tanh_(self) -> Self {
        self.tanh()
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    #[inline(always)]
    fn exp_(self) -> Self {
        self.exp()
    }
    fn ln_(self) -> Self {
        self.ln()
    }
    #[inline(always)]
    fn max_(self, other: Self) -> Self {
        self.max(other)
    }
    fn from_f64(x: f64) -> Self {
        x
    }
}

/// `exp(x)` for f32 without a libm call, so loops over it vectorise: `x = n ln2 + r` with
/// `|r| <= ln2 / 2`, a degree-6 Taylor polynomial for `exp(r)` (relative error below 2e-7),
/// and `2^n` put straight into the exponent bits. Inputs are clamped to the normal range:
/// below -87.3 the result is about 1e-38 instead of a denormal or 0, which no sum of
/// probabilities can tell apart.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer with plain float
    // arithmetic (no `round` call, which is not vectorised on baseline x86-64).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // The bits of `shifted` are those of ROUND plus the integer n (|n| <= 127 keeps it in the
    // mantissa), so 2^n's exponent field comes from integer arithmetic on them. `n as i32`
    // would be a saturating conversion, which LLVM turns into scalar code per lane.
    const ROUND_BITS: u32 = 0x4b40_0000; // ROUND.to_bits()
    p * f32::from_bits(shifted.to_bits().wrapping_sub(ROUND_BITS).wrapping_add(127) << 23)
}

/// tanh as a 13/6 rational function (Eigen's `generic_fast_tanh_float`): accurate to a few
/// f32 ULPs, branch-free, and vectorised by the compiler, unlike a libm call.
#[inline(always)]
pub fn fast_tanh(x: f32) -> f32 {
    const A1: f32 = 4.893_524_6e-3;
    const A3: f32 = 6.372_619_3e-4;
    const A5: f32 = 1.485_722_4e-5;
    const A7: f32 = 5.122_297e-8;
    const A9: f32 = -8.604_672e-11;
    const A11: f32 = 2.000_188e-13;
    const A13: f32 = -2.760_768_5e-16;
    const B0: f32 = 4.893_525e-3;
    const B2: f32 = 2.268_434_6e-3;
    const B4: f32 = 1.185_347_1e-4;
    const B6: f32 = 1.198_258_4e-6;
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let mut p = x2 * A13 + A11;
    p = x2 * p + A9;
    p = x2 * p + A7;
    p = x2 * p + A5;
    p = x2 * p + A3;
    p = x2 * p + A1;
    p *= x;
    let mut q = x2 * B6 + B4;
    q = x2 * q + B2;
    q = x2 * q + B0;
    p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let (got, want) = (fast_exp(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 5e-7, "max relative error {worst}");
        assert!(fast_exp(-1000.0) < 1e-37 && fast_exp(-1000.0) >= 0.0);
        assert!(fast_exp(1000.0).is_finite());
    }

    #[test]
    fn sigmoid_through_tanh_is_accurate() {
        let mut worst = 0f64;
        for i in -20000..=20000 {
            let x = i as f32 / 1000.0;
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            worst = worst.max((Real::sigmoid(x) as f64 - want).abs());
        }
        assert!(worst < 5e-7, "max error {worst}");
    }

    #[test]
    fn fast_tanh_is_accurate() {
        let mut worst = 0f32;
        for i in -20000..=20000 {
            let x = i as f32 / 1000.0;
            worst = worst.max((fast_tanh(x) - x.tanh()).abs());
        }
        assert!(worst < 5e-7, "max error {worst}"); // a few f32 ULPs near +-1
    }
}
