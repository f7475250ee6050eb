//! Names and label values made from attacker-chosen text (rule names, pod
//! names, users): always valid for Kubernetes, and distinct for distinct inputs.

/// A DNS-1123 label made of `prefix-<base>`, at most 63 characters; a hash
/// keeps long or odd bases distinct.
pub fn object_name(prefix: &str, base: &str) -> String {
    let slug = slug(base);
    let name = format!("{prefix}-{slug}");
    if name.len() <= 63 && !slug.is_empty() && slug == base {
        return name;
    }
    let hash = short_hash(base);
    let room = 63 - prefix.len() - 1 - hash.len() - 1;
    let cut: String = slug.chars().take(room).collect();
    let cut = cut.trim_end_matches('-');
    if cut.is_empty() {
        format!("{prefix}-{hash}")
    } else {
        format!("{prefix}-{cut}-{hash}")
    }
}

/// Lower-case letters, digits and single dashes only.
pub fn slug(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// A valid label value (≤63, alphanumeric at both ends) that identifies `text`.
pub fn label_value(text: &str) -> String {
    let valid = text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && text
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && text
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if valid {
        return text.to_string();
    }
    let hash = short_hash(text);
    let cut: String = slug(text).chars().take(63 - hash.len() - 1).collect();
    let cut = cut.trim_end_matches('-');
    if cut.is_empty() {
        hash
    } else {
        format!("{cut}-{hash}")
    }
}

/// A short, stable hash (10 hex digits of SHA-256), so that long or odd inputs
/// cut to fit still give distinct names.
pub fn short_hash(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    hex(&digest.as_ref()[..5])
}

/// Lower-case hexadecimal, two digits per byte.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_writes_two_lower_case_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }
}
