//! Regenerates `crates/codec/src/generated.rs` (and the codec's generated proptest strategies)
//! from the AMQP spec JSON: `cargo run -p warren-codegen`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    // The workspace root is two levels above this crate, wherever cargo is run from.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let spec_path = root.join(warren_codegen::SPEC_PATH);
    let write = |relative: &str, code: String| {
        let path = root.join(relative);
        std::fs::write(&path, code).map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("wrote {relative}");
        Ok::<(), String>(())
    };
    let result = std::fs::read_to_string(&spec_path)
        .map_err(|e| format!("reading {}: {e}", spec_path.display()))
        .and_then(|spec| {
            let code = warren_codegen::generate_formatted(&spec).map_err(|e| e.to_string())?;
            write(warren_codegen::OUTPUT_PATH, code)?;
            let strategies =
                warren_codegen::generate_strategies_formatted(&spec).map_err(|e| e.to_string())?;
            write(warren_codegen::STRATEGIES_PATH, strategies)
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("warren-codegen: {message}");
            ExitCode::FAILURE
        }
    }
}
