//! Summaries of repeated measurements: every figure the benchmarks print is a median with its
//! spread over interleaved rounds, never one run.
use std::fmt;

pub fn median(v: &mut [f64]) -> f64 {
    pct(v, 50.0)
}

/// The `p`th percentile (nearest rank on the sorted values); NaN when empty.
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Median, quartiles and range of one quantity over the rounds.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub min: f64,
    pub p25: f64,
    pub median: f64,
    pub p75: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        Spread { min: pct(&mut v, 0.0), p25: pct(&mut v, 25.0), median: pct(&mut v, 50.0), p75: pct(&mut v, 75.0), max: pct(&mut v, 100.0) }
    }

    /// Half the interquartile range: how far a typical round strays from the median (one
    /// disturbed round on a shared machine does not move it).
    pub fn half_iqr(&self) -> f64 {
        (self.p75 - self.p25) / 2.0
    }
}

/// `median [p25…p75] (min…max)` with `digits` decimals.
pub struct Show(pub Spread, pub usize);

impl fmt::Display for Show {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Show(s, d) = self;
        write!(f, "{:.d$} [{:.d$}…{:.d$}] ({:.d$}…{:.d$})", s.median, s.p25, s.p75, s.min, s.max, d = *d)
    }
}

/// A change in percent, signed, with quartiles and range: `-1.2 % [-2.0…+0.1] (-3.0…+0.4)`.
pub struct ShowPct(pub Spread);

impl fmt::Display for ShowPct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        write!(f, "{:+.1} % [{:+.1}…{:+.1}] ({:+.1}…{:+.1})", s.median, s.p25, s.p75, s.min, s.max)
    }
}

/// The verdict on a "loss ≤ target %" claim, given the measured change (in %, negative = loss)
/// and the off/off control's spread: when a typical off/off pair already differs by more than
/// the target, the claim is "not resolved", neither met nor missed.
pub fn loss_verdict(change: Spread, control: Spread, target_pct: f64) -> &'static str {
    let loss = -change.median;
    if control.half_iqr() > target_pct {
        return "not resolved (off/off strays further than the target)";
    }
    if loss <= target_pct { "met" } else { "not met" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_verdicts() {
        let s = Spread::of(&[3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        // One disturbed round does not make a quiet control noisy.
        let quiet = Spread::of(&[-0.5, 0.0, 0.2, 0.5, 14.0]);
        let noisy = Spread::of(&[-8.0, -6.0, 0.0, 6.0, 8.0]);
        assert_eq!(loss_verdict(Spread::of(&[-1.0]), quiet, 2.0), "met");
        assert_eq!(loss_verdict(Spread::of(&[-5.0]), quiet, 2.0), "not met");
        assert!(loss_verdict(Spread::of(&[-1.0]), noisy, 2.0).starts_with("not resolved"));
        assert_eq!(format!("{}", ShowPct(Spread::of(&[-1.25, 0.4, -3.0]))), "-1.2 % [-1.2…+0.4] (-3.0…+0.4)");
    }
}
