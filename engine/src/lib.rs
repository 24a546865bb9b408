//! The abd engine: provisions and drives backup delegates in XenServer / XCP-ng pools.

pub mod address;
