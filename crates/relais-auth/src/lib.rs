//! relais-auth
