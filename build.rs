//! Compiles the etcd v3 protos and Bulwark's own with protox (pure Rust), so building Bulwark
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let includes = ["proto/etcd", "proto/bulwark"];
    let files = [
        "etcdserverpb/rpc.proto",
        "v3lockpb/v3lock.proto",
        "v3electionpb/v3election.proto",
        "command.proto",
        "peer.proto",
    ];
    let descriptors = protox::compile(files, includes)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
