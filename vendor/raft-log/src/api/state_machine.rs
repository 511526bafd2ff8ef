pub use chunked_wal::StateMachine;
