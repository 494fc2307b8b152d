//! Exact money: amounts and rates are fixed-point with six decimals (an
//! amount in micro-units of the currency, a rate in millionths), read from
//! the config as a JSON number or a decimal string, never through a float's
//! arithmetic. Line amounts are exact fractions until they are rounded, once,
//! to a cent.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Micro-units in one cent: every line is a whole number of cents.
pub const CENT: i128 = 10_000;

/// Six-decimal fixed point: `1.5` is `Fixed(1_500_000)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Fixed(pub i64);

impl Fixed {
    pub fn micros(self) -> i128 {
        self.0 as i128
    }

    /// Parses `12`, `-0.5`, `0.000001`; more than six decimals is refused
    /// (it would not be exact).
    pub fn parse(text: &str) -> Result<Fixed, String> {
        let t = text.trim();
        let (neg, digits) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t.strip_prefix('+').unwrap_or(t)),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() && frac.is_empty() || !ok(whole) || !ok(frac) {
            return Err(format!("`{text}` is not a decimal amount"));
        }
        let frac = frac.trim_end_matches('0');
        if frac.len() > 6 {
            return Err(format!("`{text}` has more than 6 decimals"));
        }
        let whole: i128 =
            if whole.is_empty() { 0 } else { whole.parse().map_err(|_| format!("`{text}` is too large"))? };
        let frac_micros: i128 = format!("{frac:0<6}").parse().unwrap_or(0);
        let v = whole * 1_000_000 + frac_micros;
        let v = if neg { -v } else { v };
        i64::try_from(v).map(Fixed).map_err(|_| format!("`{text}` is too large"))
    }
}

impl<'de> Deserialize<'de> for Fixed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Fixed, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Fixed;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal number (at most 6 decimals) or a decimal string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Fixed, E> {
                Fixed::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Fixed, E> {
                Fixed::parse(&v.to_string()).map_err(E::custom)
            }
            // A float's shortest round-trip text is the decimal the author wrote.
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Fixed, E> {
                Fixed::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Fixed, E> {
                Fixed::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// An exact fraction `n / d` (d > 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    pub n: i128,
    pub d: i128,
}

fn gcd(a: i128, b: i128) -> i128 {
    if b == 0 { a.abs().max(1) } else { gcd(b, a % b) }
}

impl Ratio {
    pub const ZERO: Ratio = Ratio { n: 0, d: 1 };

    pub fn new(n: i128, d: i128) -> Ratio {
        let g = gcd(n, d);
        Ratio { n: n / g, d: d / g }
    }

    pub fn whole(n: i128) -> Ratio {
        Ratio { n, d: 1 }
    }

    pub fn add(self, o: Ratio) -> Ratio {
        let g = gcd(self.d, o.d);
        Ratio::new(self.n * (o.d / g) + o.n * (self.d / g), self.d / g * o.d)
    }

    /// Rounded to a whole cent, half away from zero: the one rounding rule
    /// every line follows.
    pub fn to_cents(self) -> i128 {
        let den = self.d * CENT;
        let q = (self.n.abs() * 2 + den) / (den * 2);
        let q = if self.n < 0 { -q } else { q };
        q * CENT
    }
}

/// `micros × fraction` (a rate in millionths) rounded to a cent.
pub fn share(amount: i128, rate: Fixed) -> i128 {
    Ratio::new(amount * rate.micros(), 1_000_000).to_cents()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_exactly() {
        assert_eq!(Fixed::parse("0.50"), Ok(Fixed(500_000)));
        assert_eq!(Fixed::parse("49"), Ok(Fixed(49_000_000)));
        assert_eq!(Fixed::parse("-1.000001"), Ok(Fixed(-1_000_001)));
        assert!(Fixed::parse("0.0000001").is_err());
        assert!(Fixed::parse("1e3").is_err());
        assert!(Fixed::parse("").is_err());
    }

    #[test]
    fn lines_round_half_away_from_zero_to_a_cent() {
        assert_eq!(Ratio::new(5_000, 1).to_cents(), 10_000);
        assert_eq!(Ratio::new(4_999, 1).to_cents(), 0);
        assert_eq!(Ratio::new(-5_000, 1).to_cents(), -10_000);
        assert_eq!(Ratio::new(1, 3).add(Ratio::new(2, 3)), Ratio::whole(1));
    }
}
