pub use chunked_wal::WAL;
