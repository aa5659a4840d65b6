//! The servers a run can target.

pub mod huddle;
pub mod janus;
