//! modelyard: run a Triton Inference Server model repository inside the calling process.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod config;
mod error;

pub use error::{Error, ErrorKind, Result};
pub mod tensor;
pub use tensor::{Element, Tensor};
mod backend;
pub mod repository;
pub mod model;
