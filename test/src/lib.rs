//! Deterministic simulation and checking for aisexec (being written).
