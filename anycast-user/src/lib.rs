//! The anycast controller library.
pub mod maps;
pub mod object;
