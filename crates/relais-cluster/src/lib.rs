//! relais-cluster
