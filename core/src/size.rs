//! Byte sizes as users type them (`8MiB`, `4GiB`, `1048576`), parsed by `bytesize`.

use crate::CoreError;

/// Parse a byte size; binary (`KiB`, `MiB`, `GiB`) and decimal (`KB`, `MB`) units.
pub fn parse_size(input: &str) -> Result<u64, CoreError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(CoreError::InvalidSize { input: input.into(), reason: "empty".into() });
    }
    trimmed
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| CoreError::InvalidSize { input: input.into(), reason: e.to_string() })
}

/// A duration such as `500ms`, `15s`, `2m`, `24h` or `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map(|i| s.split_at(i)).unwrap_or((s, "s"));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?} (e.g. 500ms, 15s, 2m, 24h)"))?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs).ok_or(format!("duration {s:?} is too long"));
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(format!("invalid duration unit in {s:?} (ms, s, m, h, d)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("1KB").unwrap(), 1000);
        assert!(parse_size("").is_err());
        assert!(parse_size("lots").is_err());
    }
}
