//! llm.c's outlier detector: the z-score of a new value against the last `window` values. The
//! trainer keeps one for the loss and one for the gradient norm; `--skip-outliers Z` skips the
//! optimizer update of a step whose z-score exceeds Z.

use serde_json::{json, Value};
use std::collections::VecDeque;

#[derive(Clone, Debug)]
pub struct OutlierDetector {
    window: usize,
    values: VecDeque<f64>,
}

impl OutlierDetector {
    pub fn new(window: usize) -> Self {
        OutlierDetector {
            window,
            values: VecDeque::with_capacity(window),
        }
    }

    /// z-score of `x` against the window, once the window is full (as in llm.c). Computed from
    /// the window's contents alone (no running sums), so a detector restored from a checkpoint
    /// gives the same z-scores bit for bit.
    pub fn z(&self, x: f64) -> Option<f64> {
        if self.values.len() < self.window {
            return None;
        }
        let n = self.values.len() as f64;
        let mean = self.values.iter().sum::<f64>() / n;
        let var = self
            .values
            .iter()
            .map(|v| (v - mean) * (v - mean))
            .sum::<f64>()
            / n;
        let std = var.sqrt();
        Some(if std > 0.0 {
            (x - mean) / std
        } else if x == mean {
            0.0
        } else {
            (x - mean).signum() * f64::INFINITY
        })
    }

    /// Adds `x`, dropping the oldest value once the window is full.
    pub fn push(&mut self, x: f64) {
        if self.values.len() == self.window {
            self.values.pop_front();
        }
        self.values.push_back(x);
    }

    pub fn to_json(&self) -> Value {
        json!(self.values)
    }

    /// Refills the window from `to_json`'s output (keeping the newest values that fit).
    pub fn restore(&mut self, v: &Value) {
        let vals: Vec<f64> = v
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        self.values.clear();
        for x in vals {
            self.push(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_scores_need_a_full_window_and_flag_spikes() {
        let mut d = OutlierDetector::new(4);
        for x in [1.0, 2.0, 3.0] {
            assert_eq!(d.z(x), None);
            d.push(x);
        }
        d.push(2.0); // window 1, 2, 3, 2: mean 2, std sqrt(0.5)
        assert!((d.z(2.0 + 0.5f64.sqrt() * 3.0).unwrap() - 3.0).abs() < 1e-12);
        d.push(100.0); // drops 1.0
        let mut r = OutlierDetector::new(4);
        r.restore(&d.to_json());
        assert_eq!(r.z(5.0).unwrap().to_bits(), d.z(5.0).unwrap().to_bits());
        let flat = {
            let mut f = OutlierDetector::new(2);
            f.push(1.0);
            f.push(1.0);
            f
        };
        assert_eq!(flat.z(1.0), Some(0.0));
        assert_eq!(flat.z(2.0), Some(f64::INFINITY));
    }
}
