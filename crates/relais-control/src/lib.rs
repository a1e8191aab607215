//! relais-control
