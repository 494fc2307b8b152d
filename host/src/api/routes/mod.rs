pub mod account;
pub mod admin;
pub mod health;
pub mod invoices;
pub mod memories;
pub mod plugins;
pub mod retrieval;
pub mod usage;
