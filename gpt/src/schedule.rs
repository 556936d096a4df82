//! Learning-rate schedules: linear warmup, then cosine (default), linear, constant or WSD
//! (warmup-stable-decay) down to `min_lr`.

use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleKind {
    Cosine,
    Linear,
    Constant,
    /// Constant after warmup, then a linear decay to min_lr over the last `decay_fraction`.
    Wsd,
}

impl FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(ScheduleKind::Cosine),
            "linear" => Ok(ScheduleKind::Linear),
            "constant" => Ok(ScheduleKind::Constant),
            "wsd" => Ok(ScheduleKind::Wsd),
            _ => Err(format!(
                "unknown --schedule '{s}': expected one of cosine, linear, constant, wsd"
            )),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub max_lr: f32,
    pub min_lr: f32,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// WSD only: fraction of the steps spent decaying at the end.
    pub decay_fraction: f32,
}

impl LrSchedule {
    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: u64) -> f32 {
        let (max, min) = (self.max_lr as f64, self.min_lr as f64);
        if step < self.warmup_steps {
            // (step + 1) / warmup: the first step already learns, the last reaches max_lr.
            return (max * (step + 1) as f64 / self.warmup_steps as f64) as f32;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).clamp(0.0, 1.0);
        let lr = match self.kind {
            ScheduleKind::Constant => max,
            ScheduleKind::Cosine => {
                min + 0.5 * (max - min) * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            ScheduleKind::Linear => max + (min - max) * progress,
            ScheduleKind::Wsd => {
                let decay_steps = ((self.total_steps as f64) * self.decay_fraction as f64)
                    .round()
                    .max(1.0);
                let decay_start = self.total_steps as f64 - decay_steps;
                if (step as f64) < decay_start {
                    max
                } else {
                    let p = ((step as f64 - decay_start) / decay_steps).clamp(0.0, 1.0);
                    max + (min - max) * p
                }
            }
        };
        lr as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind) -> LrSchedule {
        LrSchedule {
            kind,
            max_lr: 1.0,
            min_lr: 0.1,
            warmup_steps: 10,
            total_steps: 110,
            decay_fraction: 0.2,
        }
    }

    #[test]
    fn warmup_is_linear_to_max() {
        let s = sched(ScheduleKind::Cosine);
        assert!((s.lr(0) - 0.1).abs() < 1e-6);
        assert!((s.lr(4) - 0.5).abs() < 1e-6);
        assert!((s.lr(9) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn cosine_and_linear_reach_min_at_the_end() {
        for kind in [ScheduleKind::Cosine, ScheduleKind::Linear] {
            let s = sched(kind);
            assert!((s.lr(10) - 1.0).abs() < 1e-6, "{kind:?}");
            assert!((s.lr(110) - 0.1).abs() < 1e-6, "{kind:?}");
            // Halfway: cosine and linear both give the midpoint.
            assert!((s.lr(60) - 0.55).abs() < 1e-6, "{kind:?} {}", s.lr(60));
        }
        let c = sched(ScheduleKind::Cosine);
        // A quarter of the way: 0.1 + 0.45 * (1 + cos(pi/4)).
        assert!((c.lr(35) - (0.1 + 0.45 * (1.0 + std::f32::consts::FRAC_1_SQRT_2))).abs() < 1e-6);
    }

    #[test]
    fn wsd_is_flat_then_decays() {
        let s = sched(ScheduleKind::Wsd);
        assert_eq!(s.lr(50), 1.0);
        assert_eq!(s.lr(88), 1.0); // decay starts at 110 - 22 = 88
        assert!((s.lr(99) - (1.0 - 0.9 * 11.0 / 22.0)).abs() < 1e-6);
        assert!((s.lr(110) - 0.1).abs() < 1e-6);
        assert_eq!(sched(ScheduleKind::Constant).lr(100), 1.0);
    }
}
