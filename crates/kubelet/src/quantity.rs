//! Kubernetes resource quantities (`100Mi`, `1.5G`, `250m`, `1e3`) as plain numbers.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity that is not in Kubernetes' format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a quantity like 100Mi, 1.5G or 250m")]
pub struct QuantityError(pub String);

/// Parses a quantity into its value (`"1.5Ki"` → 1536.0, `"250m"` → 0.25).
pub fn parse(text: &str) -> Result<f64, QuantityError> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let error = || QuantityError(text.to_string());
    let trimmed = text.trim();
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, factor)| trimmed.strip_suffix(suffix).map(|n| (n, *factor)))
        .unwrap_or((trimmed, 1.0));
    // Only digits, one dot, a sign and an exponent: no "inf" or "NaN".
    let plain = number
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | '+' | '-' | 'e' | 'E'));
    let value: f64 = number.parse().map_err(|_| error())?;
    if !plain || number.is_empty() || !value.is_finite() || value < 0.0 {
        return Err(error());
    }
    Ok(value * factor)
}

/// Bytes or items, rounded up (`"100Mi"`).
pub fn parse_count(text: &str) -> Result<u64, QuantityError> {
    Ok(parse(text)?.ceil() as u64)
}

/// CPU in millicores, rounded up (`"250m"` → 250, `"1.5"` → 1500).
pub fn parse_millis(text: &str) -> Result<u64, QuantityError> {
    Ok((parse(text)? * 1000.0).ceil() as u64)
}

/// A resource of a `ResourceList` in its unit: millicores for `cpu`, bytes or items otherwise.
/// Missing or unparsable entries are `None` (the API server validates pod resources).
pub fn amount(list: Option<&BTreeMap<String, Quantity>>, resource: &str) -> Option<u64> {
    let quantity = list?.get(resource)?;
    if resource == "cpu" {
        parse_millis(&quantity.0).ok()
    } else {
        parse_count(&quantity.0).ok()
    }
}

/// Formats millicores the way the API server would (`2`, `1900m`).
pub fn format_millis(millis: u64) -> Quantity {
    if millis.is_multiple_of(1000) {
        Quantity((millis / 1000).to_string())
    } else {
        Quantity(format!("{millis}m"))
    }
}

/// Formats bytes in KiB, as the kubelet reports memory.
pub fn format_kib(bytes: u64) -> Quantity {
    Quantity(format!("{}Ki", bytes / 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_suffix_and_form() {
        assert_eq!(parse_count("100Mi"), Ok(100 << 20));
        assert_eq!(parse_count("1.5Ki"), Ok(1536));
        assert_eq!(parse_count("1G"), Ok(1_000_000_000));
        assert_eq!(parse_count("129e6"), Ok(129_000_000));
        assert_eq!(parse_count("512"), Ok(512));
        assert_eq!(parse_millis("250m"), Ok(250));
        assert_eq!(parse_millis("1.5"), Ok(1500));
        assert_eq!(parse_millis("2"), Ok(2000));
        assert_eq!(parse_millis("100u"), Ok(1));
        for bad in ["", "Mi", "1.5X", "-1", "inf", "NaN", "1 Gi"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_like_the_api_server() {
        assert_eq!(format_millis(2000).0, "2");
        assert_eq!(format_millis(1900).0, "1900m");
        assert_eq!(format_kib(4096).0, "4Ki");
    }
}
