//! One Adam update (Kingma & Ba 2015) of an f32 parameter, its moments and its gradient, in a
//! single parallel pass over the elements.

use rayon::prelude::*;

/// The numbers of one Adam update in f32, as each element's update uses them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConstants {
    /// The gradient is multiplied by this first (clipping).
    pub scale: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    /// Bias corrections `1 - beta^t`.
    pub c1: f32,
    pub c2: f32,
    pub eps: f32,
    pub lr: f32,
}

/// Elements per parallel job.
pub const CHUNK: usize = 1 << 14;

impl AdamConstants {
    /// Updates `p`, `m` and `v` in place from the gradient `g` (all of one length). The
    /// per-element arithmetic is fixed ([`AdamConstants::element`]), so results do not depend
    /// on the thread count.
    ///
    /// Panics if the lengths differ.
    pub fn update(&self, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        assert!(
            [m.len(), v.len(), g.len()] == [p.len(); 3],
            "adam: parameter, gradient and moments differ in size"
        );
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| self.chunk(p, m, v, g));
    }

    /// [`AdamConstants::element`] over one chunk, compiled for AVX-512 and AVX2 as well
    /// (chosen at run time): the division and square root vectorise. Rust never fuses a
    /// multiply and an add on its own, so every version gives the same bits.
    fn chunk(&self, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        #[multiversion::multiversion(targets(
            "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
            "x86_64+avx2+fma"
        ))]
        fn run(k: &AdamConstants, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
            for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                k.element(p, m, v, g);
            }
        }
        run(self, p, m, v, g)
    }

    /// One element's update: the arithmetic of the composite (tensor-by-tensor) update, in
    /// the same order.
    #[inline(always)]
    pub fn element(&self, p: &mut f32, m: &mut f32, v: &mut f32, g: f32) {
        let g = g * self.scale;
        *m = *m * self.beta1 + g * self.one_minus_beta1;
        *v = *v * self.beta2 + (g * g) * self.one_minus_beta2;
        *p -= (*m / self.c1) / ((*v / self.c2).sqrt() + self.eps) * self.lr;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel pass, over several chunks and a ragged vector tail, gives exactly the bits
    /// of the update written element by element, in every slice it writes.
    #[test]
    fn one_pass_gives_the_bits_of_the_scalar_update() {
        let n = 2 * CHUNK + 37;
        let wave = |k: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * k).sin()).collect() };
        let (p0, g, m0) = (wave(0.37), wave(1.13), wave(0.71));
        let v0: Vec<f32> = wave(0.29).iter().map(|x| x * x).collect();
        let k = AdamConstants {
            scale: 0.8,
            beta1: 0.9,
            beta2: 0.999,
            one_minus_beta1: 0.1,
            one_minus_beta2: 0.001,
            c1: 0.271,
            c2: 0.003,
            eps: 1e-8,
            lr: 0.002,
        };
        let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
        k.update(&mut p, &mut m, &mut v, &g);
        let (mut p1, mut m1, mut v1) = (p0.clone(), m0, v0);
        for i in 0..n {
            let gi = g[i] * k.scale;
            m1[i] = m1[i] * k.beta1 + gi * k.one_minus_beta1;
            v1[i] = v1[i] * k.beta2 + (gi * gi) * k.one_minus_beta2;
            p1[i] -= (m1[i] / k.c1) / ((v1[i] / k.c2).sqrt() + k.eps) * k.lr;
        }
        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&p), bits(&p1));
        assert_eq!(bits(&m), bits(&m1));
        assert_eq!(bits(&v), bits(&v1));
        assert_ne!(bits(&p), bits(&p0), "the update moved the parameter");
    }
}
