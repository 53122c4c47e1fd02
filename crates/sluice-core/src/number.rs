//! DynamoDB numbers: what DynamoDB accepts, how it normalises them, and what they cost.
//!
//! DynamoDB keeps up to 38 significant digits, with a magnitude between 1E-130 and
//! 9.99…E+125 (or zero); anything else is refused with a ValidationException ("Number overflow",
//! "Number underflow", "DynamoDB only supports precision up to 38 digits"). It stores a number
//! normalised (`1e2`, `100.0` and `100` are the same number, read back as `100`), as base-100
//! digit pairs aligned on the decimal point: the size of a non-zero number is one byte per pair
//! between its first and last significant digit, plus one, plus one more when it is negative
//! (zero costs one byte). Those sizes were checked byte for byte against DynamoDB Local at the
//! 400 KB item limit (`crates/sluice-sim/tests/wire.rs`).

/// The most significant digits a DynamoDB number keeps.
pub const MAX_DIGITS: usize = 38;
/// A number's leading digit must stand below 10^126 …
pub const MAX_EXPONENT: i64 = 125;
/// … and, unless it is zero, at or above 10^-130.
pub const MIN_EXPONENT: i64 = -130;

/// A decimal number as DynamoDB sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number {
    negative: bool,
    /// Significant digits, without leading or trailing zeros; empty for zero.
    digits: String,
    /// The power of ten of the first digit (`123.4` → 2, `0.05` → -2).
    point: i64,
}

/// Why DynamoDB would refuse a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberError {
    /// Not decimal text (DynamoDB: "A value provided cannot be converted into a number").
    NotANumber,
    /// More than 38 significant digits.
    Precision,
    /// Magnitude of 1E126 or more.
    Overflow,
    /// Not zero, and below 1E-130.
    Underflow,
}

impl std::fmt::Display for NumberError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NumberError::NotANumber => "is not a decimal number DynamoDB can read",
            NumberError::Precision => "has more than 38 significant digits (DynamoDB's precision)",
            NumberError::Overflow => {
                "is too large for DynamoDB (the magnitude must be below 1E126)"
            }
            NumberError::Underflow => {
                "is too small for DynamoDB (a non-zero magnitude must be at least 1E-130)"
            }
        })
    }
}

impl Number {
    /// Parses decimal text (JSON's number grammar, and what DynamoDB's `N` takes: an optional
    /// sign, digits with an optional point, an optional exponent) and checks DynamoDB's limits.
    pub fn parse(text: &str) -> Result<Number, NumberError> {
        let bytes = text.as_bytes();
        let mut i = 0;
        let negative = match bytes.first() {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let mut all = String::new();
        let mut int_digits: i64 = 0;
        let mut seen_point = false;
        let mut any_digit = false;
        while i < bytes.len() {
            match bytes[i] {
                b @ b'0'..=b'9' => {
                    any_digit = true;
                    all.push(b as char);
                    if !seen_point {
                        int_digits += 1;
                    }
                }
                b'.' if !seen_point => seen_point = true,
                b'e' | b'E' => break,
                _ => return Err(NumberError::NotANumber),
            }
            i += 1;
        }
        if !any_digit {
            return Err(NumberError::NotANumber);
        }
        let mut exponent: i64 = 0;
        if i < bytes.len() {
            // The exponent: `e`, an optional sign, at least one digit.
            let rest = &text[i + 1..];
            let (sign, digits) = match rest.as_bytes().first() {
                Some(b'-') => (-1, &rest[1..]),
                Some(b'+') => (1, &rest[1..]),
                _ => (1, rest),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(NumberError::NotANumber);
            }
            // DynamoDB reads numbers as Java's BigDecimal does: leading zeros are fine, and the
            // exponent must fit a 32-bit int; past that the text is no number at all.
            let digits = digits.trim_start_matches('0');
            let magnitude = if digits.is_empty() {
                0
            } else if digits.len() > 10 {
                return Err(NumberError::NotANumber);
            } else {
                digits.parse::<i64>().map_err(|_| NumberError::NotANumber)?
            };
            if magnitude > i64::from(i32::MAX) {
                return Err(NumberError::NotANumber);
            }
            exponent = sign * magnitude;
        }
        let leading = all.len() - all.trim_start_matches('0').len();
        let digits = all
            .trim_start_matches('0')
            .trim_end_matches('0')
            .to_string();
        if digits.is_empty() {
            return Ok(Number {
                negative: false,
                digits,
                point: 0,
            });
        }
        let point = int_digits - 1 - leading as i64 + exponent;
        let n = Number {
            negative,
            digits,
            point,
        };
        if n.digits.len() > MAX_DIGITS {
            return Err(NumberError::Precision);
        }
        if n.point > MAX_EXPONENT {
            return Err(NumberError::Overflow);
        }
        if n.point < MIN_EXPONENT {
            return Err(NumberError::Underflow);
        }
        Ok(n)
    }

    /// Whether the number is zero (of any sign or notation: `-0`, `0.0`, `0e5`).
    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    /// Bytes DynamoDB counts for this number.
    pub fn size(&self) -> usize {
        if self.is_zero() {
            return 1;
        }
        let last = self.point - (self.digits.len() as i64 - 1);
        let pairs = self.point.div_euclid(2) - last.div_euclid(2) + 1;
        (pairs as usize + 1 + usize::from(self.negative)).min(21)
    }

    /// The normalised text, as DynamoDB reads the number back: plain decimal notation, no
    /// exponent, no leading or trailing zeros (`1e2` → `100`, `-0.50` → `-0.5`, `-0` → `0`).
    pub fn canonical(&self) -> String {
        if self.is_zero() {
            return "0".into();
        }
        let n = self.digits.len() as i64;
        let mut out = String::with_capacity(self.digits.len() + 8);
        if self.negative {
            out.push('-');
        }
        if self.point < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-self.point - 1) as usize));
            out.push_str(&self.digits);
        } else if self.point >= n - 1 {
            out.push_str(&self.digits);
            out.extend(std::iter::repeat_n('0', (self.point - (n - 1)) as usize));
        } else {
            let (int, frac) = self.digits.split_at(self.point as usize + 1);
            out.push_str(int);
            out.push('.');
            out.push_str(frac);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(t: &str) -> usize {
        Number::parse(t).unwrap().size()
    }

    #[test]
    fn sizes_follow_base_100_pairs_aligned_on_the_point() {
        // Each figure was checked against DynamoDB Local at the 400 KB limit.
        for (text, bytes) in [
            ("0", 1),
            ("1", 2),
            ("-1", 3),
            ("12", 2),
            ("123", 3),
            ("1.5", 3),
            ("100", 2),
            ("1000", 2),
            ("0.001", 2),
            ("0.01", 2),
            ("12.3", 3),
            ("-12.3", 4),
            ("123456789", 6),
            ("1e125", 2),
            ("1.23456789012345678901234567890123456e-100", 20),
            ("99999999999999999999999999999999999999", 20),
            ("-99999999999999999999999999999999999999", 21),
            ("1e-130", 2),
            ("0.5", 2),
            ("5e-1", 2),
            ("10.01", 3),
            ("1001", 3),
        ] {
            assert_eq!(size(text), bytes, "{text}");
        }
    }

    #[test]
    fn normalised_text_is_what_dynamodb_reads_back() {
        for (text, canonical) in [
            ("-0", "0"),
            ("0.0", "0"),
            ("1E2", "100"),
            ("100.0", "100"),
            ("1e2", "100"),
            ("00012", "12"),
            ("1.0e+2", "100"),
            ("-0.50", "-0.5"),
            ("1.25e-3", "0.00125"),
            ("12.5e1", "125"),
            ("123.456", "123.456"),
        ] {
            assert_eq!(
                Number::parse(text).unwrap().canonical(),
                canonical,
                "{text}"
            );
        }
    }

    #[test]
    fn the_range_and_precision_are_dynamodbs() {
        assert!(Number::parse("9.9999999999999999999999999999999999999e125").is_ok());
        assert_eq!(Number::parse("1e126"), Err(NumberError::Overflow));
        assert_eq!(Number::parse("-1e200"), Err(NumberError::Overflow));
        assert!(Number::parse("1e-130").is_ok());
        assert_eq!(Number::parse("9e-131"), Err(NumberError::Underflow));
        assert!(Number::parse("0e-999").is_ok(), "zero has no magnitude");
        assert!(Number::parse(&"1".repeat(38)).is_ok());
        assert_eq!(Number::parse(&"1".repeat(39)), Err(NumberError::Precision));
        assert!(Number::parse(&format!("{}000", "1".repeat(38))).is_ok());
        for bad in [
            "",
            "-",
            "abc",
            "1e",
            "1e+",
            "NaN",
            "1.2.3",
            "1e99999999999999999999",
        ] {
            assert_eq!(Number::parse(bad), Err(NumberError::NotANumber), "{bad}");
        }
    }
}
