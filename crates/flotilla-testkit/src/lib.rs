//! Test and benchmark support: real `flotilla` node processes on loopback ports chosen by the
//! OS ([`cluster::LocalNode`]), PostgreSQL servers started from its installed programs (installed
//! first when missing, [`postgres`]), certificates for a test cluster ([`certs`]), and network
//! partitions between node processes with iptables ([`firewall`]) or a TCP proxy
//! ([`proxy`]). The CLI's
//! demos, its end-to-end tests and the benchmarks share it; no server crate depends on it.

pub mod apt;
pub mod browser;
pub mod certs;
pub mod cluster;
pub mod data_centres;
pub mod firewall;
pub mod postgres;
pub mod proxy;
pub mod traces;
pub mod yjs_client;
