pub mod account;
pub mod health;
pub mod memories;
pub mod plugins;
pub mod retrieval;
