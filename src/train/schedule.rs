//! Learning rate as a pure function of the step (so a resumed run needs nothing but the
//! step): linear warm-up from 0, then linear decay to 0, cosine decay to `min_ratio`·peak,
//! or constant. Step `t` is the 0-based index of the optimizer step about to be taken, with
//! HF's conventions (`get_linear_schedule_with_warmup`: the first step has lr 0 when there
//! is a warm-up).
use crate::config::Decay;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub peak: f64,
    pub warmup: u64,
    pub total: u64,
    pub decay: Decay,
    pub min_ratio: f64,
}

impl Schedule {
    /// The learning rate of step `t` (0-based).
    pub fn lr(&self, t: u64) -> f64 {
        if t < self.warmup {
            return self.peak * t as f64 / self.warmup.max(1) as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((t - self.warmup) as f64 / span).min(1.0);
        match self.decay {
            Decay::Constant => self.peak,
            Decay::Linear => self.peak * (1.0 - progress).max(0.0),
            Decay::Cosine => {
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                self.peak * (self.min_ratio + (1.0 - self.min_ratio) * cos)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = Schedule { peak: 1.0, warmup: 10, total: 110, decay: Decay::Linear, min_ratio: 0.0 };
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(10), 1.0);
        assert!((s.lr(60) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(110), 0.0);
        let c = Schedule { decay: Decay::Cosine, min_ratio: 0.1, ..s };
        assert!((c.lr(60) - 0.55).abs() < 1e-12);
        assert!((c.lr(110) - 0.1).abs() < 1e-12);
        let k = Schedule { decay: Decay::Constant, ..s };
        assert_eq!(k.lr(100), 1.0);
    }
}
