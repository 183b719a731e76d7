//! Regenerates `crates/codec/src/generated.rs` from the AMQP spec JSON: `cargo run -p warren-codegen`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    // The workspace root is two levels above this crate, wherever cargo is run from.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let spec_path = root.join(warren_codegen::SPEC_PATH);
    let output_path = root.join(warren_codegen::OUTPUT_PATH);
    let result = std::fs::read_to_string(&spec_path)
        .map_err(|e| format!("reading {}: {e}", spec_path.display()))
        .and_then(|spec| warren_codegen::generate_formatted(&spec).map_err(|e| e.to_string()))
        .and_then(|code| {
            std::fs::write(&output_path, code)
                .map_err(|e| format!("writing {}: {e}", output_path.display()))
        });
    match result {
        Ok(()) => {
            println!("wrote {}", output_path.display());
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("warren-codegen: {message}");
            ExitCode::FAILURE
        }
    }
}
