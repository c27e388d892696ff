//! The composition root, one module per phase: `Application::build_with`
//! runs them in order, each taking what the earlier ones produced.

mod auth;
mod delivery;
mod server;
mod storage;
pub mod topology;

pub(crate) use auth::{auth, Auth};
pub(crate) use delivery::{delivery, Delivery};
pub(crate) use server::{listen, server};
pub(crate) use storage::{storage, Storage};
