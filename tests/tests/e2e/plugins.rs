//! Plugin loading, panics, ABI versions and out-of-tree connectors.
