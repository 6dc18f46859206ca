//! Crash tests: `lazyfs` loses what was not fsynced, as a power cut does.

mod lazyfs;
