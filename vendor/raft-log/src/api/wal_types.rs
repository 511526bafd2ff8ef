pub use chunked_wal::WalTypes;
