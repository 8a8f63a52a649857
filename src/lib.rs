//! Redraft's single binary: `redraft node`, `redraft placement`, `redraft proxy`,
//! `redraft up` / `redraft down` (a local cluster), `redraft ctl` (operator tools).
//!
//! | module | owns |
//! | --- | --- |
//! | [`cli`] | command-line parsing and logging set-up |
//! | [`local`] | the local cluster: layout on disk, `up.json`, spawning members |
//! | [`migrate`] | `redraft ctl import` / `export`: data from and to Redis and RDB files |
//! | [`top`] | `redraft ctl top`, the live terminal view |

pub mod backup;
pub mod cli;
pub mod local;
pub mod migrate;
pub mod top;
