//! `edgefleet`: see the library crate for everything.

fn main() -> std::process::ExitCode {
    edgefleet::main()
}
