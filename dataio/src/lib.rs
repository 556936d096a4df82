//! dataio
