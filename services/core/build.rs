//! Compiles `proto/marktwin/v1/events.proto` into a descriptor set for the
//! protobuf encoding (`src/codec.rs`). `protox` is a protobuf compiler in
//! Rust, so no `protoc` has to be installed.

use std::path::PathBuf;

fn main() {
    let proto_dir = PathBuf::from("../../proto");
    let file = proto_dir.join("marktwin/v1/events.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&proto_dir]).unwrap_or_else(|e| panic!("{e:?}"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("marktwin_v1.fds");
    let bytes = protox::prost::Message::encode_to_vec(&fds);
    std::fs::write(&out, bytes).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}
