//! Name validation and env mapping: valid names map to `SECRET_[A-Z0-9_]+`, invalid ones give
//! an error that carries no control characters; action refs split into a valid pack.
#![no_main]

use attune_wasm::secrets::names::{ActionRef, PackRef, SecretName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match SecretName::new(&text) {
        Ok(name) => {
            let var = name.env_var();
            assert!(var.starts_with("SECRET_"));
            assert!(var.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'));
            assert!(name.as_str().len() <= 128);
        }
        Err(e) => assert!(!e.to_string().chars().any(char::is_control)),
    }
    if let Ok(action) = ActionRef::new(&text) {
        assert!(PackRef::new(action.pack().as_str()).is_ok());
    }
});
