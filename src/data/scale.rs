//! Table features standardized per feature with the training data's mean and standard
//! deviation (population, as scikit-learn's `StandardScaler`): the same transform, saved in
//! `model.json`, is applied by the job, `predict` and `serve`, so their answers agree bit for
//! bit. A constant feature is centred but not divided.

use serde::{Deserialize, Serialize};

/// Per-feature statistics of some rows, combinable across hosts (Chan et al.'s update).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    pub count: u64,
    pub mean: Vec<f64>,
    /// Sums of squared deviations from the mean.
    pub m2: Vec<f64>,
}

impl Moments {
    /// The statistics of `values`, rows of `width` features.
    pub fn of(values: &[f32], width: usize) -> Self {
        let rows = values.len() / width.max(1);
        let mut mean = vec![0f64; width];
        for row in values.chunks_exact(width) {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += f64::from(x);
            }
        }
        mean.iter_mut().for_each(|m| *m /= rows.max(1) as f64);
        let mut m2 = vec![0f64; width];
        for row in values.chunks_exact(width) {
            for ((s, &x), m) in m2.iter_mut().zip(row).zip(&mean) {
                let d = f64::from(x) - m;
                *s += d * d;
            }
        }
        Self { count: rows as u64, mean, m2 }
    }

    /// The statistics of both sets of rows together.
    pub fn merge(&self, other: &Self) -> Self {
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        if other.count == 0 {
            return self.clone();
        }
        if self.count == 0 {
            return other.clone();
        }
        let mut mean = Vec::with_capacity(self.mean.len());
        let mut m2 = Vec::with_capacity(self.mean.len());
        for i in 0..self.mean.len() {
            let d = other.mean[i] - self.mean[i];
            mean.push(self.mean[i] + d * nb / n);
            m2.push(self.m2[i] + other.m2[i] + d * d * na * nb / n);
        }
        Self { count: self.count + other.count, mean, m2 }
    }

    pub fn standardize(&self) -> Standardize {
        let n = self.count.max(1) as f64;
        let std = self
            .m2
            .iter()
            .map(|s| {
                let sd = (s / n).sqrt() as f32;
                // A constant feature (or one whose spread float32 cannot hold) keeps its unit.
                if sd.is_normal() && sd > f32::EPSILON * 1e-3 {
                    sd
                } else {
                    1.0
                }
            })
            .collect();
        Standardize { mean: self.mean.iter().map(|&m| m as f32).collect(), std }
    }
}

/// `x' = (x − mean) / std`, per feature, in float32.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Standardize {
    pub fn features(&self) -> usize {
        self.mean.len()
    }

    /// Standardizes rows of features in place.
    pub fn apply(&self, values: &mut [f32]) {
        for row in values.chunks_exact_mut(self.mean.len()) {
            for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = (*x - m) / s;
            }
        }
    }

    /// Whether every value is usable: finite, with a positive spread.
    pub fn is_valid(&self) -> bool {
        self.mean.len() == self.std.len()
            && self.mean.iter().all(|m| m.is_finite())
            && self.std.iter().all(|s| s.is_finite() && *s > 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardizes_like_a_population_scaler_and_keeps_constants() {
        let rows = [1.0f32, 5.0, 3.0, 5.0, 5.0, 5.0];
        let s = Moments::of(&rows, 2).standardize();
        assert_eq!(s.mean, [3.0, 5.0]);
        let sd = (8.0f64 / 3.0).sqrt() as f32;
        assert_eq!(s.std, [sd, 1.0]);
        let mut v = rows.to_vec();
        s.apply(&mut v);
        assert_eq!(v, [(1.0 - 3.0) / sd, 0.0, 0.0, 0.0, (5.0 - 3.0) / sd, 0.0]);
    }

    #[test]
    fn merged_moments_equal_those_of_all_rows() {
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let b = [10.0f32, -1.0, 0.5, 7.0, 2.0, 2.0];
        let all: Vec<f32> = a.iter().chain(&b).copied().collect();
        let whole = Moments::of(&all, 2);
        let merged = Moments::of(&a, 2).merge(&Moments::of(&b, 2));
        assert_eq!(merged.count, whole.count);
        for i in 0..2 {
            assert!((merged.mean[i] - whole.mean[i]).abs() < 1e-12);
            assert!((merged.m2[i] - whole.m2[i]).abs() < 1e-9);
        }
    }
}
