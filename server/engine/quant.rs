//! INT8 quantisation maths for the GEMMs, as the INT8 engine will do them (symmetric, zero
//! point 0):
//! - weights `W[K, N]` per output channel `j`: `s_w[j] = max_k |W[k, j]| / 127`,
//!   `q = round(W / s_w[j])` in `[-127, 127]`;
//! - activations with one scale from calibration: `s_a = max |x| / 127` over the calibration
//!   set, values beyond it saturate;
//! - `int8 × int8 → int32` accumulation, then `y = acc · s_a · s_w[j] (+ bias[j])`.
//!
//! This is the reference the cuBLASLt INT8 path (`kernels/`) will be checked against.

/// Symmetric scale for a maximum absolute value (1 when everything is 0, so nothing divides by 0).
pub fn scale_for(max_abs: f32) -> f32 {
    if max_abs > 0.0 && max_abs.is_finite() {
        max_abs / 127.0
    } else {
        1.0
    }
}

/// `round(x / scale)` saturated to `[-127, 127]`.
pub fn quantize(x: f32, scale: f32) -> i8 {
    (x / scale).round().clamp(-127.0, 127.0) as i8
}

/// The activation scale from calibration inputs: their largest absolute value / 127.
pub fn calibrate(batches: &[&[f32]]) -> f32 {
    scale_for(
        batches
            .iter()
            .flat_map(|b| b.iter())
            .fold(0f32, |m, x| m.max(x.abs())),
    )
}

/// A weight matrix `[K, N]` quantised per output channel (column).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeights {
    pub k: usize,
    pub n: usize,
    /// Row-major `[K, N]`.
    pub q: Vec<i8>,
    /// One scale per output channel.
    pub scales: Vec<f32>,
}

impl QuantizedWeights {
    pub fn from_f32(w: &[f32], k: usize, n: usize) -> Result<Self, String> {
        if w.len() != k * n {
            return Err(format!(
                "weights hold {} values, [{k}, {n}] needs {}",
                w.len(),
                k * n
            ));
        }
        let scales: Vec<f32> = (0..n)
            .map(|j| scale_for((0..k).fold(0f32, |m, r| m.max(w[r * n + j].abs()))))
            .collect();
        let q = w
            .iter()
            .enumerate()
            .map(|(i, &x)| quantize(x, scales[i % n]))
            .collect();
        Ok(QuantizedWeights { k, n, q, scales })
    }

    /// The weights as the INT8 engine sees them, back in f32.
    pub fn dequantize(&self) -> Vec<f32> {
        self.q
            .iter()
            .enumerate()
            .map(|(i, &q)| q as f32 * self.scales[i % self.n])
            .collect()
    }
}

/// `A[M, K] (int8) × B[K, N] (int8)` accumulated in int32.
pub fn gemm_i8(a: &[i8], m: usize, b: &QuantizedWeights) -> Vec<i32> {
    let (k, n) = (b.k, b.n);
    let mut out = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0i32;
            for p in 0..k {
                acc += a[i * k + p] as i32 * b.q[p * n + j] as i32;
            }
            out[i * n + j] = acc;
        }
    }
    out
}

/// `y = x · W + bias` through INT8: `x[M, K]` quantised with `act_scale`, int32 accumulation,
/// dequantised per output channel.
pub fn linear_i8(
    x: &[f32],
    m: usize,
    act_scale: f32,
    w: &QuantizedWeights,
    bias: Option<&[f32]>,
) -> Result<Vec<f32>, String> {
    if x.len() != m * w.k {
        return Err(format!(
            "input holds {} values, [{m}, {}] needs {}",
            x.len(),
            w.k,
            m * w.k
        ));
    }
    if bias.is_some_and(|b| b.len() != w.n) {
        return Err(format!("bias must hold {} values", w.n));
    }
    let xq: Vec<i8> = x.iter().map(|&v| quantize(v, act_scale)).collect();
    let acc = gemm_i8(&xq, m, w);
    Ok(acc
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            let j = i % w.n;
            a as f32 * act_scale * w.scales[j] + bias.map_or(0.0, |b| b[j])
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (numbers in [-1, 1)).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn weights_round_trip_within_half_a_step_per_channel() {
        let (k, n) = (24, 5);
        let mut w = noise(k * n, 1);
        // Channel 3 is 100× larger: per-channel scales keep the small channels precise.
        for r in 0..k {
            w[r * n + 3] *= 100.0;
        }
        let q = QuantizedWeights::from_f32(&w, k, n).unwrap();
        let back = q.dequantize();
        for (i, (a, b)) in w.iter().zip(&back).enumerate() {
            assert!(
                (a - b).abs() <= q.scales[i % n] / 2.0 + 1e-7,
                "element {i}: {a} vs {b}"
            );
        }
        assert!(q.scales[3] > 50.0 * q.scales[0]);
        assert!(
            q.q.iter().any(|&v| v == 127 || v == -127),
            "the largest weight uses the full range"
        );
    }

    #[test]
    fn int8_linear_stays_within_the_analytic_error_bound() {
        let (m, k, n) = (16, 64, 8);
        let x = noise(m * k, 2);
        let w = noise(k * n, 3);
        let bias = noise(n, 4);
        let sa = calibrate(&[&x]);
        let q = QuantizedWeights::from_f32(&w, k, n).unwrap();
        let y = linear_i8(&x, m, sa, &q, Some(&bias)).unwrap();
        let mut worst_rel = 0f32;
        for i in 0..m {
            for j in 0..n {
                let exact: f32 = (0..k).map(|p| x[i * k + p] * w[p * n + j]).sum::<f32>() + bias[j];
                // |x·w − x̂·ŵ| ≤ Σ_p (|x_p| s_w/2 + |w_p| s_a/2 + s_a s_w/4)
                let sw = q.scales[j];
                let bound: f32 = (0..k)
                    .map(|p| {
                        x[i * k + p].abs() * sw / 2.0
                            + w[p * n + j].abs() * sa / 2.0
                            + sa * sw / 4.0
                    })
                    .sum();
                let err = (y[i * n + j] - exact).abs();
                assert!(
                    err <= bound * 1.001 + 1e-5,
                    "({i},{j}): error {err} above bound {bound}"
                );
                let norm: f32 = (0..k).map(|p| (x[i * k + p] * w[p * n + j]).abs()).sum();
                worst_rel = worst_rel.max(err / norm);
            }
        }
        // Uniform inputs at 8 bits: well under 2 % of the sum of magnitudes.
        assert!(worst_rel < 0.02, "relative error {worst_rel}");
    }

    #[test]
    fn activations_beyond_calibration_saturate() {
        let sa = calibrate(&[&[0.5, -1.0]]);
        assert_eq!(quantize(1.0, sa), 127);
        assert_eq!(quantize(-3.0, sa), -127);
        assert_eq!(quantize(0.0, sa), 0);
        assert_eq!(scale_for(0.0), 1.0);
    }

    #[test]
    fn int32_accumulation_is_exact() {
        let w = QuantizedWeights {
            k: 3,
            n: 1,
            q: vec![127, -127, 2],
            scales: vec![1.0],
        };
        assert_eq!(
            gemm_i8(&[127, 127, -5], 1, &w),
            vec![127 * 127 - 127 * 127 - 10]
        );
    }
}
