//! PostgreSQL's binary `numeric` format, exactly: to and from decimal unscaled integers and
//! decimal text, without ever rounding.
//!
//! The format is `ndigits: i16, weight: i16, sign: u16, dscale: i16`, then `ndigits`
//! base-10000 digits (i16 each). The value is `sum(digit[i] * 10000^(weight - i))`; `dscale`
//! is the number of decimal places shown.

const POS: u16 = 0x0000;
const NEG: u16 = 0x4000;
const NAN: u16 = 0xC000;
const PINF: u16 = 0xD000;
const NINF: u16 = 0xF000;

/// Powers of ten that fit an i128.
const POW10: [i128; 39] = {
    let mut t = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// A decoded binary numeric, borrowing its digits.
pub struct Numeric<'a> {
    pub weight: i16,
    pub sign: u16,
    pub dscale: i16,
    digits: &'a [u8],
}

impl<'a> Numeric<'a> {
    /// Reads a binary numeric value.
    pub fn parse(v: &'a [u8]) -> Result<Self, String> {
        if v.len() < 8 {
            return Err("a numeric value shorter than its header".into());
        }
        let ndigits = i16::from_be_bytes([v[0], v[1]]);
        let n = usize::try_from(ndigits).map_err(|_| "a numeric with a negative digit count")?;
        if v.len() != 8 + 2 * n {
            return Err("a numeric value whose length does not match its digit count".into());
        }
        Ok(Numeric {
            weight: i16::from_be_bytes([v[2], v[3]]),
            sign: u16::from_be_bytes([v[4], v[5]]),
            dscale: i16::from_be_bytes([v[6], v[7]]),
            digits: &v[8..],
        })
    }

    fn digit(&self, i: usize) -> i128 {
        i16::from_be_bytes([self.digits[2 * i], self.digits[2 * i + 1]]) as i128
    }

    fn ndigits(&self) -> usize {
        self.digits.len() / 2
    }

    /// The special value this is (`NaN`, `Infinity`, `-Infinity`), if any.
    pub fn special(&self) -> Option<&'static str> {
        match self.sign {
            NAN => Some("NaN"),
            PINF => Some("Infinity"),
            NINF => Some("-Infinity"),
            _ => None,
        }
    }

    /// The value as an unscaled integer at `scale`, when it fits `precision` exactly.
    pub fn to_unscaled(&self, precision: u8, scale: i8) -> Result<i128, String> {
        if let Some(s) = self.special() {
            return Err(format!("{s} does not fit decimal({precision},{scale})"));
        }
        let mut acc: i128 = 0;
        for i in 0..self.ndigits() {
            let d = self.digit(i);
            // The power of ten this digit's unit stands for in the unscaled integer.
            let exp = 4 * (self.weight as i32 - i as i32) + scale as i32;
            let term = if exp >= 0 {
                POW10
                    .get(exp as usize)
                    .and_then(|p| d.checked_mul(*p))
                    .ok_or("too large for a decimal")?
            } else {
                let div = POW10[(-exp).min(38) as usize];
                if d % div != 0 {
                    return Err(format!("has more than {scale} decimal places"));
                }
                d / div
            };
            acc = acc.checked_add(term).ok_or("too large for a decimal")?;
        }
        if acc >= POW10[precision as usize] {
            return Err(format!("does not fit decimal({precision},{scale})"));
        }
        Ok(if self.sign == NEG { -acc } else { acc })
    }

    /// Appends the exact text PostgreSQL prints for this value.
    pub fn write_text(&self, out: &mut String) {
        if let Some(s) = self.special() {
            out.push_str(s);
            return;
        }
        if self.sign == NEG && self.ndigits() > 0 {
            out.push('-');
        }
        let n = self.ndigits() as i32;
        let weight = self.weight as i32;
        if weight < 0 {
            out.push('0');
        } else {
            for i in 0..=weight {
                let d = if i < n { self.digit(i as usize) } else { 0 };
                if i == 0 {
                    push_int(out, d);
                } else {
                    push_padded4(out, d);
                }
            }
        }
        let dscale = self.dscale.max(0) as usize;
        if dscale > 0 {
            out.push('.');
            let mut written = 0;
            let mut i = weight + 1;
            while written < dscale {
                let d = if i >= 0 && i < n {
                    self.digit(i as usize)
                } else {
                    0
                };
                let group = [
                    (d / 1000) as u8,
                    (d / 100 % 10) as u8,
                    (d / 10 % 10) as u8,
                    (d % 10) as u8,
                ];
                for g in group {
                    if written < dscale {
                        out.push((b'0' + g) as char);
                        written += 1;
                    }
                }
                i += 1;
            }
        }
    }
}

fn push_int(out: &mut String, d: i128) {
    use std::fmt::Write;
    let _ = write!(out, "{d}");
}

fn push_padded4(out: &mut String, d: i128) {
    use std::fmt::Write;
    let _ = write!(out, "{d:04}");
}

/// A decimal number as digits: `int` has no leading zeros, `frac` is exactly the shown scale.
pub struct Digits<'a> {
    pub negative: bool,
    pub int: &'a [u8],
    pub frac: &'a [u8],
}

/// What a numeric text is.
pub enum Parsed {
    Special(u16),
    /// Digits (ASCII) with the position of the decimal point.
    Number {
        negative: bool,
        digits: Vec<u8>,
        point: i64,
    },
}

/// Parses numeric text (`-12.50`, `1e-3`, `NaN`, `Infinity`) without losing anything.
pub fn parse_text(text: &str) -> Result<Parsed, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    match lower.as_str() {
        "nan" => return Ok(Parsed::Special(NAN)),
        "infinity" | "+infinity" | "inf" | "+inf" => return Ok(Parsed::Special(PINF)),
        "-infinity" | "-inf" => return Ok(Parsed::Special(NINF)),
        _ => {}
    }
    let bad = || format!("`{text}` is not a number");
    let (negative, rest) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().map_err(|_| bad())?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || exponent.abs() > 100_000
    {
        return Err(bad());
    }
    let mut digits = Vec::with_capacity(int.len() + frac.len());
    digits.extend_from_slice(int.as_bytes());
    digits.extend_from_slice(frac.as_bytes());
    Ok(Parsed::Number {
        negative,
        digits,
        point: int.len() as i64 + exponent,
    })
}

/// Appends the binary numeric for numeric text, refusing what a `numeric(p,s)` target
/// (`typmod`) would round or overflow. The shown scale is kept (it is `s` under a typmod).
pub fn encode_text(
    text: &str,
    typmod: Option<(i32, i32)>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    match parse_text(text)? {
        Parsed::Special(sign) => {
            if sign != NAN && typmod.is_some() {
                return Err(format!(
                    "`{text}` cannot be stored in a numeric with a precision"
                ));
            }
            encode_special(sign, out);
            Ok(())
        }
        Parsed::Number {
            negative,
            digits,
            point,
        } => {
            // Split at the point, padding with zeros where it falls outside the digits.
            let len = digits.len() as i64;
            let mut int: Vec<u8> = Vec::new();
            let mut frac: Vec<u8> = Vec::new();
            if point <= 0 {
                frac.resize((-point) as usize, b'0');
                frac.extend_from_slice(&digits);
            } else if point >= len {
                int.extend_from_slice(&digits);
                int.resize(point as usize, b'0');
            } else {
                int.extend_from_slice(&digits[..point as usize]);
                frac.extend_from_slice(&digits[point as usize..]);
            }
            encode_split(negative, &int, &frac, typmod, text, out)
        }
    }
}

/// Appends the binary numeric for an unscaled decimal at `scale` (non-negative).
pub fn encode_unscaled(
    unscaled: i128,
    scale: i8,
    typmod: Option<(i32, i32)>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mut buf = [0u8; 40];
    let mut n = unscaled.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = &buf[i..];
    let scale = scale.max(0) as usize;
    let mut frac_buf = [b'0'; 40];
    let (int, frac): (&[u8], &[u8]) = if digits.len() > scale {
        (
            &digits[..digits.len() - scale],
            &digits[digits.len() - scale..],
        )
    } else {
        let pad = scale - digits.len();
        frac_buf[pad..scale].copy_from_slice(digits);
        (&[], &frac_buf[..scale])
    };
    encode_split(unscaled < 0, int, frac, typmod, "", out)
}

/// Appends the binary numeric of an integer.
pub fn encode_int(v: i64, typmod: Option<(i32, i32)>, out: &mut Vec<u8>) -> Result<(), String> {
    encode_unscaled(v as i128, 0, typmod, out)
}

fn encode_special(sign: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&0i16.to_be_bytes());
}

fn encode_split(
    negative: bool,
    int: &[u8],
    frac: &[u8],
    typmod: Option<(i32, i32)>,
    text: &str,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let shown = |d: &[u8]| String::from_utf8_lossy(d).into_owned();
    let describe = || {
        if text.is_empty() {
            format!(
                "{}{}{}{}",
                if negative { "-" } else { "" },
                if int.is_empty() {
                    "0".to_string()
                } else {
                    shown(int)
                },
                if frac.is_empty() { "" } else { "." },
                shown(frac)
            )
        } else {
            text.to_owned()
        }
    };
    let int_start = int.iter().position(|&b| b != b'0').unwrap_or(int.len());
    let int = &int[int_start..];
    let significant_frac = frac.len() - frac.iter().rev().take_while(|&&b| b == b'0').count();
    let (frac, dscale) = match typmod {
        Some((p, s)) => {
            if s < 0 {
                return Err("numeric columns with a negative scale are not supported".into());
            }
            let s = s as usize;
            if significant_frac > s {
                return Err(format!(
                    "{} has more than {s} decimal places; numeric({p},{s}) would round it",
                    describe()
                ));
            }
            if int.len() as i64 > p as i64 - s as i64 {
                return Err(format!("{} does not fit numeric({p},{s})", describe()));
            }
            (&frac[..significant_frac.min(frac.len())], s)
        }
        None => (frac, frac.len()),
    };
    if dscale > 0x3FFF {
        return Err(format!(
            "{} has too many decimal places for PostgreSQL",
            describe()
        ));
    }
    // Base-10000 groups aligned on the decimal point, computed on the fly (no allocation).
    let int_groups = int.len().div_ceil(4);
    let frac_groups = frac.len().div_ceil(4);
    let total = int_groups + frac_groups;
    let lead = int_groups * 4 - int.len();
    let digit_at = |pos: usize| -> i16 {
        if pos < lead {
            0
        } else if pos < lead + int.len() {
            (int[pos - lead] - b'0') as i16
        } else {
            frac.get(pos - lead - int.len())
                .map_or(0, |b| (b - b'0') as i16)
        }
    };
    let group = |k: usize| (0..4).fold(0i16, |acc, j| acc * 10 + digit_at(k * 4 + j));
    let (start, end) = match (0..total).find(|&k| group(k) != 0) {
        Some(first) => {
            let last = (first..total)
                .rev()
                .find(|&k| group(k) != 0)
                .unwrap_or(first);
            (first, last + 1)
        }
        None => (0, 0),
    };
    let ndigits = end - start;
    let weight = if ndigits == 0 {
        0
    } else {
        int_groups as i64 - 1 - start as i64
    };
    if weight > i16::MAX as i64 || weight < i16::MIN as i64 || ndigits > i16::MAX as usize {
        return Err(format!(
            "{} is beyond PostgreSQL's numeric range",
            describe()
        ));
    }
    out.reserve(8 + 2 * ndigits);
    out.extend_from_slice(&(ndigits as i16).to_be_bytes());
    out.extend_from_slice(&(weight as i16).to_be_bytes());
    let sign = if negative && ndigits > 0 { NEG } else { POS };
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&(dscale as i16).to_be_bytes());
    for k in start..end {
        out.extend_from_slice(&group(k).to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(bytes: &[u8]) -> String {
        let mut s = String::new();
        Numeric::parse(bytes).unwrap().write_text(&mut s);
        s
    }

    #[test]
    fn text_round_trips_exactly() {
        for t in [
            "0",
            "1",
            "-1",
            "12.50",
            "0.0001",
            "-0.05",
            "10000",
            "123456789.123456789",
            "99999999999999999999999999999999999999",
            "0.00000000000000000000000000000000000001",
            "NaN",
            "Infinity",
            "-Infinity",
            "1.000",
            "100000000.00000001",
        ] {
            let mut out = Vec::new();
            encode_text(t, None, &mut out).unwrap();
            assert_eq!(text_of(&out), t, "{t}");
        }
        let mut out = Vec::new();
        encode_text("1.5e3", None, &mut out).unwrap();
        assert_eq!(text_of(&out), "1500");
    }

    #[test]
    fn unscaled_round_trips_exactly() {
        for (v, scale, p) in [
            (0i128, 2i8, 10u8),
            (12345, 2, 10),
            (-5, 2, 5),
            (99999999999999999999999999999999999999, 0, 38),
            (-99999999999999999999999999999999999999, 10, 38),
            (1, 37, 38),
            (123456789, 9, 38),
        ] {
            let mut out = Vec::new();
            encode_unscaled(v, scale, None, &mut out).unwrap();
            let n = Numeric::parse(&out).unwrap();
            assert_eq!(n.to_unscaled(p, scale).unwrap(), v, "{v} at {scale}");
            assert_eq!(n.dscale as i8, scale);
        }
    }

    #[test]
    fn typmods_refuse_rounding_and_overflow() {
        let mut out = Vec::new();
        assert!(encode_text("1.234", Some((10, 2)), &mut out).is_err());
        assert!(encode_text("1.230", Some((10, 2)), &mut out).is_ok());
        assert!(encode_text("123456789", Some((10, 2)), &mut out).is_err());
        assert!(encode_unscaled(123456, 3, Some((5, 2)), &mut out).is_err());
        assert!(encode_text("Infinity", Some((5, 2)), &mut out).is_err());
        let n = {
            let mut b = Vec::new();
            encode_text("123.456", None, &mut b).unwrap();
            b
        };
        assert!(Numeric::parse(&n).unwrap().to_unscaled(10, 2).is_err());
        assert!(Numeric::parse(&n).unwrap().to_unscaled(4, 3).is_err());
        assert_eq!(
            Numeric::parse(&n).unwrap().to_unscaled(10, 4).unwrap(),
            1234560
        );
    }
}
