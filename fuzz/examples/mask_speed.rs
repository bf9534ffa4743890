use attune_wasm::secrets::redact::{Patterns, Stream};
fn main() {
    let secret = std::env::args().nth(1).unwrap_or_else(|| "x".repeat(60 * 1024) + "!");
    let t = std::time::Instant::now();
    let p = Patterns::new([secret.as_str()]);
    eprintln!("build {:?}", t.elapsed());
    let mut s = Stream::new(p);
    let line = [b'x'; 1024];
    let t = std::time::Instant::now();
    let mut total = 0;
    for _ in 0..16 * 1024 { total += s.push(&line).len(); }
    total += s.finish().len();
    eprintln!("stream {total} bytes in {:?}", t.elapsed());
}
