//! Adapters of stead-core's `Store` trait over real storage.
