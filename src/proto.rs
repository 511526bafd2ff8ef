//! The etcd v3 wire types and services, and Bulwark's internal command, generated at build time
//! from `proto/` (see `build.rs`). Nothing here is edited by hand.

#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

pub mod bulwarkpb {
    tonic::include_proto!("bulwarkpb");
}
