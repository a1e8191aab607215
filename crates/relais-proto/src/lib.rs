//! relais-proto
