//! Everything about the local Cassandra process: the files it is started with, the
//! supervised JVM, and the two ways of talking to it (Jolokia for JMX, CQL).

pub mod cds;
pub mod cql;
pub mod files;
pub mod jolokia;
pub mod row_overhead;
pub mod supervisor;
