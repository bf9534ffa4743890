//! The action the execution benchmarks run (`host/benches/host.rs`): asks for three secrets
//! (`api_key`, `db_password`, `region`: through `get-secret` as a component, `SECRET_*` as a
//! core module) and prints how many it got. Small on purpose: the benchmarks measure the
//! host's cost per execution, not the guest's work.

fn main() {
    let found = ["api_key", "db_password", "region"]
        .iter()
        .filter(|name| attune_guest::get_secret(name).is_ok())
        .count();
    println!("bench-action: {found} secrets");
}
