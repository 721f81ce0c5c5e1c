//! Compiles proto/*.proto with tonic, using the protoc shipped by `protoc-bin-vendored` so a
//! fresh clone builds without a system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of intent: build scripts are single-threaded; edition 2024 marks set_var unsafe.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::codec::StrictCodec")
        .file_descriptor_set_path(out_dir.join("strata_descriptor.bin"))
        .compile_protos(
            &[
                "proto/strata/v1/storage.proto",
                "proto/strata/v1/admin.proto",
                "proto/strata/v1/cluster.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
