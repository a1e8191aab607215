//! relais-media
