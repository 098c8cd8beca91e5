//! Compiles `proto/meridian/v1/*.proto` with protox (no system `protoc`) and
//! generates prost messages plus tonic clients and servers. Also writes the
//! encoded file descriptor set (with source info, so reflection shows the
//! documentation) to `$OUT_DIR/meridian_descriptor.bin`.

use std::error::Error;
use std::path::PathBuf;

const PROTO_ROOT: &str = "proto";
const PROTO_DIR: &str = "proto/meridian/v1";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    println!("cargo:rerun-if-changed=build.rs");

    let mut files: Vec<PathBuf> = std::fs::read_dir(PROTO_DIR)
        .map_err(|e| format!("cannot read {PROTO_DIR}: {e}"))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|ext| ext == "proto"));
    files.sort();
    if files.is_empty() {
        return Err(format!("no .proto files found in {PROTO_DIR}").into());
    }

    let mut compiler = protox::Compiler::new([PROTO_ROOT])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("meridian_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // prost already derives Eq and Hash where it can; ordering lets task ids
    // key ordered maps and sort deterministically.
    let ordered_ids = "#[derive(PartialOrd, Ord)]";
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        // Deterministic encoding of maps (labels, env): equal specs encode to
        // equal bytes, which keeps simulation runs reproducible.
        .btree_map(".")
        .type_attribute(".meridian.v1.TaskId", ordered_ids)
        .type_attribute(".meridian.v1.TaskAttempt", ordered_ids)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
