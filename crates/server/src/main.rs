//! The `warren` binary.

fn main() {
    eprintln!("warren: the broker is not built yet");
    std::process::exit(1);
}
