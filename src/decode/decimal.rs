//! MySQL's binary DECIMAL format (`decimal2bin`): groups of nine digits in four big-endian bytes,
//! leading and trailing partial groups in fewer bytes, the sign in the top bit of the first byte
//! (set for positive), and every byte inverted for negative numbers.

const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];

pub fn binary_size(precision: u8, scale: u8) -> usize {
    let intg = precision.saturating_sub(scale) as usize;
    let frac = scale as usize;
    (intg / 9) * 4 + DIG2BYTES[intg % 9] + (frac / 9) * 4 + DIG2BYTES[frac % 9]
}

/// A decoded decimal: sign, integer digits and exactly `scale` fraction digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    pub negative: bool,
    pub int_digits: String,
    pub frac_digits: String,
}

impl Decimal {
    /// The unscaled integer as text (`-12345` for `-123.45` at scale 2).
    pub fn unscaled_digits(&self) -> String {
        let mut s = String::with_capacity(self.int_digits.len() + self.frac_digits.len() + 1);
        if self.negative {
            s.push('-');
        }
        let digits = format!("{}{}", self.int_digits, self.frac_digits);
        let t = digits.trim_start_matches('0');
        s.push_str(if t.is_empty() { "0" } else { t });
        if s == "-0" {
            s = "0".into();
        }
        s
    }
    pub fn to_i128(&self) -> Option<i128> {
        self.unscaled_digits().parse().ok()
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let int = self.int_digits.trim_start_matches('0');
        let int = if int.is_empty() { "0" } else { int };
        let zero = int == "0" && self.frac_digits.bytes().all(|c| c == b'0');
        if self.negative && !zero {
            f.write_str("-")?;
        }
        f.write_str(int)?;
        if !self.frac_digits.is_empty() {
            write!(f, ".{}", self.frac_digits)?;
        }
        Ok(())
    }
}

/// Decodes `raw` (exactly [`binary_size`] bytes). `None` if the bytes are not a valid decimal.
pub fn decode(raw: &[u8], precision: u8, scale: u8) -> Option<Decimal> {
    if raw.len() != binary_size(precision, scale) || raw.is_empty() || scale > precision {
        return None;
    }
    let negative = raw[0] & 0x80 == 0;
    let mask: u8 = if negative { 0xff } else { 0 };
    let mut buf: Vec<u8> = raw.iter().map(|b| b ^ mask).collect();
    buf[0] ^= 0x80;
    let intg = (precision - scale) as usize;
    let frac = scale as usize;
    let mut pos = 0usize;
    let mut read = |n: usize| -> Option<u64> {
        let s = buf.get(pos..pos + n)?;
        pos += n;
        Some(s.iter().fold(0u64, |a, &b| (a << 8) | b as u64))
    };
    let mut int_digits = String::new();
    let lead = intg % 9;
    if lead > 0 {
        let v = read(DIG2BYTES[lead])?;
        if v >= 10u64.pow(lead as u32) {
            return None;
        }
        int_digits.push_str(&format!("{v:0lead$}"));
    }
    for _ in 0..intg / 9 {
        let v = read(4)?;
        if v > 999_999_999 {
            return None;
        }
        int_digits.push_str(&format!("{v:09}"));
    }
    let mut frac_digits = String::new();
    for _ in 0..frac / 9 {
        let v = read(4)?;
        if v > 999_999_999 {
            return None;
        }
        frac_digits.push_str(&format!("{v:09}"));
    }
    let trail = frac % 9;
    if trail > 0 {
        let v = read(DIG2BYTES[trail])?;
        if v >= 10u64.pow(trail as u32) {
            return None;
        }
        frac_digits.push_str(&format!("{v:0trail$}"));
    }
    Some(Decimal {
        negative,
        int_digits,
        frac_digits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encoder used only to test the decoder against hand-checked values.
    fn encode(text: &str, precision: u8, scale: u8) -> Vec<u8> {
        let neg = text.starts_with('-');
        let t = text.trim_start_matches('-');
        let (i, f) = t.split_once('.').unwrap_or((t, ""));
        let intg = (precision - scale) as usize;
        let i = format!("{:0>w$}", i, w = intg);
        let f = format!("{:0<w$}", f, w = scale as usize);
        let mut out = Vec::new();
        let lead = intg % 9;
        let mut push = |digits: &str, nbytes: usize| {
            let v: u64 = if digits.is_empty() {
                0
            } else {
                digits.parse().unwrap()
            };
            for k in (0..nbytes).rev() {
                out.push((v >> (8 * k)) as u8);
            }
        };
        push(&i[..lead], DIG2BYTES[lead]);
        for c in i.as_bytes()[lead..].chunks(9) {
            push(std::str::from_utf8(c).unwrap(), 4);
        }
        let fs = f.as_bytes();
        for c in fs[..(fs.len() / 9) * 9].chunks(9) {
            push(std::str::from_utf8(c).unwrap(), 4);
        }
        let trail = f.len() % 9;
        push(&f[f.len() - trail..], DIG2BYTES[trail]);
        out[0] ^= 0x80;
        if neg {
            for b in out.iter_mut() {
                *b ^= 0xff;
            }
        }
        out
    }

    #[test]
    fn round_trips() {
        for (t, p, s) in [
            ("1234567890.1234", 14, 4),
            ("-1234567890.1234", 14, 4),
            ("0.00", 10, 2),
            ("-0.01", 10, 2),
            (
                "99999999999999999999999999999999999.999999999999999999999999999999",
                65,
                30,
            ),
            (
                "-99999999999999999999999999999999999.999999999999999999999999999999",
                65,
                30,
            ),
            ("12345", 5, 0),
        ] {
            let raw = encode(t, p, s);
            assert_eq!(raw.len(), binary_size(p, s));
            let d = decode(&raw, p, s).unwrap();
            assert_eq!(d.to_string(), t, "{t}");
        }
        let d = decode(&encode("-123.45", 10, 2), 10, 2).unwrap();
        assert_eq!(d.to_i128(), Some(-12345));
    }
}
