//! Output masking: feeding output in arbitrary pieces gives exactly what masking it at once
//! gives, and a masked value of 4+ bytes without `*` never survives.
#![no_main]

use attune_wasm::secrets::redact::{Patterns, Stream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\u{0}');
    let (Some(secret), Some(split), Some(output)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let patterns = Patterns::new([secret]);
    let whole = patterns.mask_all(output.as_bytes());
    let mut stream = Stream::new(patterns);
    let mut pieced = Vec::new();
    let bytes = output.as_bytes();
    let mut at = 0;
    for step in split.bytes().map(|b| usize::from(b % 7) + 1) {
        let end = (at + step).min(bytes.len());
        pieced.extend(stream.push(&bytes[at..end]));
        at = end;
    }
    pieced.extend(stream.push(&bytes[at..]));
    pieced.extend(stream.finish());
    assert_eq!(pieced, whole);
    if secret.len() >= 4 && !secret.contains('*') {
        assert!(!whole.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
});
