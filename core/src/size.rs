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
