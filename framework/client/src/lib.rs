//! Stead's native client: stead-core and the file store over tokio and WebSockets.
