//! Generates the protocol's Rust code from `proto/` at build time, in pure Rust: protox parses
//! the `.proto` files (no system `protoc`), prost and tonic generate messages and gRPC stubs,
//! pbjson generates the canonical proto3 JSON mapping.

use std::{env, fs, io, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("..").join("proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut files = vec![PathBuf::from("google/rpc/status.proto")];
    let mut aesp: Vec<PathBuf> = fs::read_dir(proto_root.join("aesp/v1"))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    aesp.retain(|p| p.extension().is_some_and(|e| e == "proto"));
    aesp.sort();
    for path in &aesp {
        let name = path.file_name().ok_or("proto path without a file name")?;
        files.push(PathBuf::from("aesp/v1").join(name));
    }
    println!("cargo:rerun-if-changed={}", proto_root.display());
    for path in &files {
        println!("cargo:rerun-if-changed={}", proto_root.join(path).display());
    }

    let fds = protox::compile(&files, [&proto_root])?;
    let descriptor_bytes = fds.encode_to_vec();
    fs::write(out_dir.join("aesp_descriptor.bin"), &descriptor_bytes)?;
    write_message_list(&fds, &out_dir)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // Deterministic encoding of every map: events and checkpoints get hashed and signed.
        .btree_map(".")
        .compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .btree_map(["."])
        .build(&[".aesp"])?;
    Ok(())
}

/// Writes `aesp_messages.rs`: a macro that applies a given macro to every message type of
/// package `aesp.v1`, so tests can cover each message without a hand-kept list.
fn write_message_list(fds: &prost_types::FileDescriptorSet, out_dir: &std::path::Path) -> io::Result<()> {
    let mut names = Vec::new();
    for file in &fds.file {
        if file.package() != "aesp.v1" {
            continue;
        }
        for message in &file.message_type {
            if !message.nested_type.is_empty() || !message.enum_type.is_empty() {
                // Map entries are nested types too; only they are allowed.
                let only_map_entries = message.enum_type.is_empty()
                    && message.nested_type.iter().all(|n| n.options.as_ref().is_some_and(|o| o.map_entry()));
                if !only_map_entries {
                    return Err(io::Error::other(format!(
                        "message `{}` declares nested types; keep aesp.v1 flat",
                        message.name()
                    )));
                }
            }
            names.push(message.name().to_owned());
        }
    }
    let mut text = String::from("macro_rules! for_each_aesp_message {\n    ($m:ident) => {\n");
    for name in &names {
        text.push_str(&format!("        $m!({name}, \"aesp.v1.{name}\");\n"));
    }
    text.push_str("    };\n}\n");
    fs::write(out_dir.join("aesp_messages.rs"), text)
}
