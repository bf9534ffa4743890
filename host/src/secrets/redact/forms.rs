//! The encoded forms of a value that CI runners' maskers cover: base64 (both alphabets, every
//! alignment), JSON string escapes, percent-encodings (see the module docs of [`super`]).

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use zeroize::Zeroizing;

/// Base64 forms of `value`, passed to `add`: standard and URL-safe alphabets; the whole value
/// padded and unpadded; and, for each of the three offsets at which the value can start inside
/// longer encoded data, the characters that depend only on the value's bytes. One encoding per
/// offset, into one buffer (this runs for every execution).
pub(super) fn base64_forms(value: &[u8], add: &mut impl FnMut(&[u8])) {
    let mut data = Zeroizing::new(Vec::with_capacity(value.len() + 2));
    let mut encoded = Zeroizing::new(String::with_capacity(value.len() * 4 / 3 + 8));
    for offset in 0..3usize {
        data.clear();
        data.resize(offset, 0);
        data.extend_from_slice(value);
        encoded.clear();
        STANDARD_NO_PAD.encode_string(data.as_slice(), &mut encoded);
        // Characters mixing bits of the bytes before the value: 0, 2 or 3.
        let lead = [0, 2, 3][offset];
        // The last character of a partial group mixes bits of the bytes after it.
        let trail = usize::from(data.len() % 3 != 0);
        let mut both = |form: &[u8]| {
            add(form);
            if form.iter().any(|b| matches!(b, b'+' | b'/')) {
                // URL-safe base64 (RFC 4648 §5) differs in these two characters only.
                let url: Zeroizing<Vec<u8>> = Zeroizing::new(
                    form.iter()
                        .map(|&b| match b {
                            b'+' => b'-',
                            b'/' => b'_',
                            b => b,
                        })
                        .collect(),
                );
                add(&url);
            }
        };
        if encoded.len() > lead + trail {
            both(&encoded.as_bytes()[lead..encoded.len() - trail]);
        }
        if offset == 0 {
            both(encoded.as_bytes());
            let pad = (3 - value.len() % 3) % 3;
            if pad > 0 {
                encoded.push_str(&"=="[..pad]);
                both(encoded.as_bytes());
            }
        }
    }
}

/// JSON string escapes of `value` (without the quotes), every combination of: non-ASCII raw,
/// `\u` lower-case, `\u` upper-case; `&<>` and U+2028/9 raw or escaped (Go); `/` raw or `\/`.
/// Only the variants that differ are made: a value of letters and digits has none.
pub(super) fn json_forms(value: &str) -> Vec<Zeroizing<String>> {
    let mut out = Vec::new();
    if !value
        .chars()
        .any(|c| matches!(c, '"' | '\\' | '/' | '&' | '<' | '>') || !(' '..='~').contains(&c))
    {
        return out;
    }
    let non_ascii: &[Option<bool>] = if value.is_ascii() {
        &[None]
    } else {
        &[None, Some(false), Some(true)]
    };
    let html: &[bool] = if value.contains(['&', '<', '>', '\u{2028}', '\u{2029}']) {
        &[false, true]
    } else {
        &[false]
    };
    let slash: &[bool] = if value.contains('/') {
        &[false, true]
    } else {
        &[false]
    };
    for &u in non_ascii {
        for &h in html {
            for &s in slash {
                out.push(json_escape(value, u, h, s));
            }
        }
    }
    out
}

/// One JSON escaping: `unicode` is `None` for raw non-ASCII, else `Some(upper-case hex)`.
pub(super) fn json_escape(
    value: &str,
    unicode: Option<bool>,
    html: bool,
    slash: bool,
) -> Zeroizing<String> {
    use std::fmt::Write as _;
    let upper = unicode.unwrap_or(false);
    // Room for the longest escaping (a control byte becomes the six bytes `\u00XX`), so that
    // the string never grows: a grown `String` frees its old buffer, a copy of the form,
    // without zeroizing it.
    let mut out = Zeroizing::new(String::with_capacity(value.len().saturating_mul(6)));
    let u = |out: &mut String, unit: u16| {
        // Writing to a String cannot fail.
        let _ = if upper {
            write!(out, "\\u{unit:04X}")
        } else {
            write!(out, "\\u{unit:04x}")
        };
    };
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '/' if slash => out.push_str("\\/"),
            '&' | '<' | '>' | '\u{2028}' | '\u{2029}' if html => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    u(&mut out, *unit);
                }
            }
            c if (c as u32) < 0x20 || (c as u32 > 0x7f && unicode.is_some()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    u(&mut out, *unit);
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Which ASCII characters a percent-encoder leaves as they are (besides letters and digits).
const PERCENT_SAFE: &[&[u8]] = &[
    b"-._~",                 // RFC 3986 unreserved
    b"-._~!'()*",            // JavaScript encodeURIComponent
    b"-._~!'()*;,/?:@&=+$#", // JavaScript encodeURI
    b"-._~/",                // Python urllib.parse.quote
    b"-._*",                 // application/x-www-form-urlencoded (WHATWG, Java)
];

/// Percent-encodings of `value` (UTF-8): each safe set of [`PERCENT_SAFE`], space as `%20`
/// or `+`, upper- or lower-case hex.
pub(super) fn percent_forms(value: &str) -> Vec<Zeroizing<String>> {
    const UPPER: &[u8; 16] = b"0123456789ABCDEF";
    const LOWER: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::new();
    // Letters, digits and `-._` are kept by every encoder.
    if value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return out;
    }
    let pluses: &[bool] = if value.contains(' ') {
        &[false, true]
    } else {
        &[false]
    };
    for safe in PERCENT_SAFE {
        for &plus in pluses {
            for hex in [UPPER, LOWER] {
                let mut s = Zeroizing::new(String::with_capacity(value.len() * 3));
                for &b in value.as_bytes() {
                    if b.is_ascii_alphanumeric() || safe.contains(&b) {
                        s.push(char::from(b));
                    } else if b == b' ' && plus {
                        s.push('+');
                    } else {
                        s.push('%');
                        s.push(char::from(hex[usize::from(b >> 4)]));
                        s.push(char::from(hex[usize::from(b & 15)]));
                    }
                }
                out.push(s);
            }
        }
    }
    out
}
