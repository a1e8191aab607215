//! Compiles `proto/*.proto` (workspace root) with protox (no system protoc),
//! then generates prost types, tonic RoomService stubs, pbjson serde impls,
//! the encoded descriptor set and a registry of every message type.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use heck::{ToSnakeCase, ToUpperCamelCase};
use prost::Message as _;
use tonic_prost_build::FileDescriptorSet;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = manifest.join("../../proto").canonicalize()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    println!("cargo:rerun-if-changed={}", proto_dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&proto_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let fds: FileDescriptorSet = protox::compile(&files, [&proto_dir])?;
    let encoded = fds.encode_to_vec();
    std::fs::write(out_dir.join("livekit_descriptor.bin"), &encoded)?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        // Deterministic map order (sorted keys), like `deterministic=True`.
        .btree_map(".")
        .compile_fds(fds.clone())?;

    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .extern_path(".google.protobuf", "::pbjson_types")
        .btree_map(["."])
        // Servers must ignore unknown JSON fields (newer SDKs, Twirp clients).
        .ignore_unknown_fields()
        .build(&[".livekit"])?;

    std::fs::write(out_dir.join("registry.rs"), registry(&fds))?;
    Ok(())
}

/// Emits `for_each_message!`, listing `("livekit.Full.Name", Rust::Path)` for
/// every message of package `livekit` (map entries excluded).
fn registry(fds: &FileDescriptorSet) -> String {
    let mut entries = BTreeSet::new();
    fn walk(
        msgs: &[prost_types::DescriptorProto],
        proto_prefix: &str,
        rust_prefix: &str,
        out: &mut BTreeSet<(String, String)>,
    ) {
        for m in msgs {
            let name = m.name();
            if m.options.as_ref().is_some_and(|o| o.map_entry()) {
                continue;
            }
            let full = format!("{proto_prefix}.{name}");
            out.insert((
                full.clone(),
                format!("{rust_prefix}::{}", name.to_upper_camel_case()),
            ));
            let nested_rust = format!("{rust_prefix}::{}", name.to_snake_case());
            walk(&m.nested_type, &full, &nested_rust, out);
        }
    }
    for f in &fds.file {
        if f.package() == "livekit" {
            walk(&f.message_type, "livekit", "$crate::livekit", &mut entries);
        }
    }
    let mut s = String::new();
    s.push_str(
        "/// Calls `$callback!` with `(\"livekit.Full.Name\", RustType),` for every\n\
         /// message defined by Relais' `.proto` files (map entries excluded).\n\
         #[macro_export]\n\
         macro_rules! for_each_message {\n    ($callback:ident) => {\n        $callback! {\n",
    );
    for (full, path) in &entries {
        let _ = writeln!(s, "            ({full:?}, {path}),");
    }
    s.push_str("        }\n    };\n}\n");
    s
}
