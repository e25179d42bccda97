//! Message store (being written).
