pub mod mvcc;
pub mod proto;
