//! The anycast controller library.
pub mod object;
