//! Test guest for attune-wasm's integration tests. NOT an example of good practice: it prints
//! secret values so that tests can check exactly what was delivered.
//!
//! Commands (guest arguments after `--`):
//! - `get NAME...`: `{"NAME": {"value": "..."} | {"error": "not-found"}, ...}` through
//!   `attune-guest` (get-secret on wasip2, `SECRET_*` on wasip1)
//! - `env`: every environment variable as a JSON object
//! - `read PATH`: the file's text, or exit 2 with the error
//! - `ls PATH`: directory entries, or exit 2
//! - `write PATH TEXT`: create or overwrite a file, or exit 2
//! - `spin`: loop forever
//! - `alloc MIB`: allocate and touch MIB mebibytes
//! - `recurse`: unbounded recursion
//! - `stdin`: echo stdin
//! - `lines [NAME...]`: ask for each NAME through `get-secret` (values not printed), then echo
//!   stdin line by line as it arrives (flushed), until end of file
//! - `handles PATH`: open the file PATH again and again, keeping every handle, until an open
//!   fails; print how many were opened and the error
//! - `exit N`: exit with status N
//! - `show NAME`: print the secret raw, in base64, split across two flushed writes, and on
//!   stderr (to test output masking)
//! - `flood MIB`: write MIB mebibytes to stdout
//! - `hammer N NAME`: call get-secret N times, print the count of each outcome
//! - `bigname MIB`: call get-secret with a name of MIB mebibytes
//! - `flood-stderr MIB`: write MIB mebibytes to stderr
//! - `forms NAME`: print the secret in the encodings CI maskers cover, one per line: base64 of
//!   the value after `user:` and `ab` (every alignment), URL-safe base64 with and without
//!   padding, Python `json.dumps` (`\u00f6`), Go-style JSON (`\u0026\u003c\u003e`),
//!   percent-encoding with `/` kept, with `+` for space, with lower-case hex
//! - `config KEY...` (wasip2 only): `{"KEY": {"value": "..."} | {"none": true} | {"error":
//!   "upstream: ..."}}` through the standard `wasi:config/store.get`
//! - `config-all` (wasip2 only): `{"KEY": "value", ...}` from `wasi:config/store.get-all`, or
//!   `{"error": "..."}`
//! - `config-hammer N KEY` (wasip2 only): call `wasi:config/store.get` N times, print the count
//!   of each answer
//! - `touch NAME`: pass the secret to WASI as a file path (stat, open, read-dir, mkdir) and as a
//!   DNS name (resolve, connect); print only `touched`

use std::io::{Read, Write};

use serde_json::{json, Map, Value};

fn base64(bytes: &[u8]) -> String {
    base64_with(
        bytes,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        true,
    )
}

fn base64_with(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = args
        .split_first()
        .map_or(("env", &[][..]), |(c, r)| (c.as_str(), r));
    match cmd {
        "get" => {
            let mut out = Map::new();
            for name in rest {
                let v = match attune_guest::get_secret(name) {
                    Ok(v) => json!({ "value": v }),
                    Err(e) => json!({ "error": format!("{e:?}") }),
                };
                out.insert(name.clone(), v);
            }
            println!("{}", Value::Object(out));
        }
        "env" => {
            let env: Map<String, Value> = std::env::vars()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            println!("{}", Value::Object(env));
        }
        "read" => match std::fs::read_to_string(&rest[0]) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("read failed: {e}");
                std::process::exit(2);
            }
        },
        "write" => {
            if let Err(e) = std::fs::write(&rest[0], rest.get(1).map_or("", String::as_str)) {
                eprintln!("write failed: {e}");
                std::process::exit(2);
            }
        }
        "ls" => match std::fs::read_dir(&rest[0]) {
            Ok(entries) => {
                for e in entries.flatten() {
                    println!("{}", e.file_name().to_string_lossy());
                }
            }
            Err(e) => {
                eprintln!("ls failed: {e}");
                std::process::exit(2);
            }
        },
        "spin" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "alloc" => {
            let mib: usize = rest[0].parse().unwrap_or(1);
            let mut blocks = Vec::new();
            for _ in 0..mib {
                blocks.push(vec![1u8; 1024 * 1024]);
            }
            println!("allocated {} MiB", blocks.len());
        }
        "recurse" => {
            fn deep(n: u64) -> u64 {
                if std::hint::black_box(n) == u64::MAX {
                    return n;
                }
                std::hint::black_box(deep(n + 1)) + 1
            }
            println!("{}", deep(0));
        }
        "stdin" => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).ok();
            std::io::stdout().write_all(&buf).ok();
        }
        "lines" => {
            // Secrets named after `lines` are asked for first (their values are not printed).
            for name in rest {
                let _ = attune_guest::get_secret(name);
            }
            let mut out = std::io::stdout();
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                writeln!(out, "{line}").ok();
                out.flush().ok();
            }
        }
        "handles" => {
            let mut open = Vec::new();
            let error = loop {
                match std::fs::File::open(&rest[0]) {
                    Ok(f) => open.push(f),
                    Err(e) => break e,
                }
            };
            println!("opened {} handles, then: {error}", open.len());
        }
        "exit" => std::process::exit(rest[0].parse().unwrap_or(1)),
        "show" => {
            let v = attune_guest::get_secret(&rest[0]).unwrap_or_default();
            let mut out = std::io::stdout();
            writeln!(out, "raw:{v}").ok();
            writeln!(out, "b64:{}", base64(v.as_bytes())).ok();
            let (a, b) = v.split_at(v.len() / 2);
            write!(out, "split:{a}").ok();
            out.flush().ok();
            writeln!(out, "{b}").ok();
            eprintln!("stderr:{v}");
        }
        "bigname" => {
            let mib: usize = rest[0].parse().unwrap_or(1);
            let name = "a".repeat(mib * 1024 * 1024);
            println!("{:?}", attune_guest::get_secret(&name));
        }
        "config" | "config-all" | "config-hammer" => config::run(cmd, rest),
        "hammer" => {
            let n: u64 = rest[0].parse().unwrap_or(1);
            let mut counts = std::collections::BTreeMap::<String, u64>::new();
            for _ in 0..n {
                let key = match attune_guest::get_secret(&rest[1]) {
                    Ok(_) => "Ok".to_owned(),
                    Err(e) => format!("{e:?}"),
                };
                *counts.entry(key).or_default() += 1;
            }
            println!("{}", serde_json::to_string(&counts).unwrap_or_default());
        }
        "flood" => {
            let mib: usize = rest[0].parse().unwrap_or(1);
            let line = [b'x'; 1023];
            let mut out = std::io::stdout();
            for _ in 0..mib * 1024 {
                if out
                    .write_all(&line)
                    .and_then(|()| out.write_all(b"\n"))
                    .is_err()
                {
                    eprintln!("write failed");
                    std::process::exit(3);
                }
            }
        }
        "flood-stderr" => {
            let mib: usize = rest[0].parse().unwrap_or(1);
            let line = [b'x'; 1023];
            let mut err = std::io::stderr();
            for _ in 0..mib * 1024 {
                if err
                    .write_all(&line)
                    .and_then(|()| err.write_all(b"\n"))
                    .is_err()
                {
                    std::process::exit(3);
                }
            }
        }
        "forms" => {
            let v = attune_guest::get_secret(&rest[0]).unwrap_or_default();
            const URL_SAFE: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            for prefix in ["", "a", "ab", "user:"] {
                println!(
                    "b64 {prefix}: {}",
                    base64(format!("{prefix}{v}").as_bytes())
                );
            }
            println!("b64url: {}", base64_with(v.as_bytes(), URL_SAFE, true));
            println!(
                "b64url-nopad: {}",
                base64_with(v.as_bytes(), URL_SAFE, false)
            );
            println!(
                "b64url ab: {}",
                base64_with(format!("ab{v}").as_bytes(), URL_SAFE, false)
            );
            // Python json.dumps (ensure_ascii) and Go's encoding/json (HTML-safe).
            let (mut python, mut go) = (String::new(), String::new());
            for c in v.chars() {
                match c {
                    '"' | '\\' => {
                        python.push('\\');
                        python.push(c);
                        go.push('\\');
                        go.push(c);
                    }
                    c if (c as u32) < 0x20 || (c as u32) > 0x7f => {
                        let mut units = [0u16; 2];
                        for u in c.encode_utf16(&mut units) {
                            python.push_str(&format!("\\u{u:04x}"));
                        }
                        go.push(c);
                    }
                    '&' | '<' | '>' => {
                        python.push(c);
                        go.push_str(&format!("\\u{:04x}", c as u32));
                    }
                    c => {
                        python.push(c);
                        go.push(c);
                    }
                }
            }
            println!("python: {{\"v\": \"{python}\"}}");
            println!("go: {{\"v\":\"{go}\"}}");
            // Python quote (`/` kept), quote_plus (`+` for space), lower-case hex.
            let percent = |keep: &[u8], plus: bool, lower: bool| {
                let mut out = String::new();
                for b in v.bytes() {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
                        out.push(b as char);
                    } else if b == b' ' && plus {
                        out.push('+');
                    } else if lower {
                        out.push_str(&format!("%{b:02x}"));
                    } else {
                        out.push_str(&format!("%{b:02X}"));
                    }
                }
                out
            };
            println!("quote: {}", percent(b"/", false, false));
            println!("quote_plus: {}", percent(b"", true, false));
            println!("lower: {}", percent(b"", false, true));
        }
        "touch" => {
            use std::net::ToSocketAddrs;
            let v = attune_guest::get_secret(&rest[0]).unwrap_or_default();
            let _ = std::fs::metadata(&v);
            let _ = std::fs::File::open(&v);
            let _ = std::fs::File::open(format!("./{v}/x"));
            let _ = std::fs::read_dir(&v);
            let _ = std::fs::create_dir(&v);
            let _ = (v.as_str(), 443).to_socket_addrs();
            let _ = std::net::TcpStream::connect((v.as_str(), 443));
            println!("touched");
        }
        other => {
            eprintln!("unknown command {other}");
            std::process::exit(64);
        }
    }
}

/// The `wasi:config/store` commands (components only: a core module cannot import it).
#[cfg(all(target_arch = "wasm32", target_env = "p2"))]
mod config {
    use serde_json::{json, Map, Value};

    mod bindings {
        wit_bindgen::generate!({
            inline: "
                package attune:secret-probe;
                world probe {
                    import wasi:config/store@0.2.0-rc.1;
                }
            ",
            path: "../../wit",
            // wasi:config is generated here (there is no shared crate for it).
            generate_all,
        });
    }

    use bindings::wasi::config::store::{self, Error};

    fn error(e: &Error) -> String {
        match e {
            Error::Upstream(text) => format!("upstream: {text}"),
            Error::Io(text) => format!("io: {text}"),
        }
    }

    pub(super) fn run(cmd: &str, rest: &[String]) {
        match cmd {
            "config" => {
                let mut out = Map::new();
                for key in rest {
                    let v = match store::get(key) {
                        Ok(Some(v)) => json!({ "value": v }),
                        Ok(None) => json!({ "none": true }),
                        Err(e) => json!({ "error": error(&e) }),
                    };
                    out.insert(key.clone(), v);
                }
                println!("{}", Value::Object(out));
            }
            "config-all" => {
                let out = match store::get_all() {
                    Ok(all) => Value::Object(
                        all.into_iter()
                            .map(|(k, v)| (k, Value::String(v)))
                            .collect(),
                    ),
                    Err(e) => json!({ "error": error(&e) }),
                };
                println!("{out}");
            }
            _ => {
                let n: u64 = rest[0].parse().unwrap_or(1);
                let mut counts = std::collections::BTreeMap::<String, u64>::new();
                for _ in 0..n {
                    let key = match store::get(&rest[1]) {
                        Ok(Some(_)) => "some".to_owned(),
                        Ok(None) => "none".to_owned(),
                        Err(e) => error(&e),
                    };
                    *counts.entry(key).or_default() += 1;
                }
                println!("{}", serde_json::to_string(&counts).unwrap_or_default());
            }
        }
    }
}

/// Core modules have no `wasi:config/store`.
#[cfg(not(all(target_arch = "wasm32", target_env = "p2")))]
mod config {
    pub(super) fn run(cmd: &str, _: &[String]) {
        eprintln!("{cmd}: wasi:config/store needs a component (wasm32-wasip2)");
        std::process::exit(2);
    }
}
