//! xapi-sim
